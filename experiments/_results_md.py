"""Shared helpers of the experiments: one ``## `` section of a markdown results file replaced
atomically, JSON without NaN/inf, and mean ± std over seeds."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path


def finite_json(x):
    """NaN/inf (not measured) -> None, recursively, so the JSON is standard."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    return x


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample std over seeds, ignoring scores not measured (None/NaN); (None, None) if none was."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return None, None
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def cell_text(mean: float | None, std: float | None) -> str:
    """``0.792 ± 0.020``, or ``-`` for a score that was not measured."""
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


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
