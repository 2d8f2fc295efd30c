"""How well AtP ranks the grid: rank correlations against the exact patch, and where it fails.

Spearman's rank correlation (Pearson's on average ranks, ties shared) of the AtP estimate
against the exact mean change of the same logit difference (``delta``: is the linearisation
right?) and against the exact IIA (is it a usable screen?), over the whole grid and within each
layer (across positions), each position (across layers) and each third of the depth. A *hit* is
a cell whose exact IIA is at least the no-op plus :data:`HIT_MARGIN`; ``recall`` is the share of
hits among AtP's top quarter of cells (what a screen that trusted AtP would keep). Pure pandas.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

HIT_MARGIN = 0.1  # exact IIA this far above the no-op: a site worth training (issue 28's recall criterion)
KEEP_FRACTION = 0.25  # AtP's kept share of cells for the recall figure


def spearman(a, b) -> float | None:
    """Spearman's rho of two equal-length sequences (None when fewer than 3 pairs or one is constant)."""
    df = pd.DataFrame({"a": a, "b": b}).astype(float).dropna()
    if len(df) < 3:
        return None
    ra, rb = df["a"].rank(), df["b"].rank()
    if ra.std() == 0 or rb.std() == 0:
        return None
    rho = float(np.corrcoef(ra, rb)[0, 1])
    return rho if math.isfinite(rho) else None


def _r(v):
    return None if v is None else round(v, 4)


def compare(grid: pd.DataFrame, null: float) -> dict[str, Any]:
    """AtP against the exact patch on ``grid`` (cells that have both); ``null``: the no-op IIA."""
    g = grid.dropna(subset=["atp", "iia"]).copy()
    out: dict[str, Any] = {"cells": len(g), "hit_margin": HIT_MARGIN}
    if g.empty:
        return out
    out["spearman_delta"] = _r(spearman(g["atp"], g["delta"]))
    out["spearman_iia"] = _r(spearman(g["atp"], g["iia"]))
    out["spearman_delta_vs_iia"] = _r(spearman(g["delta"], g["iia"]))
    out["by_layer"] = {str(l): _r(spearman(d["atp"], d["delta"])) for l, d in g.groupby("layer")}
    out["by_position"] = {str(p): _r(spearman(d["atp"], d["delta"])) for p, d in g.groupby("position", sort=False)}
    layers = sorted(g["layer"].unique())
    thirds = np.array_split(np.array(layers), 3) if len(layers) >= 3 else [np.array(layers)]
    out["by_depth"] = [{"layers": f"{int(t[0])}-{int(t[-1])}",
                        "spearman_delta": _r(spearman(*g[g["layer"].isin(t)][["atp", "delta"]].T.values)),
                        "spearman_iia": _r(spearman(*g[g["layer"].isin(t)][["atp", "iia"]].T.values))}
                       for t in thirds if len(t)]
    hits = g[g["iia"] >= null + HIT_MARGIN]
    keep = max(1, math.ceil(KEEP_FRACTION * len(g)))
    kept = set(g.sort_values("atp", ascending=False).head(keep).index)
    out["hits"] = len(hits)
    out["recall"] = _r(sum(i in kept for i in hits.index) / len(hits)) if len(hits) else None
    out["kept"] = keep
    g["rank_exact"] = g["delta"].rank(ascending=False)
    g["rank_atp"] = g["atp"].rank(ascending=False)
    worst = g.assign(gap=g["rank_atp"] - g["rank_exact"]).sort_values("gap", ascending=False).head(5)
    out["worst"] = [{"layer": int(r.layer), "position": str(r.position), "iia": _r(float(r.iia)),
                     "delta": _r(float(r.delta)), "atp": _r(float(r.atp)),
                     "rank_exact": int(r.rank_exact), "rank_atp": int(r.rank_atp)} for r in worst.itertuples()]
    big = g[g["delta"].abs() >= 0.5]
    out["atp_over_delta_median"] = _r(float((big["atp"] / big["delta"]).median())) if len(big) else None
    return out


def describe(meta: dict[str, Any]) -> list[str]:
    """Sentences on AtP against the exact grid (the CLI prints them, docs quote them)."""
    c = meta.get("compare") or {}
    if not c.get("cells"):
        return ["AtP vs exact: not compared (one of them was not computed)"]
    lines = [f"AtP vs exact over {c['cells']} cells: Spearman {c['spearman_delta']} against the exact logit-difference "
             f"change, {c['spearman_iia']} against exact IIA"]
    parts = [f"layers {d['layers']}: {d['spearman_delta']}" for d in c.get("by_depth", [])]
    if parts:
        lines.append("by depth (vs exact change): " + "; ".join(parts))
    if c.get("hits"):
        lines.append(f"{c['hits']} cells beat the no-op by {c['hit_margin']}; AtP's top {c['kept']} cells hold "
                     f"{c['recall']:.0%} of them")
    if c.get("atp_over_delta_median") is not None:
        lines.append(f"median AtP / exact change where |exact| >= 0.5 logits: {c['atp_over_delta_median']}")
    return lines
