"""What every report figure shares: a `Chart` (a figure and its caption in words), titles
wrapped to the figure's width, the caption saved in the PNG and read back, file-name slugs.

The caption travels inside the PNG (its `Description` text chunk), so the HTML, the
Markdown alt text and anyone opening the file alone read the same words.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # no pyplot: no global state; PNGs render with Agg
from matplotlib.text import Text
from PIL import Image

CAPTION_KEY = "Description"  # the PNG text chunk holding a figure's caption
DPI = 120


@dataclass(frozen=True)
class Chart:
    """A finished figure (titles fitted, laid out) and what it shows, in words."""

    figure: Figure
    caption: str


def _titles(fig: Figure) -> list[Text]:
    """The axes titles and the figure's own texts (the suptitle)."""
    titles = [ax.title for ax in fig.axes if ax.title.get_text()]
    return titles + [t for t in fig.texts if t.get_text()]


def _layout(fig: Figure, tight: bool) -> None:
    if not tight:  # a constrained layout is computed when drawn
        fig.draw_without_rendering()
        return
    with warnings.catch_warnings():  # a title still too wide: fitted below, laid out again
        warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
        fig.tight_layout()


def fit_titles(fig: Figure, tight: bool = True) -> Figure:
    """Lay `fig` out and wrap every title that sticks out of the figure, measured with Agg,
    to lines as long as fit (a title is centred: its room is twice the distance from its
    centre to the nearer edge). `tight`: lay out with `tight_layout`; False for a figure
    with a constrained layout (a colorbar shared by two axes)."""
    FigureCanvasAgg(fig)
    _layout(fig, tight)
    for _ in range(8):
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        wide = False
        for t in _titles(fig):
            box = t.get_window_extent(renderer)
            if box.x0 >= 0 and box.x1 <= fig.bbox.x1:
                continue
            centre = (box.x0 + box.x1) / 2
            room = 2 * min(centre, fig.bbox.x1 - centre) - 12  # a few pixels of margin
            longest = max(len(line) for line in t.get_text().split("\n"))
            chars = max(8, min(longest - 1, int(longest * room / box.width)))
            t.set_text(textwrap.fill(" ".join(t.get_text().split()), chars))
            wide = True
        if not wide:
            break
        _layout(fig, tight)
    return fig


def save(chart: Chart, path: str | Path, dpi: int = DPI) -> Path:
    """Write the chart's PNG with its caption inside (see the module docstring)."""
    chart.figure.savefig(path, dpi=dpi, metadata={CAPTION_KEY: chart.caption})
    return Path(path)


def caption(path: str | Path) -> str:
    """The caption a PNG written by `save` holds.

    Raises:
        ValueError: the PNG holds none (not drawn by sadi.report).
    """
    with Image.open(path) as image:
        text = getattr(image, "text", {}).get(CAPTION_KEY, "")
    if not text:
        raise ValueError(
            f"{path}: the PNG holds no caption (no {CAPTION_KEY!r} text chunk); draw it with "
            "sadi.report's plot functions (python -m sadi.report), which write one"
        )
    return str(text)


def alt_text(path: str | Path) -> str:
    """The PNG's caption as the text of a Markdown image: its square brackets (a task's
    "[data ...]" tag) made round, which no Markdown reader takes for the image's end."""
    return caption(path).replace("[", "(").replace("]", ")")


def slug(s: str) -> str:
    """`s` as a file-name part: runs of other characters than [A-Za-z0-9_.-] become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)
