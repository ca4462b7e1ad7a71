"""The method x task table: estimates per split, paired deltas; Markdown and HTML output."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sadi.infra.jsonio import read_jsonl
from sadi.report.records import RunRecord, load_samples, load_scores, samples_path
from sadi.report.stats import Estimate, bootstrap_ci, offset_correct, paired_test, prior_offsets

Row = dict[str, Any]  # one table row: strings, Estimates, the p-value
HEADER = (
    "Hyperparameters were chosen on the **select** split; the **report** split is shown once, "
    "for the chosen point only. Values are the metric x100 with a 95% bootstrap CI over items "
    "({n} resamples, seed {seed}); delta = steered - baseline on the same report items, with a "
    "paired test (exact McNemar for 0/1 scores, paired bootstrap otherwise). 'CI n/a': no "
    "per-item samples, the value +- stderr from results.json."
)


def _estimate(rec: RunRecord, split: str, baseline: bool, n: int, seed: int) -> Estimate | None:
    """From the samples when present, else the value and stderr in results.json."""
    if scores := load_scores(rec, split, baseline):
        return bootstrap_ci(list(scores.values()), n, seed=seed)
    v = (rec.baseline_metrics if baseline else rec.metrics).get(split, {})
    return (
        Estimate(float(v[rec.metric]), stderr=v.get(f"{rec.metric}_stderr"))
        if rec.metric in v
        else None
    )


def _params(rec: RunRecord) -> str:
    keys = rec.spec.axes if rec.spec else rec.params  # e.g. "k=4, strength=5.0"
    return ", ".join(f"{k}={rec.params[k]}" for k in keys if k in rec.params)


def table(records: Sequence[RunRecord], n_resamples: int = 2000, seed: int = 0) -> list[Row]:
    """One row per record: select and report (steered), baseline report, paired delta."""
    rows = []
    for rec in sorted(records, key=lambda r: (r.task_label, r.model, r.method != "none", r.method)):
        row: dict[str, Any] = {"task": rec.task_label, "method": rec.method}
        row["params"] = _params(rec)
        row |= {"model": rec.model, "metric": rec.metric, "chosen_by": rec.chosen_by}
        row |= {"run_dir": str(rec.run_dir), "diff": None, "p_value": None, "test": None}
        row["select"] = _estimate(rec, "select", False, n_resamples, seed)
        # the unsteered model on select: what the chosen point had to beat where it was chosen
        row["select_baseline"] = _estimate(rec, "select", True, n_resamples, seed)
        row["report"] = _estimate(rec, "report", False, n_resamples, seed)
        row["baseline"] = _estimate(rec, "report", True, n_resamples, seed)
        steered, base_scores = load_scores(rec, "report"), load_scores(rec, "report", True)
        if rec.steered and steered and base_scores and steered.keys() & base_scores.keys():
            ids = sorted(steered.keys() & base_scores.keys())  # paired on shared items
            a, b = [steered[i] for i in ids], [base_scores[i] for i in ids]
            t = paired_test(a, b, n_resamples, seed=seed)
            row |= {"diff": t.diff, "p_value": t.p_value, "test": t.test}
        rows.append(row)
    return rows


def _fmt(e: Estimate | None, sign: str = "") -> str:
    if e is None:
        return "-"
    v = f"{100 * e.value:{sign}.1f}"
    if e.lo is not None and e.hi is not None:
        return f"{v} [{100 * e.lo:{sign}.1f}, {100 * e.hi:{sign}.1f}]"
    return f"{v} +- {100 * e.stderr:.1f} (CI n/a)" if e.stderr is not None else f"{v} (CI n/a)"


COLUMNS = ["task", "model", "method", "params", "metric", "select (steered)", "select (baseline)"]
COLUMNS += [
    "report (steered)",
    "report (baseline)",
    "delta report",
    "p (test)",
    "n report",
    "chosen by",
]


def _cells(row: Row) -> list[str]:
    p = f"{row['p_value']:.3g} ({row['test']})" if row["p_value"] is not None else "-"
    n = row["report"].n if row["report"] is not None and row["report"].n else "-"
    fixed = [row[k] for k in ("task", "model", "method", "params", "metric")]
    values = [_fmt(row[k]) for k in ("select", "select_baseline", "report", "baseline")]
    values.append(_fmt(row["diff"], "+"))
    return [*fixed, *values, p, str(n), row["chosen_by"]]


def to_markdown(rows: Sequence[Row], n_resamples: int = 2000, seed: int = 0) -> str:
    """The table as GitHub markdown, headed by how the numbers were chosen and computed."""
    lines = ["# Steering report", "", HEADER.format(n=n_resamples, seed=seed), ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _example_text(ex: dict[str, Any]) -> str:
    ctx = ex["context"][-40:].replace("\n", " ").replace("|", "/")
    tok = ex["token"].replace("\n", "\\n").replace("|", "/")
    return f"{ctx}[[{tok}]] ({ex['value']:.1f})"


def _side_delta(rec: RunRecord, side: str, split: str, metric: str, st: float, base: float) -> str:
    """steered - unsteered on a side task, x100: with its paired CI and p (exact McNemar for
    0/1 scores) where the per-item samples lie beside the run, else the bare difference."""
    bare = f"{100 * (st - base):+.1f}"
    d = rec.sample_dirs.get("report", rec.run_dir)
    files = [d / f"samples_side_{side}_{split}{suffix}.jsonl" for suffix in ("", "_baseline")]
    if not all(f.exists() for f in files):
        return bare
    steered, unsteered = ({str(r["id"]): r for r in read_jsonl(f)} for f in files)
    if set(steered) != set(unsteered) or not all(metric in r for r in steered.values()):
        return bare
    ids = sorted(steered)
    a, b = ([float(r[i][metric]) for i in ids] for r in (steered, unsteered))
    return _paired_cell(a, b, scale=100)


def side_effect_section(records: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """("Side effects", table) when any record scored other tasks with its steerer: the
    capability cost of steering next to its effect."""
    lines = [
        "Each chosen steerer also scored on other tasks (never fit or selected on), with and "
        "without steering; delta x100 with its 95% paired-bootstrap CI and exact McNemar p "
        "where the per-item samples are kept.",
        "",
        "| task | method | side task | split (items) | metric | steered | unsteered | delta |",
        "|---|---|---|---|---|---|---|---|",
    ]
    n = 0
    for rec in records:
        for side, got in sorted(rec.side_effects.items()):
            metric = "mc2" if "mc2" in got.get("baseline", {}) else "acc"
            st, base = got["steered"].get(metric), got["baseline"].get(metric)
            if st is None or base is None:
                continue
            n += 1
            lines.append(
                f"| {rec.task_label} | {rec.method} | {side} | {got['split']} ({got['n_items']}) | "
                f"{metric} | {100 * st:.1f} | {100 * base:.1f} | "
                f"{_side_delta(rec, side, got['split'], metric, st, base)} |"
            )
    return [("Side effects", "\n".join(lines))] if n else []


def _answer_set(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The answers every item offers, when all offer the same ones (yes / no); else []."""
    conts: list[str] = (rows[0].get("continuations") or []) if rows else []
    return conts if all(r.get("continuations") == conts for r in rows) else []


def _top_answer(rows: Sequence[dict[str, Any]], key: str) -> tuple[str, float]:
    """The most frequent value of `key` over the items and its share: the answer's text when
    every item offers the same answers (yes / no), else its position ("choice 1")."""
    value, count = Counter(r[key] for r in rows).most_common(1)[0]
    conts = _answer_set(rows)
    if conts and isinstance(value, int) and 0 <= value < len(conts):
        return conts[value].strip(), count / len(rows)
    return f"choice {value}", count / len(rows)


ONE_ANSWER = 0.9  # a model giving one answer to more than this share of items is flagged


def _select_offsets(
    rec: RunRecord, memo: dict[tuple[str, str, str], tuple[list[dict[str, Any]], Any]]
) -> tuple[list[dict[str, Any]], Any]:
    """(unsteered select rows, their fitted answer offsets), fitted once per task, model and
    select scores: every method of one task and model shares the same unsteered scores."""
    f = samples_path(rec, "select", True)
    if not f.exists():
        return [], None
    key = (rec.task_label, rec.model, hashlib.sha256(f.read_bytes()).hexdigest())
    if key not in memo:
        sel = load_samples(rec, "select", True) or []
        conts = _answer_set(sel)
        ok = conts and all(len(r.get("loglikelihoods") or []) == len(conts) for r in sel)
        off = (
            prior_offsets([r["loglikelihoods"] for r in sel], [r["label"] for r in sel])
            if ok
            else None
        )
        memo[key] = (sel, off)
    return memo[key]


def _calibrated(
    steered: Sequence[dict[str, Any]],
    base: Sequence[dict[str, Any]],
    sel: Sequence[dict[str, Any]],
    off: Any,
) -> tuple[str, str]:
    """(calibrated unsteered accuracy, steered - calibrated with CI and p) on report: the
    unsteered log-likelihoods plus one offset per answer (`off`, fitted on the select
    split's unsteered rows `sel`)."""
    conts = _answer_set([*sel, *base])
    if (
        off is None
        or not conts
        or any(len(r.get("loglikelihoods") or []) != len(conts) for r in [*sel, *base])
    ):
        return "n/a", "n/a"
    by_id = {str(r["id"]): r for r in base}
    if any(str(r["id"]) not in by_id for r in steered):
        return "n/a", "n/a"
    pairs = [by_id[str(r["id"])] for r in steered]
    cal = offset_correct([r["loglikelihoods"] for r in pairs], [r["label"] for r in pairs], off)
    return f"{100 * cal.mean():.1f}", _paired_cell(
        [float(r["acc"]) for r in steered], cal, scale=100
    )


def answer_section(records: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """("Answers", table) for multiple-choice reports: the accuracy of always giving the most
    frequent label, and how often the unsteered and the steered model give their own most
    frequent answer. A steered gain that only moves the answer prior (every item answered
    alike) is no better than that constant answer, whatever its paired test says; nor is one
    that does no better than the unsteered model with its answer prior re-fitted on select
    (`_calibrated`)."""
    lines = [
        "Report split. 'constant' = the accuracy of always answering the most frequent label; "
        "'top answer' = the answer a model gives most often and its share of items; "
        f"'one answer' marks a steered model giving one answer to more than {ONE_ANSWER:.0%} of "
        "the items: its accuracy measures the label balance, not steering towards the task. "
        "'calibrated' = the unsteered model with one constant added to each answer's "
        "log-likelihood, fitted on the select split's unsteered scores (a shift of the answer "
        "prior, nothing else), scored on report; 'steered - calibrated' = the paired "
        "difference with its CI and exact McNemar p ('n/a': the items do not share one "
        "answer set, or no select scores).",
        "",
        "| task | model | method | constant | unsteered top answer | steered top answer | "
        "steered acc | one answer | calibrated | steered - calibrated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    n = 0
    memo: dict[tuple[str, str, str], tuple[list[dict[str, Any]], Any]] = {}
    for rec in sorted(records, key=lambda r: (r.task_label, r.model, r.method)):
        steered, base = load_samples(rec, "report"), load_samples(rec, "report", True)
        if not rec.steered or not steered or not base:
            continue
        if not all("prediction" in r and "label" in r and "acc" in r for r in steered + base):
            continue  # not a single-answer multiple-choice task (e.g. TruthfulQA MC2)
        label, label_share = _top_answer(steered, "label")
        b_ans, b_share = _top_answer(base, "prediction")
        s_ans, s_share = _top_answer(steered, "prediction")
        acc = sum(float(r["acc"]) for r in steered) / len(steered)
        n += 1
        lines.append(
            f"| {rec.task_label} | {rec.model} | {rec.method} | {100 * label_share:.1f} "
            f"('{label}') | '{b_ans}' {100 * b_share:.0f}% | '{s_ans}' {100 * s_share:.0f}% | "
            f"{100 * acc:.1f} | {'yes' if s_share > ONE_ANSWER else ''} | "
            + " | ".join(_calibrated(steered, base, *_select_offsets(rec, memo)))
            + " |"
        )
    return [("Answers", "\n".join(lines))] if n else []


def _entropy(ll: Sequence[float]) -> float:
    """Entropy of the softmax over an item's answer log-likelihoods, over log(n): 1 = uniform."""
    x = np.asarray(ll, dtype=float)
    p = np.exp(x - x.max())
    p /= p.sum()
    return float(-(p * np.log(np.where(p > 0, p, 1.0))).sum() / np.log(len(x)))


def _true_answers(r: dict[str, Any]) -> list[int]:
    """The indices of an item's true answers: `correct` (mc2), else the label of an acc row."""
    if r.get("correct"):
        return list(r["correct"])
    return [r["label"]] if "acc" in r and "label" in r else []


def _paired_cell(a: ArrayLike, b: ArrayLike, digits: int = 1, scale: float = 1.0) -> str:
    """'a - b [CI], p=..' from `paired_test` (exact McNemar for 0/1 scores, else paired
    bootstrap), the difference and its CI multiplied by `scale` (100 for a metric x100)."""
    t = paired_test(a, b)
    d = t.diff
    assert d.lo is not None and d.hi is not None  # a bootstrap CI has both ends
    v, lo, hi = scale * d.value, scale * d.lo, scale * d.hi
    return f"{v:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}], p={t.p_value:.3g}"


def answer_form_section(records: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """("Answer form", table) for multiple-choice tasks whose items offer different answers
    (TruthfulQA), where no answer-prior control applies: did steering only change the form of
    the answer? Length: the chosen answer's characters, steered vs unsteered, next to the
    metric of a flat distribution and of always taking the longest or the shortest answer.
    Flatness: the normalised entropy of the answer distribution (1 = uniform), which a metric
    summing probability mass over several true answers (mc2) rewards when it goes up."""
    lines = [
        "Report split, tasks whose items offer different answers. 'chars' = mean length of "
        "the answer the model ranks first; 'flat' = the metric of a uniform distribution "
        "over each item's answers (mean share of true answers), and 'steered - flat' the "
        "steered model's per-item metric minus it, x100; 'longest' / 'shortest' = the "
        "share of items whose longest / shortest answer is true ('n/a': the samples do not "
        "say which answers are true); "
        "'entropy' = mean entropy of the softmax over each item's answer log-likelihoods "
        "divided by log(number of answers), 1 = uniform. Differences: steered - unsteered on "
        "the same items, paired bootstrap CI and p.",
        "",
        "| task | model | method | chars unsteered | chars steered | chars steered - unsteered "
        "| flat | steered - flat | longest | shortest | entropy unsteered | entropy steered "
        "| entropy steered - unsteered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("continuations", "loglikelihoods", "prediction")
    n = 0
    for rec in sorted(records, key=lambda r: (r.task_label, r.model, r.method)):
        steered, base = load_samples(rec, "report"), load_samples(rec, "report", True)
        if not rec.steered or not steered or not base or _answer_set(base):
            continue
        if not all(all(k in r for k in keys) for r in steered + base):
            continue
        by_id = {str(r["id"]): r for r in base}
        if any(str(r["id"]) not in by_id for r in steered):
            continue
        pairs = [(r, by_id[str(r["id"])]) for r in steered if len(r["continuations"]) > 1]
        if not pairs:
            continue

        def chars(r: dict[str, Any]) -> float:
            return float(len(r["continuations"][r["prediction"]].strip()))

        c_s, c_b = [chars(s) for s, _ in pairs], [chars(b) for _, b in pairs]
        h_s = [_entropy(s["loglikelihoods"]) for s, _ in pairs]
        h_b = [_entropy(b["loglikelihoods"]) for _, b in pairs]
        flat = longest = shortest = vs_flat = "n/a"
        truths = [_true_answers(s) or _true_answers(b) for s, b in pairs]
        if all(truths):
            sizes = [[len(c.strip()) for c in s["continuations"]] for s, _ in pairs]
            uniform = [len(t) / len(x) for t, x in zip(truths, sizes)]
            flat = f"{100 * np.mean(uniform):.1f}"
            if all("mc2" in s or "acc" in s for s, _ in pairs):
                score = [float(s["mc2"] if "mc2" in s else s["acc"]) for s, _ in pairs]
                vs_flat = _paired_cell(score, uniform, scale=100)
            longest, shortest = (
                f"{100 * np.mean([x.index(pick(x)) in t for x, t in zip(sizes, truths)]):.1f}"
                for pick in (max, min)
            )
        n += 1
        lines.append(
            f"| {rec.task_label} | {rec.model} | {rec.method} | {np.mean(c_b):.1f} | "
            f"{np.mean(c_s):.1f} | {_paired_cell(c_s, c_b, 1)} | {flat} | {vs_flat} | {longest} | "
            f"{shortest} | "
            f"{np.mean(h_b):.3f} | {np.mean(h_s):.3f} | {_paired_cell(h_s, h_b, 3)} |"
        )
    return [("Answer form", "\n".join(lines))] if n else []


def generation_section(records: Sequence[RunRecord], n: int = 3) -> list[tuple[str, str]]:
    """("Generations", table) when a chosen point generated on open-ended prompts: the first
    `n` prompts with the unsteered and the steered answer (no judge: saved for reading)."""
    lines = [
        f"Greedy answers to the first {n} open-ended prompts, unsteered and steered (all of "
        "them are in each report run's generations_<task>*.jsonl).",
        "",
        "| task | method | prompt | unsteered | steered |",
        "|---|---|---|---|---|",
    ]
    shown = 0
    for rec in records:
        d = rec.sample_dirs.get("report", rec.run_dir)
        steered, base = (
            d / f"generations_{rec.task}.jsonl",
            d / f"generations_{rec.task}_baseline.jsonl",
        )
        if not (steered.exists() and base.exists()):
            continue
        a = [json.loads(x) for x in steered.read_text().splitlines() if x.strip()]
        b = {r["id"]: r for r in (json.loads(x) for x in base.read_text().splitlines() if x)}
        for row in a[:n]:
            other = b.get(row["id"], {}).get("generation", "")
            cells = [_cell(row["prompt"], 160), _cell(other), _cell(row["generation"])]
            lines.append(f"| {rec.task_label} | {rec.method} | " + " | ".join(cells) + " |")
            shown += 1
    return [("Generations", "\n".join(lines))] if shown else []


def _cell(text: str, limit: int = 240) -> str:
    """One line of a Markdown table cell: the chat template's markup and newlines folded."""
    flat = " ".join(str(text).replace("|", "/").split())
    return flat if len(flat) <= limit else "..." + flat[-limit:]


def pivot_markdown(rows: Sequence[Row]) -> str:
    """A compact method x task table of report deltas (steered - unsteered, x100, with the
    paired test's marker: * p < 0.05), the unsteered report value heading each column."""
    tasks = sorted({(r["task"], r["model"]) for r in rows})
    methods = sorted({r["method"] for r in rows if r["method"] != "none"})
    cell: dict[tuple[str, str, str], Row] = {(r["task"], r["model"], r["method"]): r for r in rows}
    metric = {(r["task"], r["model"]): r["metric"] for r in rows}
    several = len({m for _, m in tasks}) > 1
    head = ["method", *(f"{t}{f' ({m})' if several else ''} [{metric[t, m]}]" for t, m in tasks)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = ["unsteered"]
    for t, m in tasks:
        got = next((r for r in rows if (r["task"], r["model"]) == (t, m) and r["baseline"]), None)
        base.append(f"{100 * got['baseline'].value:.1f}" if got else "-")
    lines.append("| " + " | ".join(base) + " |")
    for method in methods:
        cells = [method]
        for t, m in tasks:
            r = cell.get((t, m, method))
            if r is None or r["diff"] is None:
                cells.append("-")
                continue
            star = "*" if r["p_value"] is not None and r["p_value"] < 0.05 else ""
            cells.append(f"{100 * r['diff'].value:+.1f}{star}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sae_quality(sae_dir: str | None) -> list[str]:
    """One line naming the SAE that SAS steered through and its quality figures (from the
    `quality.json` sadi writes beside an SAE it trains), where that directory is readable:
    SAS's numbers depend on the SAE, and two machines train slightly different ones."""
    from sadi.sae.train import QUALITY_FILE  # here: importing sadi.sae loads torch

    if not sae_dir or not (Path(sae_dir) / QUALITY_FILE).is_file():
        return []
    q = json.loads((Path(sae_dir) / QUALITY_FILE).read_text())
    keys = ("held_out_variance_explained", "held_out_l0", "held_out_dead_fraction")
    if not all(k in q for k in keys):
        return []
    ve, l0, dead = (float(q[k]) for k in keys)
    return [
        f"SAE `{Path(sae_dir).name}`: held-out variance explained {ve:.3f}, "
        f"L0 {l0:.0f}, dead latents {100 * dead:.2f}%."
    ]


def feature_sections(records: Sequence[RunRecord], top: int = 10) -> list[tuple[str, str]]:
    """(title, markdown table) per run whose steerer wrote `features.json` (SAS): its top
    latents by |s| with their top-activating training tokens, [[token]] after its context."""
    out = []
    for rec in records:
        d = rec.steerer_dir
        path = d / "features.json" if d is not None else None
        if path is None or not path.is_file():
            continue
        body = json.loads(path.read_text())
        lines = [
            f"s has {body['n_nonzero']} non-zero latents ({body['n_positive']} positive: "
            f"only with the behaviour; {body['n_negative']} negative) at tau={body['tau']}.",
            *_sae_quality(body.get("examples_from")),
            "",
            "| latent | s | side | freq + | freq - | top-activating training tokens |",
            "|---|---|---|---|---|---|",
        ]
        for f in body["features"][:top]:
            ex = (
                "(no examples: the SAE has no features.json)"
                if f["examples"] is None
                else "; ".join(_example_text(e) for e in f["examples"][:3]) or "(never fired)"
            )
            lines.append(
                f"| {f['latent']} | {f['s']:+.2f} | {f['side']} | {f['freq_pos']:.2f} | "
                f"{f['freq_neg']:.2f} | {ex} |"
            )
        title = f"SAS features: {rec.method} on {rec.task_label} ({rec.model})"
        out.append((title, "\n".join(lines)))
    return out


def to_html(
    rows: Sequence[Row],
    images: Sequence[Path] = (),
    n_resamples: int = 2000,
    seed: int = 0,
    sections: Sequence[tuple[str, str]] = (),
) -> str:
    """A self-contained HTML page: the table and the PNGs embedded as data URIs."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r)) + "</tr>\n" for r in rows
    )
    header = esc(HEADER.format(n=n_resamples, seed=seed)).replace("**", "")
    figs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"'
        f' alt="{esc(p.name)}"><figcaption>{esc(p.name)}</figcaption></figure>\n'
        for p in images
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:14px}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eee}"
        "tr:nth-child(even){background:#f8f8f8}img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Steering report</title>"
        f"<style>{style}</style></head><body><h1>Steering report</h1><p>{header}</p>\n"
        f"<table><tr>{head}</tr>\n{body}</table>\n{figs}{_sections_html(sections)}"
        "</body></html>\n"
    )


def _sections_html(sections: Sequence[tuple[str, str]]) -> str:
    """Markdown sections (a paragraph, then a pipe table) as HTML."""
    esc = html.escape
    parts = []
    for title, md in sections:
        parts.append(f"<h2>{esc(title)}</h2>")
        rows = [ln for ln in md.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
        text = [ln for ln in md.splitlines() if ln and not ln.startswith("|")]
        parts += [f"<p>{esc(t)}</p>" for t in text]
        cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
        if cells:
            head = "".join(f"<th>{esc(c)}</th>" for c in cells[0])
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in cells[1:]
            )
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
    return "\n".join(parts) + "\n"
