"""Every in-page link of the README (`[text](#anchor)`) names one of its headings, as GitHub
makes their anchors: a heading renamed without its links fails here, not a reader's click."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_in_page_link_names_a_heading() -> None:
    text = README.read_text()
    body = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no headings or links
    headings = {anchor(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", body)}
    links = set(re.findall(r"\]\(#([^)]+)\)", body))
    assert links, "no in-page link found: the pattern is wrong"
    assert sorted(links - headings) == []
