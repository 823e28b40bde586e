"""The fenced code blocks of README.md and docs/*.md, as tests read them.

Each block carries a marker, the HTML comment on the line just before its fence:

- ``<!-- example: NAME -->``: a test runs the block; it gets the block's text with
  ``example("NAME")`` (the text is what runs, never a copy of it);
- ``<!-- not run: REASON -->``: a diagram, an output sample, a deployment command line.

``tests/test_docs.py`` checks that every block has one, that every example's name is asked for
by some test, and that the links between the files resolve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = ROOT / "docs"

#: A marker's form: ``<!-- example: NAME -->`` or ``<!-- not run: REASON -->``.
MARKER = re.compile(
    r"<!-- (?:example: (?P<name>[a-z0-9][a-z0-9-]*)|not run: (?P<reason>\S.*?)) -->"
)
_FENCE = re.compile(r"^(```+)(\S*)\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block: where it is (file, 1-based line of its opening fence), its
    language ("" when the fence names none), its text (every line up to the closing fence,
    each ending in a newline) and the marker line before it ("" when there is none)."""

    path: Path
    line: int
    lang: str
    text: str
    marker: str

    @property
    def name(self) -> str | None:
        """The example's name, or None (not run, or no valid marker)."""
        m = MARKER.fullmatch(self.marker)
        return m["name"] if m else None

    @property
    def where(self) -> str:
        """`docs/cli.md:12`, for messages."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    """README.md and every Markdown file of docs/, in a stable order."""
    return [ROOT / "README.md", *sorted(DOCS_DIR.glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file. Raises ValueError on a fence never closed."""
    lines = path.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, fence = i, m[1]
        i += 1
        while i < len(lines) and lines[i].rstrip() != fence:
            i += 1
        if i == len(lines):
            raise ValueError(f"{path.relative_to(ROOT)}:{start + 1}: the fence is never closed")
        text = "".join(line + "\n" for line in lines[start + 1 : i])
        marker = lines[start - 1].strip() if start > 0 else ""
        found.append(
            Block(path, start + 1, m[2], text, marker if marker.startswith("<!--") else "")
        )
        i += 1
    return found


def all_blocks() -> list[Block]:
    """Every fenced code block of README.md and docs/*.md."""
    return [b for path in doc_files() for b in blocks(path)]


def example(name: str) -> Block:
    """The block marked ``<!-- example: NAME -->``. Raises LookupError when no block or more
    than one has that name (a test then fails, naming it)."""
    found = [b for b in all_blocks() if b.name == name]
    if len(found) != 1:
        raise LookupError(
            f"example {name!r}: {len(found)} blocks marked so ({[b.where for b in found]})"
        )
    return found[0]


def commands(block: Block, prefix: str = "") -> list[str]:
    """The command lines of a shell block, each without its trailing `  # comment`, blank and
    comment-only lines left out; only those starting with prefix when given."""
    lines: list[str] = []
    joined = ""
    for raw in block.text.splitlines():
        line = raw.split("  #")[0].strip()
        if line.startswith("#"):
            continue
        if line.endswith("\\"):  # continued on the next line
            joined += line[:-1]
            continue
        lines.append(joined + line)
        joined = ""
    return [ln for ln in lines if ln and ln.startswith(prefix)]
