"""Does a judge's verdict mean anything? Hand-written pairs of answers to one question, one
showing a CAA behaviour and one not (`conf/judge/probes/caa.jsonl`, written for this
check, never drawn from a dataset), scored with the behaviour's rubric: the share of pairs
the judge orders right (a tie counts half) is its accuracy on clear-cut cases; 0.5 is a
judge that cannot tell them apart.

    python -m sadi.judge.check --base-url http://127.0.0.1:8000/v1 --model NAME
                               [--tasks caa_refusal ...] [--out judge_check.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sadi.infra.errors import reported
from sadi.infra.jsonio import read_jsonl
from sadi.judge.client import JudgeClient, JudgeSettings
from sadi.judge.judging import judge_rows, score_of
from sadi.judge.rubrics import RUBRIC_DIR, rubric_set
from sadi.judge.store import JudgementStore

PROBES = RUBRIC_DIR.parent / "probes" / "caa.jsonl"


def check_judge(
    client: JudgeClient,
    store: JudgementStore,
    tasks: Sequence[str] | None = None,
    probes: Path = PROBES,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Per task: pairs, ordered right, ties, unparseable answers, accuracy (ties half; None
    when no pair had both scores) and the mean score of the answers showing and lacking the
    behaviour."""
    rows = read_jsonl(probes)
    out: dict[str, dict[str, Any]] = {}
    for task in tasks or sorted({r["task"] for r in rows}):
        pairs = [r for r in rows if r["task"] == task]
        if not pairs:
            raise ValueError(f"{probes} has no probe pairs for {task!r}")
        answers = [
            {"id": f"{p['id']}:{side}", "question": p["question"], "generation": p[side]}
            for p in pairs
            for side in ("shows", "lacks")
        ]
        judged = judge_rows(client, store, rubric_set("caa", task), answers, progress=progress)
        scores = [score_of(r, "behaviour") for r in judged.rows]
        shows, lacks = scores[0::2], scores[1::2]
        both = [
            (s, n) for s, n in zip(shows, lacks, strict=True) if s is not None and n is not None
        ]
        right = sum(s > n for s, n in both)
        ties = sum(s == n for s, n in both)
        out[task] = {
            "pairs": len(pairs),
            "ordered_right": right,
            "ties": ties,
            "unparseable": sum(v is None for v in scores),
            "accuracy": (right + ties / 2) / len(both) if both else None,
            "mean_shows": _mean([s for s, _ in both]),
            "mean_lacks": _mean([n for _, n in both]),
            "answers": [r["answers"]["behaviour"] for r in judged.rows],
        }
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sadi.judge.check", description=__doc__)
    ap.add_argument("--base-url", required=True, help="the endpoint, e.g. http://host:8000/v1")
    ap.add_argument("--model", required=True, help="the model the endpoint serves")
    ap.add_argument("--api-key-env", default=None, help="the variable holding the API key")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--tasks", nargs="*", default=None, help="default: every probed behaviour")
    ap.add_argument("--cache", default=None, help="judgement cache (default: sadi's cache)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    from sadi.core.models import default_cache_dir

    settings = JudgeSettings(
        base_url=args.base_url,
        model=args.model,
        api_key_env=args.api_key_env,
        max_tokens=args.max_tokens,
    )
    client = JudgeClient(settings)
    client.health()
    store = JudgementStore(Path(args.cache) if args.cache else default_cache_dir() / "judgements")
    result = check_judge(client, store, args.tasks)
    for task, r in result.items():
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
        print(
            f"{task}: {r['ordered_right']}/{r['pairs']} pairs ordered right, {r['ties']} ties, "
            f"{r['unparseable']} unparseable; accuracy {acc} (0.5: chance)"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"judge": settings.model, "tasks": result}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    with reported("sadi.judge.check"):
        raise SystemExit(main())


__all__ = ["PROBES", "check_judge", "main"]
