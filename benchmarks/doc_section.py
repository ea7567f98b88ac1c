"""A benchmark owns one marked section of a Markdown file and rewrites only that, so several benchmarks can share
a page (docs/int-benchmarks.md) without erasing each other's tables or the prose around them.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "doc.md"
    >>> _ = p.write_text("# Title\\n\\nprose\\n")
    >>> replace_section(p, "peer", "table 1")
    >>> replace_section(p, "peer", "table 2")
    >>> print(p.read_text())
    # Title
    <BLANKLINE>
    prose
    <BLANKLINE>
    <!-- peer:begin -->
    table 2
    <!-- peer:end -->
    <BLANKLINE>
"""
from __future__ import annotations

import os
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(path: Path, name: str, body: str) -> None:
    """Put `body` between the `name` markers of `path`, replacing what was there; append the section when the
    file (or the markers) is absent."""
    begin, end = markers(name)
    replace_between(path, begin, end, f"{begin}\n{body.strip()}\n{end}")


def section_of(path: Path, begin: str, end: str) -> str:
    """The text from `begin` to `end` in `path` ('' when the file or a marker is missing)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if begin not in text or end not in text:
        return ""
    return begin + text.split(begin, 1)[1].split(end, 1)[0] + end


def replace_between(path: Path, begin: str, end: str, section: str) -> None:
    """Replace the text from `begin` to `end` (both included) with `section`, which carries the two markers
    itself; append it when the file or a marker is absent. Written to a temporary file and renamed, so a crash
    leaves the old page."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
