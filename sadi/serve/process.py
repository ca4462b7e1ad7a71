"""`sadi serve` as a background process: started, waited for until it listens, stopped
(the judged study serves its judge this way; the tests serve theirs)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

LISTENING = re.compile(r" on (http://[\d.]+:\d+)/v1")


class ServerError(RuntimeError):
    """The server exited or did not listen in time; the message ends with its last output."""


@contextmanager
def serving(python: str, *args: str, timeout: float = 300) -> Iterator[str]:
    """`python -m sadi.serve ARGS --port 0` (a free port), as a user would start it; yields
    its base URL (http://127.0.0.1:PORT; the API is below /v1) once it listens, and stops
    it on exit."""
    proc = subprocess.Popen(
        [python, "-m", "sadi.serve", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise ServerError("sadi serve exited:\n" + "".join(lines[-40:]))
            lines.append(line)
            match = LISTENING.search(line)
            if match:
                # keep reading its output so it never blocks on a full pipe
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                yield match.group(1)
                return
        raise ServerError(
            f"sadi serve did not listen within {timeout:.0f} s:\n" + "".join(lines[-40:])
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


__all__ = ["ServerError", "serving"]
