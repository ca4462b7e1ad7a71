"""Tests for sadi.data.tasks: split rules and sizes on the real data, prompt formats, errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sadi.data.tasks import (
    EXAMPLE_DATA,
    FORMATS,
    LONG_CONTEXT_CHARS,
    SPLITS,
    TASKS,
    DataFormatError,
    Item,
    SplitOverlapError,
    check_disjoint,
    check_split_names,
    default_data_dir,
    load_task,
    read_jsonl,
    split_ids,
)

TINY = EXAMPLE_DATA / "tiny_mc.jsonl"

# The split rule of every task, as sizes (fit, select, report) on the shared data.
EXPECTED_SIZES = {
    "copa": (200, 300, 500),
    "sst2": (3000, 300, 572),
    "boolq": (500, 500, 2270),
    "winogrande": (2058, 500, 1267),
    "mmlu": (285, 1000, 13042),
    "truthfulqa_mc1": (200, 200, 417),
    "truthfulqa_mc2": (200, 200, 417),
    "xnli_en": (500, 500, 1490),
    "caa_sycophancy": (900, 100, 50),
    "caa_hallucination": (900, 100, 50),
    "caa_refusal": (308, 100, 50),
    "caa_myopic_reward": (850, 100, 50),
    "caa_corrigible_neutral_hhh": (190, 100, 50),
}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    try:
        return default_data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"real benchmark data not available: {e}")


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _row(i: int, label: int = 0) -> dict[str, Any]:
    return {"id": f"r{i}", "question": f"Q{i}", "choices": ["a", "b"], "label": label}


def _lm_eval_module(relative: str) -> ModuleType:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        pytest.skip("lm_eval is not installed")
    path = Path(spec.origin).parent / "tasks" / relative
    if not path.is_file():
        pytest.skip(f"{path} not found in this lm_eval version")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# --- COPA: the exact split rule ------------------------------------------------------------


def test_copa_splits_are_dev_1_200_dev_201_500_and_test(data_dir: Path) -> None:
    ids = split_ids(load_task("copa", data_dir=data_dir))
    assert {k: len(v) for k, v in ids.items()} == {"fit": 200, "select": 300, "report": 500}
    assert set(ids["fit"]) == {f"copa-{i}" for i in range(1, 201)}
    assert set(ids["select"]) == {f"copa-{i}" for i in range(201, 501)}
    assert set(ids["report"]) == {f"copa-{i}" for i in range(501, 1001)}
    check_disjoint(ids, "copa")


def test_copa_prompts(data_dir: Path) -> None:
    fit = {i.id: i for i in load_task("copa", data_dir=data_dir).splits["fit"]}
    assert fit["copa-1"] == Item(
        "copa-1",
        "My body cast a shadow over the grass because",
        (" the sun was rising.", " the grass was cut."),
        0,
    )
    ab = {i.id: i for i in load_task("copa", data_dir=data_dir, format="ab").splits["fit"]}
    assert ab["copa-1"].question == (
        "My body cast a shadow over the grass. Based on the previous passage, choose the most "
        "reasonable cause.\n(A) The sun was rising.\n(B) The grass was cut.\nAnswer:"
    )
    assert ab["copa-1"].choices == (" (A)", " (B)")


def test_copa_matches_lm_eval_text(data_dir: Path) -> None:
    utils = _lm_eval_module("super_glue/copa/utils.py")
    for record in read_jsonl(data_dir / "copa" / "test.jsonl")[:50]:
        doc = {
            "premise": record["premise"],
            "question": record["question_type"],
            "choice1": record["choices"][0],
            "choice2": record["choices"][1],
            "label": record["label"],
        }
        expected = [utils.doc_to_text(doc) + c for c in utils.doc_to_choice(doc)]
        # lm-eval's choices carry their own space; we join with that one space only.
        item = _find(data_dir, "copa", record["id"])
        assert [item.question + c for c in item.choices] == expected


def test_winogrande_matches_lm_eval_text(data_dir: Path) -> None:
    pre = _lm_eval_module("winogrande/preprocess_winogrande.py")
    for record in read_jsonl(data_dir / "winogrande" / "validation.jsonl")[:50]:
        item = _find(data_dir, "winogrande", record["id"])
        target = pre.doc_to_target(record)
        expected = [context + " " + target for context in pre.doc_to_choice(record)]
        assert [item.question + c for c in item.choices] == expected
        assert item.label == pre.doc_to_text(record)


_CACHE: dict[str, dict[str, Item]] = {}


def _find(data_dir: Path, name: str, item_id: str) -> Item:
    if name not in _CACHE:
        task = load_task(name, data_dir=data_dir)
        _CACHE[name] = {i.id: i for items in task.splits.values() for i in items}
    return _CACHE[name][item_id]


# --- every registered task ---------------------------------------------------------------


def test_expected_sizes_cover_the_registry() -> None:
    assert set(EXPECTED_SIZES) == set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_full_splits_have_documented_sizes_and_are_disjoint(name: str, data_dir: Path) -> None:
    ids = split_ids(load_task(name, data_dir=data_dir))
    assert tuple(len(ids[s]) for s in SPLITS) == EXPECTED_SIZES[name]
    check_disjoint(ids, name)
    assert all(len(set(v)) == len(v) for v in ids.values())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_loads_with_limit(name: str, fmt: str, data_dir: Path) -> None:
    task = load_task(name, data_dir=data_dir, format=fmt, limit=5)  # type: ignore[arg-type]
    assert task.name == name and task.format == fmt
    assert list(task.splits) == list(SPLITS)
    for split, items in task.splits.items():
        # limit caps the scored splits only; fit keeps every item
        assert len(items) == (EXPECTED_SIZES[name][0] if split == "fit" else 5)
        for item in items:
            assert item.question and item.question == item.question.rstrip()
            assert all(c.startswith(" ") and c[1:] == c[1:].lstrip() for c in item.choices)
            assert 0 <= item.label < len(item.choices) and item.label in item.correct
            if fmt == "ab":
                assert item.question.endswith("Answer:") and item.choices[0] == " (A)"


def test_limit_is_a_prefix_of_the_seeded_order(data_dir: Path) -> None:
    full = load_task("boolq", data_dir=data_dir, seed=3)
    again = load_task("boolq", data_dir=data_dir, seed=3, limit=7)
    assert again.splits["fit"] == full.splits["fit"]
    for split in ("select", "report"):
        assert again.splits[split] == full.splits[split][:7]


def test_seed_orders_items_but_never_moves_them_between_splits(data_dir: Path) -> None:
    a = load_task("sst2", data_dir=data_dir, seed=0)
    b = load_task("sst2", data_dir=data_dir, seed=1)
    for split in SPLITS:
        assert {i.id for i in a.splits[split]} == {i.id for i in b.splits[split]}
    assert [i.id for i in a.splits["report"]] != [i.id for i in b.splits["report"]]


def test_truthfulqa_choices_are_shuffled_and_mc2_keeps_all_correct(data_dir: Path) -> None:
    mc1 = load_task("truthfulqa_mc1", data_dir=data_dir).splits["report"]
    assert len({i.label for i in mc1}) > 3  # the source always puts the answer first
    raw = {r["id"]: r for r in read_jsonl(data_dir / "truthfulqa" / "validation.jsonl")}
    mc2 = load_task("truthfulqa_mc2", data_dir=data_dir, format="ab")
    assert mc2.metric == "mc2"
    for item in mc2.splits["fit"][:20]:
        targets = raw[item.id]["mc2_targets"]
        n_true = sum(targets["labels"])
        assert len(item.correct) == n_true and len(item.choices) == len(targets["labels"])
        ab_lines = item.question.split("\n")
        true_texts = {c for c, f in zip(targets["choices"], targets["labels"], strict=True) if f}
        for k in item.correct:
            assert any(
                line.startswith(f"({chr(65 + k)}) ") and line[4:] in true_texts for line in ab_lines
            )


# --- generic jsonl task -------------------------------------------------------------------


def test_jsonl_task_on_example_file() -> None:
    task = load_task("jsonl", path=TINY)
    ids = split_ids(task)
    assert [len(ids[s]) for s in SPLITS] == [10, 10, 10]
    assert set().union(*map(set, ids.values())) == {f"tiny-{i:02d}" for i in range(1, 31)}
    item = next(
        i
        for i in task.splits["fit"] + task.splits["select"] + task.splits["report"]
        if i.id == "tiny-01"
    )
    assert item == Item("tiny-01", "The capital of France is", (" Paris", " Berlin"), 0)
    ab = load_task("jsonl", path=TINY, format="ab", limit=2)
    assert all("\n(A) " in i.question and "\n(B) " in i.question for i in ab.splits["fit"])


def test_jsonl_task_from_a_folder_of_three_files(tmp_path: Path) -> None:
    for k, split in enumerate(SPLITS):
        _write_jsonl(tmp_path / f"{split}.jsonl", [_row(10 * k + j) for j in range(3)])
    assert [len(v) for v in split_ids(load_task("jsonl", path=tmp_path)).values()] == [3, 3, 3]


# --- errors -----------------------------------------------------------------------------


def test_missing_data_dir_says_where_and_how(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("SADI_DATA_DIR", str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        default_data_dir()
    assert "SADI_DATA_DIR" in str(err.value) and "paths.data_dir" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_task("copa")
    with pytest.raises(FileNotFoundError, match="paths.data_dir"):
        load_task("copa", data_dir=tmp_path)  # exists, but holds no copa/


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_row(1)) + "\n\n" + '{"id": "r2", "question": \n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3: malformed JSON"):
        read_jsonl(path)


def test_label_out_of_range_names_file_line_value_and_choices(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "labels.jsonl", [_row(1), _row(2, label=5)])
    with pytest.raises(DataFormatError, match=r"labels\.jsonl:2: item 'r2': label 5 .* 2 choices"):
        read_jsonl(path, validate=True)
    with pytest.raises(DataFormatError, match=r":2: item 'r2': label 5 is out of range"):
        load_task("jsonl", path=path)
    with pytest.raises(ValueError, match="out of range"):
        Item("x", "q", (" a", " b"), 2)


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "x", "question": "q", "choices": ["a"], "label": 0},
        {"id": "x", "question": "q", "choices": ["a", "b"], "label": True},
        {"id": "x", "choices": ["a", "b"], "label": 0},
    ],
)
def test_invalid_records_are_rejected(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1"):
        read_jsonl(_write_jsonl(tmp_path / "bad.jsonl", [bad]), validate=True)


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "dup.jsonl", [_row(1), _row(1)])
    with pytest.raises(DataFormatError, match="already used on line 1"):
        read_jsonl(path, validate=True)


def test_overlapping_splits_raise(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "fit.jsonl", [_row(i) for i in range(5)])
    _write_jsonl(tmp_path / "select.jsonl", [_row(i) for i in range(10, 15)])
    _write_jsonl(tmp_path / "report.jsonl", [_row(i) for i in range(3, 8)])
    with pytest.raises(SplitOverlapError, match=r"'fit' and 'report' share 2 item id\(s\)") as e:
        load_task("jsonl", path=tmp_path)
    assert "r3" in str(e.value) and "r4" in str(e.value)
    with pytest.raises(SplitOverlapError, match="share 1"):
        check_disjoint({"fit": ["a", "b"], "select": ["c"], "report": ["b"]})


def test_unknown_task_suggests_nearest() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'winogrand'.*Did you mean \['winogrande'"):
        load_task("winogrand")
    with pytest.raises(ValueError, match=r"Did you mean \['caa_sycophancy'"):
        load_task("caa_sycophacy")


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="needs path="):
        load_task("jsonl")
    with pytest.raises(ValueError, match="'copa' is a registered task.*name your data"):
        load_task("copa", path=TINY)
    with pytest.raises(ValueError, match="format='chat' is not one of"):
        load_task("jsonl", path=TINY, format="chat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit=0"):
        load_task("jsonl", path=TINY, limit=0)


def test_too_few_items_for_three_splits(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "two.jsonl", [_row(1), _row(2)])
    with pytest.raises(ValueError, match="holds 2 record.*leaves the fit split empty"):
        load_task("jsonl", path=path)


# --- bad task input: one clear error (or warning) at load time ----------------------------


def _rows(n: int, **changes: Any) -> list[dict[str, Any]]:
    """n valid rows r0..r(n-1); `changes` maps a key of row r1 to its new value."""
    rows = [_row(i) for i in range(n)]
    rows[1].update(changes)
    return rows


def test_limit_caps_the_scored_splits_never_fit() -> None:
    full = load_task("jsonl", path=TINY, seed=2)
    quick = load_task("jsonl", path=TINY, seed=2, limit=3)
    assert {s: len(v) for s, v in quick.splits.items()} == {"fit": 10, "select": 3, "report": 3}
    assert quick.splits["fit"] == full.splits["fit"]
    assert quick.splits["select"] == full.splits["select"][:3]
    assert quick.splits["report"] == full.splits["report"][:3]


def test_non_utf8_file_names_file_line_byte_offset_and_fix(tmp_path: Path) -> None:
    first = (json.dumps(_row(0)) + "\n").encode()
    second = b'{"id": "r1", "question": "Caf\xe9", "choices": ["a", "b"]}\n'
    path = tmp_path / "latin.jsonl"
    path.write_bytes(first + second + (json.dumps(_row(2)) + "\n").encode())
    column = second.index(b"\xe9") + 1  # 1-based, in bytes
    offset = len(first) + column - 1  # 0-based, in the file
    expected = (
        rf"latin\.jsonl:2: not UTF-8 \(invalid continuation byte\): byte 0xe9 at byte offset "
        rf"{offset} of the file \(byte {column} of line 2\); data files must be UTF-8, so save the "
        r"file as UTF-8 \(e\.g\. `iconv -f latin1 -t utf-8 latin\.jsonl > fixed\.jsonl`"
    )
    with pytest.raises(DataFormatError, match=expected) as err:
        read_jsonl(path)
    assert isinstance(err.value.__cause__, UnicodeDecodeError)
    with pytest.raises(DataFormatError, match=expected):
        load_task("jsonl", path=path)


def test_utf16_file_is_named_and_utf8_with_bom_is_read(tmp_path: Path) -> None:
    text = "".join(json.dumps(r) + "\n" for r in _rows(3))
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes(text.encode("utf-16"))
    with pytest.raises(
        DataFormatError,
        match=r"utf16\.jsonl:1: not UTF-8 .* byte offset 0 .* UTF-16 byte-order mark.*-f utf-16",
    ):
        read_jsonl(utf16)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(text.encode("utf-8-sig"))
    assert read_jsonl(bom, validate=True) == _rows(3)


@pytest.mark.parametrize("question", ["", "   ", "\n\t "])
def test_blank_question_is_rejected_naming_file_line_and_item(
    tmp_path: Path, question: str
) -> None:
    path = _write_jsonl(tmp_path / "blank.jsonl", _rows(6, question=question))
    expected = rf"blank\.jsonl:2: item 'r1': question is empty \({re.escape(repr(question))}\)"
    with pytest.raises(DataFormatError, match=expected) as err:
        load_task("jsonl", path=path)
    assert "write the question or remove the line" in str(err.value)


@pytest.mark.parametrize("choice", ["", "  "])
def test_blank_choice_is_rejected(tmp_path: Path, choice: str) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", _rows(3, choices=["a", choice]))
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: item 'r1': choice 1 is empty"):
        read_jsonl(path, validate=True)


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (
            "0",
            r"label '0' is a str, but it must be an integer index into choices \(0\.\.1\); "
            r"write 0 without quotes",
        ),
        (
            True,
            r"label True is a bool, but it must be an integer index into choices \(0\.\.1\); "
            r"write the index of the correct choice as a number in 0\.\.1",
        ),
        (1.0, r"label 1\.0 is a float, .*; write 1 without the decimal point"),
        ("A", r"label 'A' is a str, .*; write the index of the correct choice"),
    ],
)
def test_label_that_is_not_an_int_says_so_and_how_to_fix(
    tmp_path: Path, label: Any, message: str
) -> None:
    path = _write_jsonl(tmp_path / "lab.jsonl", _rows(6, label=label))
    with pytest.raises(DataFormatError, match=rf"lab\.jsonl:2: item 'r1': {message}") as err:
        load_task("jsonl", path=path)
    assert "out of range" not in str(err.value)


@pytest.mark.parametrize("choices", [["Paris", "Rome", "Paris"], ["Paris", "Rome", " Paris"]])
@pytest.mark.parametrize("fmt", FORMATS)
def test_identical_choices_are_rejected_naming_item_and_choice(
    tmp_path: Path, choices: list[str], fmt: str
) -> None:
    path = _write_jsonl(tmp_path / "dup.jsonl", _rows(6, choices=choices))
    with pytest.raises(
        DataFormatError, match=r"dup\.jsonl:2: item 'r1': choices 0 and 2 are the same, 'Paris'"
    ):
        load_task("jsonl", path=path, format=fmt)  # type: ignore[arg-type]
    # data scored as published may repeat an option (MMLU); its spec says so
    assert len(read_jsonl(path, validate=True, unique_choices=False)) == 6
    assert [n for n, spec in TASKS.items() if not spec.unique_choices] == ["mmlu"]


def test_choice_whitespace_gives_exactly_one_space_at_the_join(tmp_path: Path) -> None:
    plain = {"id": "x", "question": "The capital of France is", "choices": ["Paris", "Rome"]}
    spaced = {**plain, "question": "The capital of France is ", "choices": [" Paris", "\tRome"]}
    fillers = [_row(i) for i in range(1, 6)]
    items = {}
    for name, record in (("plain", plain), ("spaced", spaced)):
        path = _write_jsonl(tmp_path / f"{name}.jsonl", [{**record, "label": 0}, *fillers])
        for fmt in FORMATS:
            task = load_task("jsonl", path=path, format=fmt)  # type: ignore[arg-type]
            items[name, fmt] = next(i for v in task.splits.values() for i in v if i.id == "x")
    for fmt in FORMATS:
        assert items["spaced", fmt] == items["plain", fmt]
    lm = items["spaced", "lm_eval"]
    assert lm == Item("x", "The capital of France is", (" Paris", " Rome"), 0)
    assert [lm.question + c for c in lm.choices] == [
        "The capital of France is Paris",
        "The capital of France is Rome",
    ]
    assert (
        items["spaced", "ab"].question == "The capital of France is\n(A) Paris\n(B) Rome\nAnswer:"
    )


def test_long_contexts_are_kept_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [_row(i) for i in range(6)]
    rows[2]["question"] = "x" * (LONG_CONTEXT_CHARS + 1)
    rows[4]["question"] = "y" * 3000
    path = _write_jsonl(tmp_path / "long.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="sadi.data.tasks.load"):
        task = load_task("jsonl", path=path)
    assert sum(len(v) for v in task.splits.values()) == 6  # nothing dropped
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert f"2 item(s) have a context longer than {LONG_CONTEXT_CHARS} characters" in message
    assert "the longest is 'r4'" in message and "3000 characters" in message
    assert "left truncation" in message and "fitting raises" in message
    assert "kept (never dropped)" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sadi.data.tasks.load"):
        load_task("jsonl", path=TINY)
    assert not caplog.records


def test_check_split_names_accepts_the_split_literal() -> None:
    assert check_split_names(["select", "report"]) == ["select", "report"]
    assert check_split_names(list(SPLITS)) == list(SPLITS) == ["fit", "select", "report"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["test"],
            r"task\.splits: 'test' is not a split \(sadi's 'report' split plays that "
            r"part\); the splits are \['fit', 'select', 'report'\]",
        ),
        (["select", "selct"], r"'selct' is not a split \(did you mean 'select'\?\)"),
        (["report", "report"], r"lists 'report' twice"),
        ([], r"task\.splits is empty"),
        ("select", r"task\.splits='select' is a string; give a list"),
    ],
)
def test_check_split_names_names_the_bad_split_and_the_fix(names: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        check_split_names(names)
    assert "task.splits=[select" in str(err.value)
