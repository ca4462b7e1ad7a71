"""Uncertainty of per-item scores: percentile bootstrap CIs and paired tests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike


@dataclass
class Estimate:
    """A value with a CI (from per-item samples) or a stderr (from results.json)."""

    value: float
    lo: float | None = None
    hi: float | None = None
    stderr: float | None = None
    n: int | None = None


@dataclass
class PairedTest:
    diff: Estimate  # mean of a - b with its paired bootstrap CI
    p_value: float
    test: Literal["mcnemar", "bootstrap"]


def _boot_means(x: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chunks = [  # chunked so that large splits do not allocate n_resamples x n at once
        x[rng.integers(0, len(x), size=(min(256, n_resamples - i), len(x)))].mean(axis=1)
        for i in range(0, n_resamples, 256)
    ]
    return np.concatenate(chunks)


def bootstrap_ci(
    scores: ArrayLike, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean of per-item scores with a percentile bootstrap CI (items resampled, seeded)."""
    x = np.asarray(scores, dtype=float)
    lo, hi = np.quantile(_boot_means(x, n_resamples, seed), [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(x.mean()), float(lo), float(hi), n=len(x))


def paired_test(
    a: ArrayLike,
    b: ArrayLike,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    binary: bool | None = None,
) -> PairedTest:
    """Paired comparison of scores a and b on the same items (two-sided).

    0/1 scores get an exact McNemar test on the discordant items; others a paired bootstrap
    (resampled differences shifted to mean 0). The difference's CI is a paired bootstrap.
    `binary`: whether the scores are 0/1 by their metric's definition
    (`sadi.eval.metrics.METRICS[name].binary`); None reads it from the values.

    Raises:
        ValueError: `binary` is True but a score is neither 0 nor 1.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    diff = bootstrap_ci(d, n_resamples, level, seed)
    zero_one = bool(np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all())
    if binary and not zero_one:
        odd = next(float(v) for v in np.concatenate([x, y]) if v not in (0.0, 1.0))
        raise ValueError(
            f"a binary metric's item scores must be 0 or 1, got {odd}: pass binary=False "
            "(or fix its entry in sadi.eval.metrics.METRICS) for a metric that is not 0/1"
        )
    if zero_one if binary is None else binary:
        n01, n10 = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        n = n01 + n10
        tail = sum(math.comb(n, i) for i in range(min(n01, n10) + 1))
        return PairedTest(diff, min(1.0, 2 * tail / 2**n) if n else 1.0, "mcnemar")
    boot = _boot_means(d - d.mean(), n_resamples, seed + 1)
    p = (np.sum(np.abs(boot) >= abs(d.mean()) - 1e-12) + 1) / (n_resamples + 1)
    return PairedTest(diff, float(p), "bootstrap")


def prior_offsets(loglik: ArrayLike, labels: ArrayLike, passes: int = 5) -> np.ndarray:
    """One constant per answer (the first held at 0) added to every item's log-likelihoods so
    that the argmax is right as often as possible: the best an answer-prior shift alone can do.

    Coordinate ascent over the exact breakpoints (exact for two answers); ties go to the
    offset nearest 0. `loglik` is (items, answers), the same answers for every item.
    """
    ll, y = np.asarray(loglik, dtype=float), np.asarray(labels)
    off = np.zeros(ll.shape[1])
    for _ in range(passes):
        moved = False
        for j in range(1, ll.shape[1]):
            others = np.delete(ll + off, j, axis=1).max(axis=1)
            ties = np.unique(others - ll[:, j])  # offset j where item i's answer flips to j
            cands = np.concatenate([[ties[0] - 1, ties[-1] + 1], (ties[:-1] + ties[1:]) / 2])
            cands = cands[np.argsort(np.abs(cands), kind="stable")]
            accs = [offset_accuracy(ll, y, _with(off, j, c)) for c in cands]
            best = float(cands[int(np.argmax(accs))])
            if max(accs) > offset_accuracy(ll, y, off) + 1e-12:
                off[j], moved = best, True
        if not moved:
            break
    return off


def _with(off: np.ndarray, j: int, value: float) -> np.ndarray:
    out = off.copy()
    out[j] = value
    return out


def offset_correct(loglik: ArrayLike, labels: ArrayLike, offsets: ArrayLike) -> np.ndarray:
    """Per item, 1.0 if the argmax of log-likelihood + offsets is the label, else 0.0."""
    pred = (np.asarray(loglik, dtype=float) + np.asarray(offsets, dtype=float)).argmax(axis=1)
    return (pred == np.asarray(labels)).astype(float)


def offset_accuracy(loglik: ArrayLike, labels: ArrayLike, offsets: ArrayLike) -> float:
    return float(offset_correct(loglik, labels, offsets).mean())
