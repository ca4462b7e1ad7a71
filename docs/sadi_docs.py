"""Build helpers of the documentation site (not part of the package).

- An MkDocs hook (`hooks:` in mkdocs.yml): puts this folder on `sys.path` at start-up so that
  mkdocstrings can load the griffe extension below by its import path.
- `ExampleSections`, a griffe extension: sadi's docstrings title their doctest sections
  "Example:" (singular). Griffe's Google parser knows only "Examples:" as a section and
  renders "Example:" as an admonition whose `>>>` lines are read as Markdown, where
  `x[0]["id"]` looks like a reference link. Renaming the title before parsing makes those
  lines code, as they are meant to be.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import griffe

HERE = str(Path(__file__).resolve().parent)
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


def on_startup(**kwargs: Any) -> None:
    if HERE not in sys.path:
        sys.path.insert(0, HERE)


class ExampleSections(griffe.Extension):
    """Rename Google-style "Example:" section titles to "Examples:"."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.is_alias or obj.docstring is None:
            return
        value = obj.docstring.value
        if "Example:" in value:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", value)
