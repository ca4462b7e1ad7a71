"""The `sadi` command: `sadi serve ...` (an OpenAI-compatible server of steered models) and
`sadi control-vector ...` (llama.cpp control vectors); `python -m sadi.run` runs studies."""

from __future__ import annotations

import sys

COMMANDS = {
    "serve": "sadi.serve.__main__",
    "control-vector": "sadi.llamacpp.__main__",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(
            f"usage: sadi {{{','.join(COMMANDS)}}} ... (sadi COMMAND --help); runs and sweeps: "
            "python -m sadi.run",
            file=sys.stderr,
        )
        return 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
