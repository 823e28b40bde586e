"""The README and docs/ keep their promises about themselves: every fenced code block is run by
a test or says why not (a new, unrun example fails here), and every relative link between the
files, and every anchor, resolves (a heading renamed without its links fails here, not a
reader's click)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.docs import MARKER, ROOT, all_blocks, blocks, commands, doc_files, example

#: Files other branches add (runbook, client library, unistock status, dashboards, alert
#: rules): a link to one resolves once it exists; until then it is accepted without an anchor.
PENDING = {
    "docs/client-library.md",
}


def claimed_in_tests() -> Counter[str]:
    """How often each example name is asked for (`example("NAME")`) in the tests."""
    names: Counter[str] = Counter()
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name in ("docs.py", "test_docs.py"):
            continue
        names.update(re.findall(r"""\bexample\(\s*["']([a-z0-9-]+)["']\s*\)""", path.read_text()))
    return names


def test_every_block_is_run_by_a_test_or_says_why_not() -> None:
    found = all_blocks()
    assert len(found) >= 20, "the block pattern is wrong"
    unmarked = [b.where for b in found if not MARKER.fullmatch(b.marker)]
    assert unmarked == [], (
        "each fenced block needs <!-- example: NAME --> (and a test asking for "
        'tests.docs.example("NAME")) or <!-- not run: REASON --> on the line before it'
    )
    names = Counter(b.name for b in found if b.name)
    assert [n for n, k in names.items() if k > 1] == []
    claimed = claimed_in_tests()
    assert sorted(n for n in names if n not in claimed) == [], "examples no test runs"
    assert sorted(n for n in claimed if n not in names) == [], "tests ask for missing examples"


def test_markers_are_read_as_written(tmp_path: Path) -> None:
    """The parser itself: the marker is the line just before the fence; a block without one,
    or with a marker of another form, has no name."""
    doc = tmp_path / "x.md"
    doc.write_text(
        "<!-- example: a-1 -->\n```sh\necho a  # note\nls \\\n  -l\n```\n\n"
        "text\n```\nplain\n```\n<!-- not run: a sample -->\n````text\n```\n````\n"
        "<!-- example: Bad Name -->\n```\nx\n```\n"
    )
    a, plain, sample, bad = blocks(doc)
    assert (a.name, a.lang, a.line, a.text) == ("a-1", "sh", 2, "echo a  # note\nls \\\n  -l\n")
    assert commands(a) == ["echo a", "ls -l"]
    assert (plain.marker, plain.name) == ("", None)
    assert (sample.name, sample.text) == (None, "```\n")
    assert MARKER.fullmatch(sample.marker)
    assert bad.name is None
    assert not MARKER.fullmatch(bad.marker)
    with pytest.raises(LookupError):
        example("no-such-example")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces
    as hyphens; a repeated heading gets -1, -2...)."""
    body = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    seen: Counter[str] = Counter()
    found = set()
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", body):
        a = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(a if not seen[a] else f"{a}-{seen[a]}")
        seen[a] += 1
    return found


def links(path: Path) -> list[str]:
    """The targets of a Markdown file's links, code blocks and code spans left out."""
    body = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    body = re.sub(r"`[^`\n]*`", "", body)
    return re.findall(r"\]\(([^)\s]+)\)", body)


def broken(path: Path) -> list[str]:
    """The links of path that do not resolve, as `target: why`."""
    bad = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        known = str(dest.relative_to(ROOT)) if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if known.rstrip("/") not in PENDING or anchor:
                bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no such heading in {known}")
    return bad


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(path: Path) -> None:
    assert links(path), "no link found: the pattern is wrong"
    assert broken(path) == []


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# B's title\n\n## Two words\n")
    doc.write_text(
        "# A\n[ok](b.md#two-words) [ok](#a) [bad](b.md#nope) [bad](c.md) [web](https://x.y)\n"
        "`[code](nope.md)`\n```\n[code](nope.md)\n```\n"
    )
    assert broken(doc) == ["b.md#nope: no such heading in " + str(tmp_path / "b.md"),
                           "c.md: no such file"]  # fmt: skip


def test_docs_index_lists_every_docs_file() -> None:
    """docs/README.md names every file of docs/ (and the README links the index)."""
    index = ROOT / "docs" / "README.md"
    listed = {t.partition("#")[0] for t in links(index)}
    assert sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md"
                  and p.name not in listed) == []  # fmt: skip
    assert "docs/README.md" in links(ROOT / "README.md")
