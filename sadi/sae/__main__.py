"""`python -m sadi.sae train model=smollm2_135m layer=15 [k=32 expansion=8 tokens=1000000 ...]`

Trains (or takes from the cache) a TopK SAE of one decoder layer's output, offline, on the
task fit splits; prints the SAE's directory (pass it as `intervention.sae=` to SAS) and its
quality figures. `model=` takes a conf/model name (smollm2_135m, gemma3_270m, ...) or a
source (embedded:<name>, a local directory, a hub id). Other keys: the fields of
`sadi.sae.train.TrainConfig`, plus cache_dir= and data_dir=.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sadi.infra.errors import reported
from sadi.infra.verbosity import console_notes

USAGE = __doc__.split("\n\n")[0]


def _model_source(name: str) -> tuple[str, str]:
    """(source, dtype) of a conf/model name, or the name itself as a source."""
    conf = Path(__file__).resolve().parents[2] / "conf" / "model" / f"{name}.yaml"
    if conf.is_file():
        import yaml

        data = yaml.safe_load(conf.read_text())
        return str(data["source"]), str(data.get("dtype", "float32"))
    return name, "float32"


def parse(argv: Sequence[str]) -> dict[str, str]:
    out = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected key=value, got {arg!r}\nusage: {USAGE}")
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    console_notes()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "train":
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    from sadi.sae.train import TrainConfig

    values = parse(args[1:])
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    model_name = values.pop("model", "smollm2_135m")
    cache_dir = values.pop("cache_dir", None)
    data_dir = values.pop("data_dir", None)
    progress = values.pop("progress", "true").lower() in ("1", "true", "yes")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SystemExit(
            f"unknown keys {unknown}; known: model, cache_dir, data_dir, progress, {sorted(fields)}"
        )
    if "layer" not in values:
        raise SystemExit(f"layer= is required (the decoder layer the SAE reads)\nusage: {USAGE}")
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        default = fields[key].default
        if key == "tasks":
            kwargs[key] = tuple(t for t in raw.split(",") if t)
        elif isinstance(default, float):
            kwargs[key] = float(raw)
        elif isinstance(default, int) or key == "layer":
            kwargs[key] = int(raw)
        else:
            kwargs[key] = raw
    cfg = TrainConfig(**kwargs)

    from sadi.core.models import default_cache_dir, load_model
    from sadi.sae.train import train_sae

    source, dtype = _model_source(model_name)
    model, tok = load_model(source, dtype=dtype)  # converted once, in the default cache
    sae, directory, figures = train_sae(
        model,
        tok,
        cfg,
        cache_dir=cache_dir or default_cache_dir(),
        data_dir=data_dir,
        progress=progress,
    )
    shown = {k: v for k, v in figures.items() if k not in ("training", "config")}
    print(json.dumps(shown, indent=2))
    print(f"SAE: {directory}\nuse it with: intervention=sas intervention.sae={directory}")
    return 0


if __name__ == "__main__":
    with reported("sadi.sae"):
        raise SystemExit(main())
