"""`python -m sadi.report DIR... [--out report]`: see the package docstring."""

from sadi.report import main

raise SystemExit(main())
