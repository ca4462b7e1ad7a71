"""`sadi control-vector export|import`: llama.cpp control vectors from and to sadi steerers.

sadi control-vector export outputs/runs/<run> caa.gguf
llama-server -m model.gguf --control-vector caa.gguf         # the run's CAA, in llama.cpp
sadi control-vector import repeng.gguf steerers/happy --layer 14 --scale 1.5
"""

from __future__ import annotations

import argparse
import sys

from sadi.core.models import DEFAULT_MODEL, load_model
from sadi.infra.errors import UserError
from sadi.llamacpp.control_vector import export_control_vector, import_control_vector
from sadi.steerers.artifacts import saved_dir
from sadi.steerers.base import Steerer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sadi control-vector", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="a run's steerer (CAA, SAS decoder) -> GGUF control vector")
    e.add_argument("steerer", help="a run directory or its steerer/")
    e.add_argument("out", help="the .gguf file to write")
    e.add_argument("--model-hint", help="llama.cpp architecture name (default: the model's)")
    i = sub.add_parser("import", help="GGUF control vector -> a saved CAA steerer")
    i.add_argument("file", help="the control vector .gguf (repeng's, cvector-generator's, sadi's)")
    i.add_argument("out", help="the directory to save the CAA steerer in")
    i.add_argument("--model", default=DEFAULT_MODEL, help=f"the model (default {DEFAULT_MODEL})")
    i.add_argument("--layer", type=int, help="the layer to steer (files with several layers)")
    i.add_argument("--scale", type=float, default=1.0, help="the multiplier (default 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "export":
            path = saved_dir(args.steerer)
            if path is None:
                raise UserError(f"{args.steerer} holds no steerer (no steerer.json)")
            out = export_control_vector(Steerer.load(path), args.out, args.model_hint)
            print(f"control vector: {out} (llama-server --control-vector {out})")
        else:
            model, _ = load_model(args.model)
            caa = import_control_vector(args.file, model, layer=args.layer, scale=args.scale)
            out = caa.save(args.out)
            print(f"CAA steerer (layer {caa.layer}, multiplier {caa.multiplier}): {out}")
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"sadi control-vector: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
