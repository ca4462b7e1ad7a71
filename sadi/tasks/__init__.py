"""Public import path of `sadi.data.tasks` (`from sadi.tasks import load_task`)."""

from sadi.data.tasks import *  # noqa: F403
from sadi.data.tasks import __all__  # noqa: F401
