"""`sadi-lm-eval`: lm-eval's own command line with sadi's model `sadi` registered, its help
prefaced by sadi's, `sadi-lm-eval tasks export DIR` (`sadi.eval.export`), and nothing it
reads unpickled with code."""

from __future__ import annotations

import argparse
import fractions
import io
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import sadi.eval.lm  # noqa: F401  (registers the `sadi` model with lm-eval)
from sadi.infra.errors import UserError, reported

SADI_HELP = """\
sadi: this is lm-eval's CLI with sadi's model `sadi` registered (HFLM + a fitted steerer).
  Steer with a saved steerer (the directory Steerer.save or `python -m sadi.run` wrote,
  <run dir>/steerer); pretrained= takes embedded:<name>, a model directory or a hub id;
  without steerer= the model runs unsteered:
    sadi-lm-eval run --model sadi --tasks <task> \\
      --model_args pretrained=embedded:smollm2-135m-instruct,steerer=DIR
  Add allow_other_weights=true to --model_args to accept a steerer fitted on other weights
  of the same shape (e.g. the base model of a chat model); it is refused otherwise.
  sadi's tasks as lm-eval task YAMLs + data, offline, scored as `python -m sadi.run` does:
    sadi-lm-eval tasks export DIR [--tasks copa sst2] [--splits select report]
                                  [--format lm_eval|ab] [--data-dir D] [--limit N]
    sadi-lm-eval run --model sadi --include_path DIR --tasks sadi_copa_report ...
  (names sadi_<task>_<split>, tags sadi_select / sadi_report; see
  `sadi-lm-eval tasks export --help`)"""


def _with_sadi_help(harness: Any) -> bool:
    """Preface the main and `run` help of lm-eval's `HarnessCLI` with `SADI_HELP`.

    Returns False when this lm-eval's CLI is not built as 0.4.13's is (then nothing changed).
    """
    main = getattr(harness, "_parser", None)
    commands = getattr(harness, "_subparsers", None)
    run = getattr(commands, "choices", {}).get("run")
    if not isinstance(main, argparse.ArgumentParser) or not isinstance(
        run, argparse.ArgumentParser
    ):
        return False
    main.prog, run.prog = "sadi-lm-eval", "sadi-lm-eval run"
    for parser in (main, run):
        parser.description = f"{parser.description}\n\n{SADI_HELP}"
    return True


# lm-eval options that read pickles back (a response database and a request cache): sadi's
# command line never unpickles, so it refuses them
PICKLE_OPTIONS = {
    "--use_cache": "lm-eval's response cache is a pickle database (sqlitedict)",
    "--cache_requests": "lm-eval's request cache is stored with dill",
}
DEFAULT_BATCH_SIZE = "16"  # sadi's own default (model.batch_size); lm-eval's CLI takes 1


class UnsafeLoadError(UserError):
    """sadi-lm-eval was asked to unpickle a file that holds more than tensors and plain data."""


def _refuse_pickles(args: list[str]) -> None:
    """Make every `torch.load` of this process load tensors and plain containers only
    (TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides even an explicit weights_only=False, as
    lm-eval's `steered` model passes), check that this torch honours it, and refuse the
    options that read pickles back."""
    for option, why in PICKLE_OPTIONS.items():
        if any(a == option or a.startswith(option + "=") for a in args):
            raise UnsafeLoadError(
                f"{option}: {why}, and unpickling runs whatever code the file holds; "
                f"sadi-lm-eval refuses it. Drop {option} (sadi caches scores itself: "
                "python -m sadi.run), or use lm-eval's own `lm_eval` command if you trust "
                "the cache file"
            )
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    probe = io.BytesIO()
    torch.save(fractions.Fraction(1, 2), probe)  # a harmless global outside the allow-list
    probe.seek(0)
    try:
        torch.load(probe, weights_only=False)
    except pickle.UnpicklingError:
        return  # refused, as it must be
    raise UnsafeLoadError(
        f"torch {torch.__version__} did not honour TORCH_FORCE_WEIGHTS_ONLY_LOAD, so "
        "sadi-lm-eval cannot guarantee that no file it reads runs pickled code; use "
        "`--model sadi` with a steerer directory (safetensors), or the torch pinned in "
        "constraints.txt"
    )


def _model_arg(args: list[str], key: str) -> str | None:
    """`key`'s value in a `--model_args k=v,...` string, if given that way."""
    for i, a in enumerate(args):
        value = a.split("=", 1)[1] if a.startswith("--model_args=") else None
        if a == "--model_args" and i + 1 < len(args):
            value = args[i + 1]
        for part in (value or "").split(","):
            name, sep, v = part.partition("=")
            if sep and name.strip() == key:
                return v.strip()
    return None


def _with_batch_size(args: list[str]) -> list[str]:
    """`args` with sadi's batch size when `run` was given none (lm-eval would take 1)."""
    if args[:1] != ["run"] or any(
        a in ("-b", "--batch_size") or a.startswith("--batch_size=") for a in args
    ):
        return args
    config = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"), None)
    if config is not None:
        import yaml

        try:
            given = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError):
            given = {}  # lm-eval reports a bad config file itself
        if isinstance(given, dict) and "batch_size" in given:
            return args
    print(
        f"sadi-lm-eval: no --batch_size given: using {DEFAULT_BATCH_SIZE} (sadi's default; "
        "lm-eval's would be 1); pass --batch_size N or auto to choose",
        file=sys.stderr,
    )
    return [*args, "--batch_size", DEFAULT_BATCH_SIZE]


def cli(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line with the `sadi` model registered, its help prefaced by
    `SADI_HELP`, and `sadi-lm-eval tasks export DIR [options]` (`sadi.eval.export.main`).

    Nothing it reads is unpickled with code: every `torch.load` loads tensors and plain
    containers only (lm-eval's `steered` model included), and the options that read pickle
    caches are refused. `run` without `--batch_size` takes sadi's 16, not lm-eval's 1.
    A user error prints one line (`SADI_VERBOSE=1` for the traceback).

    Args:
        argv: the arguments after the program name; default `sys.argv[1:]`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    with reported("sadi-lm-eval"):
        if args[:1] == ["tasks"]:
            from sadi.eval.export import main

            main(args[1:], prog="sadi-lm-eval tasks")
            return
        _refuse_pickles(args)
        args = _with_batch_size(args)
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging

        # as lm_eval.__main__.cli_evaluate, which reads sys.argv
        setup_logging()
        sys.argv = [sys.argv[0] if sys.argv else "sadi-lm-eval", *args]
        harness = HarnessCLI()
        if not _with_sadi_help(harness) and {"-h", "--help"} & set(args):
            print(SADI_HELP + "\n")
        try:
            harness.execute(harness.parse_args())
        except pickle.UnpicklingError as err:
            steer = _model_arg(args, "steer_path")
            what = f"steer_path={steer}" if steer else "a file it was given"
            first = (str(err).splitlines() or [""])[0]
            raise UnsafeLoadError(
                f"refused to load {what}: it holds objects other than tensors and plain "
                "containers, which unpickling would run as code. Write steering vectors with "
                "tensors, floats, strings and None only (sadi.eval.interop.export_lm_eval_steer "
                f"does), or steer with --model sadi and a saved steerer ({first})"
            ) from err
