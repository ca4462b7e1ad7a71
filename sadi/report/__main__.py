"""`python -m sadi.report DIR... [--out report]`: see the package docstring."""

from sadi.errors import reported
from sadi.report import main

with reported("sadi.report"):
    raise SystemExit(main())
