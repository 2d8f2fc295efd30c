"""The HTML pieces every roadinterp page is built from: escaping, numbers, data tables, collapsed tables.

Pages (:mod:`roadinterp.viz.report`, :mod:`roadinterp.viz.adapter_report`) and their sections
(:mod:`roadinterp.viz.mib`) share these, so a table looks and escapes the same everywhere: every
value from a run passes through :func:`_e`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[bool] | None = None,
           row_class: Sequence[str] | None = None) -> str:
    numeric = numeric or [False] * len(header)
    out = ['<table class="data"><thead><tr>', *(f"<th>{_e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{_e(row_class[i])}"' if row_class and row_class[i] else ""
        out.append(f"<tr{cls}>")
        out.extend(f'<td class="num">{_e(c)}</td>' if n else f"<td>{_e(c)}</td>" for c, n in zip(row, numeric))
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


SHOWN_ROWS = 25  # longer tables (a 30-layer scan) show their first rows; the rest is one click away


def _collapsed(frame: pd.DataFrame, render, what: str) -> str:
    """``render(frame)``, or its first SHOWN_ROWS rows and the whole table in a closed <details>."""
    if len(frame) <= SHOWN_ROWS:
        return render(frame)
    return (render(frame.head(SHOWN_ROWS))
            + f"<details><summary>all {len(frame)} {_e(what)}</summary>{render(frame)}</details>")
