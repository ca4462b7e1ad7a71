"""SAS features ("SAS features: ..."): per run whose steerer wrote `features.json`, its top
latents by |s| with their top-activating training tokens and the SAE's quality."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sadi.report.blocks import Table
from sadi.report.records import RunRecord

COLUMNS = ["latent", "s", "side", "freq +", "freq -", "top-activating training tokens"]


def _example_text(ex: dict[str, Any]) -> str:
    ctx = ex["context"][-40:].replace("\n", " ").replace("|", "/")
    tok = ex["token"].replace("\n", "\\n").replace("|", "/")
    return f"{ctx}[[{tok}]] ({ex['value']:.1f})"


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


def feature_tables(records: Sequence[RunRecord], top: int = 10) -> list[Table]:
    """One table per run whose steerer wrote `features.json` (SAS): its `top` latents by
    |s|, each with its top-activating training tokens, [[token]] after its context."""
    out = []
    for rec in records:
        d = rec.steerer_dir
        path = d / "features.json" if d is not None else None
        if path is None or not path.is_file():
            continue
        body = json.loads(path.read_text())
        note = [
            f"s has {body['n_nonzero']} non-zero latents ({body['n_positive']} positive: "
            f"only with the behaviour; {body['n_negative']} negative) at tau={body['tau']}.",
            *_sae_quality(body.get("examples_from")),
        ]
        rows = []
        for f in body["features"][:top]:
            ex = (
                "(no examples: the SAE has no features.json)"
                if f["examples"] is None
                else "; ".join(_example_text(e) for e in f["examples"][:3]) or "(never fired)"
            )
            rows.append(
                [
                    str(f["latent"]),
                    f"{f['s']:+.2f}",
                    f["side"],
                    f"{f['freq_pos']:.2f}",
                    f"{f['freq_neg']:.2f}",
                    ex,
                ]
            )
        title = f"SAS features: {rec.method} on {rec.task_label} ({rec.model})"
        out.append(Table(title, list(COLUMNS), rows, note))
    return out
