"""`python -m sadi.report DIR... [--out report]`: see the package docstring."""

from sadi.infra.errors import reported
from sadi.report import main

with reported("sadi.report"):
    raise SystemExit(main())
