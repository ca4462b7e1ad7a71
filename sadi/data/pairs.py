"""Contrastive pairs from a task's fit split: (prompt, correct continuation, wrong one).

A steerer reads activations of ``prompt + positive`` and ``prompt + negative``; the
continuations keep the leading space of ``Item.choices`` so the concatenation is the
exact text lm-eval would score.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sadi.data.tasks import DataFormatError, Item, TaskError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """One contrastive pair; ``positive`` is the correct continuation of ``prompt``."""

    prompt: str
    positive: str
    negative: str
    item_id: str


_KEYS = tuple(f.name for f in fields(Pair))


def make_pairs(items: Sequence[Item], n_pairs: int = 150, seed: int = 0) -> list[Pair]:
    """Build up to ``n_pairs`` pairs from distinct items, reproducibly.

    Items are visited in a permutation seeded by ``seed``; each gives prompt = its context,
    positive = ``choices[label]`` and negative = a seeded-random choice that is not among
    ``correct`` and whose text differs from the positive. Items with no such choice are
    skipped with a warning, and the next item in the permutation is used instead.

    Args:
        items: Items of the fit split (``load_task(...).splits["fit"]``).
        n_pairs: How many pairs to make. With fewer usable items, all of them are used and
            a warning is logged; nothing is padded or repeated.
        seed: Seeds both the item order and the choice of negatives.

    Returns:
        ``min(n_pairs, usable items)`` pairs, one per item.

    Example:
        >>> item = Item("x", "The sky is", (" blue", " green", " loud"), 0)
        >>> make_pairs([item], n_pairs=1)[0].positive
        ' blue'
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs <= 0:
        raise ValueError(f"n_pairs={n_pairs!r} must be a positive int (e.g. 150)")
    if not items:
        raise TaskError(
            "make_pairs got no items; pass a non-empty split, e.g. load_task(name).splits['fit']"
        )
    rng = random.Random(seed)
    order = list(items)
    rng.shuffle(order)
    pairs: list[Pair] = []
    skipped: list[str] = []
    for item in order:
        if len(pairs) == n_pairs:
            break
        positive = item.choices[item.label]
        wrong = [c for i, c in enumerate(item.choices) if i not in item.correct and c != positive]
        if not wrong:
            skipped.append(item.id)
            continue
        pairs.append(Pair(item.question, positive, rng.choice(wrong), item.id))
    if skipped:
        log.warning(
            "make_pairs skipped %d item(s) with no incorrect choice that differs from "
            "the correct one, e.g. %s",
            len(skipped),
            skipped[:3],
        )
    if not pairs:
        raise TaskError(
            f"none of the {len(items)} items has an incorrect choice that differs "
            f"from its correct one, so no pair can be made"
        )
    if len(pairs) < n_pairs:
        log.warning(
            "make_pairs: asked for n_pairs=%d but only %d usable items; using all %d (no padding)",
            n_pairs,
            len(pairs),
            len(pairs),
        )
    return pairs


def save_pairs(pairs: Sequence[Pair], path: str | Path) -> Path:
    """Write pairs as JSONL (keys prompt, positive, negative, item_id); creates parent dirs.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(asdict(pair), ensure_ascii=False) + "\n")
    return path


def load_pairs(path: str | Path) -> list[Pair]:
    """Read pairs written by ``save_pairs``; a bad line raises with its file and line number.

    Example:
        >>> load_pairs("runs/copa/pairs.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} not found; write one with save_pairs()")
    pairs: list[Pair] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    f"{where}: malformed JSON ({e.msg} at column {e.colno})"
                ) from e
            if not (
                isinstance(record, dict)
                and set(record) == set(_KEYS)
                and all(isinstance(record[k], str) for k in _KEYS)
            ):
                raise DataFormatError(
                    f"{where}: got {str(record)[:80]!r}; a pair is an object "
                    f"with exactly the string keys {list(_KEYS)}"
                )
            pairs.append(Pair(**record))
    return pairs


__all__ = ["Pair", "load_pairs", "make_pairs", "save_pairs"]
