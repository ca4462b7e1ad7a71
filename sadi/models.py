"""Public import path of `sadi.core.models` (`from sadi.models import load_model`)."""

from sadi.core.models import *  # noqa: F403
from sadi.core.models import __all__  # noqa: F401
