"""Shared helper: replace (or append) one ``## `` section of a markdown results file atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path


def write_section(path: str | os.PathLike, heading: str, body: str) -> None:
    """Replace the section whose first line is ``heading`` (up to the next ``## ``), or append it."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Results\n"
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"(?ms)^{re.escape(heading)}\n.*?(?=^## |\Z)")
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
