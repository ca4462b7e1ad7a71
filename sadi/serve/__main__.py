"""`sadi serve` / `python -m sadi.serve`: serve a steered model over HTTP (OpenAI-compatible).

    sadi serve --steerer caa=outputs/runs/<run> --steerer sadi=outputs/runs/<other> --port 8000

Each `--steerer NAME=DIR` is a run directory (or its `steerer/`); the model is the runs'
(`model.source` in results.json) unless `--model` says otherwise, and every steerer must
have been fitted on it. vLLM generates where it is installed (`--backend auto`), checked at
start against the HF model by the self-test; the HF model otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Any

from sadi.core.fingerprints import weights_fingerprint
from sadi.core.models import DEFAULT_MODEL, load_model, model_path
from sadi.infra.errors import UserError
from sadi.serve.app import ServedModel, make_server
from sadi.serve.generators import Generator, HFGenerator, VLLMGenerator
from sadi.steerers.artifacts import saved_dir
from sadi.steerers.base import Steerer

log = logging.getLogger("sadi.serve")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sadi serve", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steerer",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a steerer to serve under NAME: a run directory or its steerer/ (repeat)",
    )
    p.add_argument(
        "--model", help=f"model source (default: the runs' model.source, else {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: the runs')"
    )
    p.add_argument(
        "--device", default=None, help="the HF model's device (default: CUDA if present)"
    )
    p.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto")
    p.add_argument("--name", help="the model id clients send (default: the model's name)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-mb", type=int, default=1024)
    p.add_argument(
        "--no-self-test",
        action="store_true",
        help="vLLM: skip comparing each steerer's log-probs with the HF backend",
    )
    return p.parse_args(argv)


def steerer_dirs(specs: list[str]) -> dict[str, Path]:
    """NAME=DIR pairs -> name: the directory holding steerer.json."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory or ":" in name:
            raise UserError(f"--steerer {spec!r}: write NAME=DIR (a name without ':')")
        if name in out:
            raise UserError(f"--steerer {name!r} is given twice")
        path = saved_dir(directory)
        if path is None:
            raise UserError(
                f"--steerer {spec!r}: {directory} holds no steerer (no steerer.json there or in "
                "its steerer/); give a run directory of a steered run"
            )
        out[name] = path
    return out


def run_model(dirs: dict[str, Path]) -> tuple[str | None, str | None]:
    """(model.source, model.dtype) of the runs the steerers come from, if they say."""
    for path in dirs.values():
        results = path.parent / "results.json"
        if results.exists():
            model = json.loads(results.read_text()).get("config", {}).get("model", {})
            return model.get("source"), model.get("dtype")
    return None, None


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def build(args: argparse.Namespace) -> ServedModel:
    dirs = steerer_dirs(args.steerer)
    source, dtype = run_model(dirs)
    source = args.model or source or DEFAULT_MODEL
    dtype = args.dtype or dtype or "float32"
    model, tokenizer = load_model(source, dtype=dtype, device=args.device)
    steerers = {name: Steerer.load(path, model) for name, path in dirs.items()}
    info = {
        name: {
            "method": st.method,
            "component": st.component,
            "params": st.params(),
            "directory": str(dirs[name]),
        }
        for name, st in steerers.items()
    }
    backend = args.backend
    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
    generator: Generator
    if backend == "vllm":
        from sadi.vllm.engine import SteeredVLLM, VLLMSettings

        settings = VLLMSettings(max_model_len=args.max_model_len, kv_cache_mb=args.kv_cache_mb)
        engine = SteeredVLLM(model_path(source), weights_fingerprint(model), dtype, settings)
        if not args.no_self_test:
            engine.self_test(None, None, model, tokenizer)
        for name, st in steerers.items():
            engine.install(name, st)
            if not args.no_self_test:
                engine.self_test(name, st, model, tokenizer)
        generator = VLLMGenerator(engine)
        del model  # vLLM holds its own copy of the weights
    else:
        generator = HFGenerator(model, tokenizer, steerers)
    name = args.name or source.split(":")[-1].rstrip("/").split("/")[-1]
    return ServedModel(name=name, generator=generator, tokenizer=tokenizer, steerers=info)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            log.warning(
                "binding %s: every machine that reaches it can use the model; the server has "
                "no authentication",
                args.host,
            )
    except ValueError:
        print(f"sadi serve: --host {args.host!r} is not an IP address", file=sys.stderr)
        return 2
    try:
        served = build(args)
    except (UserError, FileNotFoundError, ValueError) as err:
        print(f"sadi serve: {err}", file=sys.stderr)
        return 2
    server = make_server(served, args.host, args.port)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    steerers = ", ".join(served.steerers) or "none"
    print(
        f"sadi serve: {served.name} ({served.generator.backend}; steerers: {steerers}) on "
        f"http://{host}:{port}/v1",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _cli() -> Any:
    raise SystemExit(main())


if __name__ == "__main__":
    _cli()
