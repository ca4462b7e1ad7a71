"""Public import path of `sadi.data.pairs` (`from sadi.pairs import make_pairs`)."""

from sadi.data.pairs import *  # noqa: F403
from sadi.data.pairs import __all__  # noqa: F401
