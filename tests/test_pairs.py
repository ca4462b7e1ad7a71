"""Tests for sadi.data.pairs: seeded pair construction, edge cases, JSONL round trip."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sadi.data.pairs import Pair, load_pairs, make_pairs, save_pairs
from sadi.data.tasks import EXAMPLE_DATA, DataFormatError, Item, default_data_dir, load_task


@pytest.fixture(scope="module")
def tiny_items() -> list[Item]:
    task = load_task("jsonl", path=EXAMPLE_DATA / "tiny_mc.jsonl")
    return [i for items in task.splits.values() for i in items]


def _check(pairs: list[Pair], items: list[Item]) -> None:
    by_id = {i.id: i for i in items}
    assert len({p.item_id for p in pairs}) == len(pairs)  # one pair per item, no repeats
    for p in pairs:
        item = by_id[p.item_id]
        assert p.prompt == item.question
        assert p.positive == item.choices[item.label]
        assert p.negative in item.choices and p.negative != p.positive
        assert item.choices.index(p.negative) not in item.correct


def test_same_seed_same_pairs(tiny_items: list[Item]) -> None:
    a = make_pairs(tiny_items, n_pairs=12, seed=7)
    assert a == make_pairs(tiny_items, n_pairs=12, seed=7)
    assert a != make_pairs(tiny_items, n_pairs=12, seed=8)
    assert len(a) == 12
    _check(a, tiny_items)


def test_negative_is_seeded_among_several_wrong_choices() -> None:
    items = [Item(f"x{k}", "Pick", (" a", " b", " c", " d"), k % 4) for k in range(40)]
    pairs = make_pairs(items, n_pairs=40, seed=0)
    _check(pairs, items)
    assert len({p.negative for p in pairs}) == 4
    assert pairs == make_pairs(items, n_pairs=40, seed=0)


def test_duplicate_texts_and_multiple_correct_are_never_the_negative() -> None:
    items = [
        Item("dup", "Q", (" same", " same", " other"), 0),
        Item("mc2", "Q", (" yes", " also yes", " no"), 0, correct=(0, 1)),
    ]
    for seed in range(20):
        pairs = make_pairs(items, n_pairs=2, seed=seed)
        assert {p.negative for p in pairs} == {" other", " no"}


def test_items_without_a_usable_negative_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    items = [Item("bad", "Q", (" x", " x"), 0), Item("ok", "Q", (" x", " y"), 0)]
    with caplog.at_level(logging.WARNING, logger="sadi.data.pairs"):
        pairs = make_pairs(items, n_pairs=1, seed=0)
    assert [p.item_id for p in pairs] == ["ok"]
    with pytest.raises(ValueError, match="no pair can be made"):
        make_pairs(items[:1], n_pairs=1)


def test_fewer_items_than_requested_uses_all_and_warns(
    tiny_items: list[Item], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sadi.data.pairs"):
        pairs = make_pairs(tiny_items, n_pairs=150)
    assert len(pairs) == len(tiny_items) == 30
    assert "n_pairs=150" in caplog.text and "only 30" in caplog.text
    _check(pairs, tiny_items)


@pytest.mark.parametrize("n_pairs", [0, -3])
def test_bad_n_pairs(tiny_items: list[Item], n_pairs: int) -> None:
    with pytest.raises(ValueError, match=f"n_pairs={n_pairs} must be a positive int"):
        make_pairs(tiny_items, n_pairs=n_pairs)


def test_empty_items() -> None:
    with pytest.raises(ValueError, match="no items"):
        make_pairs([], n_pairs=5)


@pytest.mark.parametrize("name", ["copa", "truthfulqa_mc2", "mmlu", "caa_refusal", "winogrande"])
def test_pairs_from_real_fit_splits(name: str) -> None:
    try:
        data_dir = default_data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"real benchmark data not available: {e}")
    fit = load_task(name, data_dir=data_dir).splits["fit"]
    pairs = make_pairs(fit, n_pairs=150, seed=0)
    assert len(pairs) == 150
    _check(pairs, fit)


def test_save_load_round_trip(tiny_items: list[Item], tmp_path: Path) -> None:
    pairs = make_pairs(tiny_items, n_pairs=5) + [Pair('Ünïcode\n"q"', " ✓", " ✗", "u-1")]
    path = save_pairs(pairs, tmp_path / "deep" / "pairs.jsonl")
    assert load_pairs(path) == pairs
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith('{"prompt": ') and '"item_id": ' in first


def test_load_pairs_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="save_pairs"):
        load_pairs(tmp_path / "none.jsonl")
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "positive": " b", "negative": " c", "item_id": "1"}\n{oops\n')
    with pytest.raises(DataFormatError, match=r"p\.jsonl:2: malformed JSON"):
        load_pairs(path)
    path.write_text('{"prompt": "a", "positive": " b"}\n')
    with pytest.raises(DataFormatError, match=r"p\.jsonl:1: .*exactly the string keys"):
        load_pairs(path)
