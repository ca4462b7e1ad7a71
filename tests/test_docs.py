"""The documentation: the site builds strictly (no warning, no broken link or anchor, every
API page renders), and every relative link of README.md points to a file of the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# inline links and images: [text](target "title"), ![alt](target)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# reference definitions: [id]: target
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (site / "index.html").is_file()
    # every API page rendered the objects, not an empty page
    for page in ("steerers", "core", "data", "eval", "pipeline", "sweep", "report", "sae"):
        html = (site / "reference" / page / "index.html").read_text(encoding="utf-8")
        assert html.count('class="doc doc-heading"') > 3, page


def relative_links(markdown: str) -> list[str]:
    """The link targets of `markdown` that are paths (not URLs, not bare anchors), outside
    code blocks and code spans, without their #anchor."""
    text = CODE_SPAN.sub("", FENCE.sub("", markdown))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    out = []
    for target in targets:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")):
            continue  # https:, mailto:, an anchor of this page
        out.append(target.split("#", 1)[0].split("?", 1)[0])
    return out


def test_relative_links_of_the_readme_exist() -> None:
    readme = REPO / "README.md"
    links = relative_links(readme.read_text(encoding="utf-8"))
    assert links, "README.md has no relative links (to docs/*.md): the parser missed them"
    for link in links:
        target = (readme.parent / link).resolve()
        assert target.is_relative_to(REPO), f"README.md links outside the repository: {link}"
        assert target.exists(), f"README.md links to {link}, which does not exist"


def test_the_link_parser() -> None:
    md = (
        "[a](docs/a.md#x) ![b](img.png) [c](https://x.org) [d](#here) `[e](no.md)`\n"
        "```\n[f](no.md)\n```\n[g]: docs/g.md\n"
    )
    assert relative_links(md) == ["docs/a.md", "img.png", "docs/g.md"]
