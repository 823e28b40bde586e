"""Summarise a py-spy ``--format raw`` profile: self and inclusive share per function.

    .venv/bin/python -m bench.pyspy_summary /tmp/b1.raw [--top 30] [--thread MainThread]

Each raw line is ``frame;frame;...;leaf count`` (root first), a frame ``func (file:line)``.
Functions are keyed by ``func (file)`` (lines dropped); inclusive counts a stack once per function
however often it recurses. Idle samples are only present if py-spy recorded with ``--idle``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def _key(frame: str) -> str:
    frame = _LINE.sub(")", frame.strip())
    for marker in ("site-packages/", "/unistock/", "/lib/python3"):
        i = frame.find(marker)
        if i >= 0:
            j = frame.rfind("(", 0, i)
            frame = frame[: j + 1] + frame[i:].removeprefix("site-packages/")
            break
    return frame


def summarise(path: Path, thread: str | None = None) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if thread is not None and thread not in frames[0]:
            continue
        c = int(n)
        total += c
        keys = [_key(f) for f in frames if not f.startswith(("process ", "thread "))]
        if keys:
            self_c[keys[-1]] += c
        for k in set(keys):
            incl[k] += c
    return total, self_c, incl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", type=Path)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--thread", help="only stacks whose first frame contains this")
    a = ap.parse_args()
    total, self_c, incl = summarise(a.raw, a.thread)
    print(f"{total} samples")
    for title, c in (("self", self_c), ("inclusive", incl)):
        print(f"\n-- {title} --")
        for k, n in c.most_common(a.top):
            print(f"{100 * n / total:6.1f}%  {k}")


if __name__ == "__main__":
    main()
