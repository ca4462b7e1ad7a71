"""A sweep's scores: every condition scored together, kept on disk by chunk, served to lm-eval.

`SweepScores.get(name, requests)` answers one condition's log-likelihood requests. On the
first call for a set of requests it scores *every* condition that shares the unsteered
prefixes and is not yet on disk, chunk by chunk (`PrefixScorer`), writing each chunk's
scores as soon as they exist: a killed sweep resumes from the chunks written, and a later
job (another process, a launcher's worker) finds its point's scores there; a damaged chunk
file (cut short by a crash or a full disk) is moved aside and computed again. A lock file
keeps parallel jobs of one sweep from computing the same chunks twice. A condition that
edits the prefix itself (AUSteer, positions="all") shares nothing with the others, so it is
scored only when asked for, under a lock of its own: parallel jobs of such a sweep run in
parallel.

`SweepLM` is the lm-eval model that serves a condition from those scores; lm-eval still
builds the requests (context, continuation, truncation) and computes the metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from sadi.eval.lm import Request, SteeredLM
from sadi.infra.cache import digest
from sadi.infra.files import locked, move_aside, write_text_atomic
from sadi.infra.jsonio import DamagedFileError, read_json
from sadi.sweep.prefix import Condition, PrefixScorer, Score, split_request

log = logging.getLogger(__name__)

Tokens = tuple[list[int], list[int]]  # (context tokens, continuation tokens)


def _write_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value))


def _move_aside(path: Path, why: str) -> None:
    """Move a damaged chunk file or folder aside (`move_aside`) and say so once; the caller
    computes it again."""
    aside = move_aside(path)
    log.warning("sweep engine: %s %s; moved aside to %s, computing it again", path, why, aside.name)


def _read_chunk(path: Path, n: int) -> list[Score] | None:
    """A chunk file's `n` scores; None (the file moved aside) when it is damaged."""
    try:
        scores = [(float(ll), bool(g)) for ll, g in read_json(path)]
        if len(scores) != n:
            raise ValueError(f"it holds {len(scores)} scores, its chunk has {n} rows")
        return scores
    except (DamagedFileError, TypeError, ValueError) as err:
        _move_aside(path, f"could not be read ({err})")
        return None


class SweepScores:
    """The log-likelihood scores of named conditions (one fit's sweep points and the
    baseline) on the requests lm-eval sends, computed together.

    Args:
        model: the model every condition steers.
        conditions: name -> fitted steerer (None: unsteered). Names are directory names:
            give each condition a name that identifies it (e.g. a digest of its parameters).
        directory: where chunks are written (None: memory only).
        progress: a progress bar over chunks.
        **scorer: `PrefixScorer` options (batch_size, cache_mb, logits_mb, prefix_tokens).
    """

    def __init__(
        self,
        model: nn.Module,
        conditions: Mapping[str, Condition],
        *,
        directory: str | Path | None = None,
        progress: bool = False,
        **scorer: Any,
    ) -> None:
        for name in conditions:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"condition name {name!r} must be a plain directory name")
        self.scorer = PrefixScorer(model, **scorer)
        self.conditions = dict(conditions)
        self.directory = None if directory is None else Path(directory)
        self.progress = progress
        self._memo: dict[tuple[str, str], list[Score]] = {}

    def get(self, name: str, requests: Sequence[Tokens], max_length: int) -> list[Score]:
        """The scores of condition `name` on `requests`, in their order."""
        if name not in self.conditions:
            raise KeyError(f"no condition {name!r}; this sweep has {sorted(self.conditions)}")
        key = digest(
            {"max_length": max_length, "requests": [[list(c), list(k)] for c, k in requests]}
        )
        if (name, key) not in self._memo:
            self._score_all(key, requests, max_length, name)
        return self._memo[(name, key)]

    def _own_prefix(self, name: str) -> bool:
        st = self.conditions[name]
        return st is not None and st.prefix_unshared() is not None

    def _score_all(
        self, key: str, requests: Sequence[Tokens], max_length: int, wanted: str
    ) -> None:
        """Score `wanted` and, unless it runs its own prefix, every condition sharing the
        unsteered prefixes with it."""
        rows = [split_request(c, k, max_length) for c, k in requests]
        own = self._own_prefix(wanted)
        names = [wanted] if own else [n for n in self.conditions if not self._own_prefix(n)]
        folder = None if self.directory is None else self.directory / key
        if folder is None:
            self._fill(key, rows, None, names)
            return
        # the lock lies beside the folder, not in it: a damaged plan moves the folder aside
        # while the lock is held, and a waiting job must still wait on the same lock
        with locked(folder.with_name(f"{key}.lock-{wanted}" if own else f"{key}.lock")):
            self._fill(key, rows, folder, names)

    def _plan(self, rows: list[Any], folder: Path | None) -> list[list[int]]:
        """The chunks of `rows`: read from the folder's plan.json (the chunk files are
        numbered by it), else computed and written. A damaged plan moves the whole folder
        aside (its chunk files belong to that plan) and starts it again."""
        plan_file = None if folder is None else folder / "plan.json"
        if plan_file is not None and plan_file.exists():
            try:
                plan = read_json(plan_file)
                chunks = [[int(i) for i in c] for c in plan["chunks"]]
                if plan["n_requests"] != len(rows) or sorted(sum(chunks, [])) != list(
                    range(len(rows))
                ):
                    raise ValueError("its chunks do not cover these requests once each")
                return chunks
            except (DamagedFileError, KeyError, TypeError, ValueError) as err:
                assert folder is not None
                _move_aside(folder, f"its plan.json could not be read ({err})")
        chunks = self.scorer.chunks(rows)
        if plan_file is not None:
            _write_atomic(plan_file, {"n_requests": len(rows), "chunks": chunks})
        return chunks

    def _fill(self, key: str, rows: list[Any], folder: Path | None, names: list[str]) -> None:
        chunks = self._plan(rows, folder)
        results: dict[str, list[Score | None]] = {n: [None] * len(rows) for n in names}
        bar = tqdm(chunks, desc=f"sweep: {len(names)} conditions", disable=not self.progress)
        for ci, chunk in enumerate(bar):
            files = {n: None if folder is None else folder / n / f"chunk_{ci}.json" for n in names}
            got: dict[str, list[Score]] = {}
            for n, f in files.items():
                if f is not None and f.exists() and (scores := _read_chunk(f, len(chunk))):
                    got[n] = scores
            missing = [n for n in names if n not in got]
            if missing:
                scored = self.scorer.score_chunk(
                    [rows[i] for i in chunk], {n: self.conditions[n] for n in missing}
                )
                for n, scores in scored.items():
                    f = files[n]
                    if f is not None:
                        _write_atomic(f, scores)
                    got[n] = scores
            for n, scores in got.items():
                for i, s in zip(chunk, scores, strict=True):
                    results[n][i] = s
        for n, maybe in results.items():
            done = [s for s in maybe if s is not None]
            assert len(done) == len(maybe), f"condition {n}: rows left unscored"
            self._memo[(n, key)] = done


class SweepLM(SteeredLM):
    """SteeredLM whose log-likelihoods are condition `condition` of `scores` (a sweep's
    shared-prefix conditions are all scored at the first request); generation runs as
    SteeredLM's, under `steerer`.

    Example:
        >>> scores = SweepScores(model, {"base": None, "s5": sadi5, "s10": sadi10})
        >>> evaluate_split(SweepLM(model, scores=scores, condition="s5", steerer=sadi5), ...)
    """

    def __init__(
        self, pretrained: Any, *, scores: SweepScores, condition: str, **kwargs: Any
    ) -> None:
        if condition not in scores.conditions:
            raise KeyError(f"no condition {condition!r}; the sweep has {sorted(scores.conditions)}")
        super().__init__(pretrained, **kwargs)
        self.scores, self.condition = scores, condition

    def _loglikelihood_tokens(  # type: ignore[override]
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        answers = self.scores.get(
            self.condition, [(ctx, cont) for _, ctx, cont in requests], self.max_length
        )
        for (request, _, _), answer in zip(requests, answers, strict=True):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return answers
