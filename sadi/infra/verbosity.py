"""How much the libraries under a run say: quiet by default, everything with verbose=true.

lm-eval, datasets, transformers and W&B log at INFO/WARNING on every evaluation (a dozen
lines per split, e.g. "Passed an already-initialized model"), which buries the results
table. By default they are cut to errors and their per-call progress bars are hidden; sadi's
own progress bars (`progress=true`) and warnings stay.
"""

from __future__ import annotations

import logging
import os

CHATTY = ("lm_eval", "lm-eval", "datasets", "transformers", "wandb", "accelerate", "absl")


def set_verbosity(verbose: bool) -> None:
    """Quiet (verbose=False) or restore (True) the libraries' loggers and progress bars."""
    level = logging.NOTSET if verbose else logging.ERROR
    for name in CHATTY:
        logging.getLogger(name).setLevel(level)
    os.environ["WANDB_SILENT"] = "false" if verbose else "true"
    try:
        import datasets

        if verbose:
            datasets.enable_progress_bars()
        else:
            datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity(logging.WARNING if verbose else logging.ERROR)
    if verbose:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


def console_notes(level: int = logging.INFO) -> None:
    """Show sadi's log notes as plain lines on stderr, for the command lines that run outside
    Hydra (which configures its own); a no-op where the `sadi` logger has a handler."""
    logger = logging.getLogger("sadi")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


__all__ = ["console_notes", "set_verbosity"]
