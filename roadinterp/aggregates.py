"""MIB's aggregates: per layer the best position, then the mean and the max over layers.

The causal-variable track of MIB (the Mechanistic Interpretability Benchmark) reports a
method on one task x model x variable in three steps: IIA per (layer, position), averaged
over its counterfactual test sets; per layer, the *best position*; over layers, the
**mean** (the number in the paper's table) and the **max**. A scan here gives each cell
(family, layer, component, position, size) its mean IIA over seeds on one held-out set
(:func:`roadinterp.summary.summarize`); grouped by (family, component, size), those cells
go through MIB's last two steps.

The same two steps are applied to every score and control of :data:`METRICS`: IIA over the
task's answers and over the full vocabulary (MIB's own reading), the no-op baseline, the
whole-site patch and the random-init model. Each control picks *its own* best position per
layer, the same optimistic choice the method gets, so a method's mean over layers is read
against controls aggregated the same way (the site patch reaches 1.00 at late layers of many
tasks: a best layer alone is a weak claim). The variable is the run's (run.json's
``variables``; all of the task's when unset): one run aligns one set of variables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METRICS: dict[str, str] = {  # summary column stem -> what it is (a column of results.csv)
    "iia": "IIA", "iia_vocab": "full-vocabulary IIA", "iia_null": "no-op baseline",
    "iia_site_patch": "whole-site patch", "iia_random_model": "random-init model"}
GROUP: tuple[str, ...] = ("family", "component", "size")  # one aggregate per group (positions and layers inside)
FILE = "aggregates.json"  # results.csv's companion in a run directory
PROTOCOL = ("MIB causal-variable track: per (layer, position) the mean IIA over seeds; per layer the best "
            "position; then the mean and the max over layers. Every control is aggregated the same way, "
            "choosing its own best position per layer.")


def _metrics(summary: pd.DataFrame) -> list[str]:
    return [m for m in METRICS if f"{m}_mean" in summary and pd.to_numeric(summary[f"{m}_mean"], errors="coerce")
            .notna().any()]


def _label(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def position_order(labels) -> list[str]:
    """Positions in the order tables and heat maps show them (and ties go to): sorted, ``last`` last."""
    return sorted(dict.fromkeys(labels), key=lambda p: (p == "last", p))


def per_layer(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (family, component, size, layer): each metric's best value over positions (``iia``, ...)
    and the position that reaches it (``iia_position``, ...); ``positions``: how many were scanned.

    ``summary`` is :func:`roadinterp.summary.summarize`'s table (cell means over seeds). Ties go to
    the first position of :func:`position_order`."""
    metrics = _metrics(summary) if not summary.empty else []
    if not metrics:
        return pd.DataFrame()
    s = summary.copy()
    s["position"] = s["position"].map(_label)
    s["layer"] = s["layer"].astype(int)
    out = []
    order = {p: i for i, p in enumerate(position_order(s["position"]))}
    for key, g in s.groupby([*GROUP, "layer"], sort=True):
        g = g.iloc[sorted(range(len(g)), key=lambda i: order[g["position"].iloc[i]])]
        row = dict(zip([*GROUP, "layer"], key))
        row["positions"] = int(g["position"].nunique())
        row["seeds"] = int(g["n_seeds"].min()) if "n_seeds" in g else None
        for m in metrics:
            v = pd.to_numeric(g[f"{m}_mean"], errors="coerce").to_numpy(dtype=float)
            if (v == v).any():
                i = int(np.nanargmax(v))  # the first maximum in position order
                row[m], row[f"{m}_position"] = float(v[i]), g["position"].iloc[i]
            else:
                row[m], row[f"{m}_position"] = math.nan, None
        out.append(row)
    return pd.DataFrame(out)


def over_layers(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (family, component, size): MIB's two aggregates of every metric, ``<m>_layer_mean`` and
    ``<m>_layer_max``, from :func:`per_layer`; ``best_layer`` / ``best_position`` where IIA peaks,
    ``layers`` and ``positions`` scanned. Best mean IIA over layers first."""
    layers = per_layer(summary)
    if layers.empty:
        return layers
    metrics = [m for m in METRICS if m in layers]
    out = []
    for key, g in layers.groupby(list(GROUP), sort=False):
        row = dict(zip(GROUP, key))
        row["layers"], row["positions"] = int(len(g)), int(g["positions"].max())
        row["seeds"] = None if g["seeds"].isna().all() else int(g["seeds"].min())
        for m in metrics:
            v = g[m].astype(float)
            row[f"{m}_layer_mean"] = float(v.mean()) if v.notna().any() else math.nan
            row[f"{m}_layer_max"] = float(v.max()) if v.notna().any() else math.nan
        best = g.loc[g["iia"].astype(float).idxmax()]
        row["best_layer"], row["best_position"] = int(best["layer"]), best["iia_position"]
        out.append(row)
    return pd.DataFrame(out).sort_values("iia_layer_mean", ascending=False, kind="stable").reset_index(drop=True)


def _finite(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def aggregates_json(summary: pd.DataFrame, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON form (``aggregates.json``): the protocol, the run's task, model and variables, and per
    group MIB's mean and max over layers of every metric, its best cell and the best position per layer."""
    config = config or {}
    layers, overall = per_layer(summary), over_layers(summary)
    groups = []
    for _, r in overall.iterrows():
        g = layers[(layers[list(GROUP)] == pd.Series({k: r[k] for k in GROUP})).all(axis=1)]
        metrics = [m for m in METRICS if m in layers]
        groups.append({
            **{k: (int(r[k]) if k == "size" else r[k]) for k in GROUP},
            "layers": int(r["layers"]), "positions": int(r["positions"]), "seeds": r["seeds"],
            "mean_over_layers": {m: _finite(r[f"{m}_layer_mean"]) for m in metrics},
            "max_over_layers": {m: _finite(r[f"{m}_layer_max"]) for m in metrics},
            "best": {"layer": int(r["best_layer"]), "position": r["best_position"],
                     "iia": _finite(r["iia_layer_max"])},
            "per_layer": [{"layer": int(x["layer"]),
                           **{m: {"value": _finite(x[m]), "position": x[f"{m}_position"]} for m in metrics}}
                          for _, x in g.iterrows()],
        })
    return {"protocol": PROTOCOL, "task": config.get("task"), "model": config.get("model"),
            "variables": config.get("variables"), "metrics": {m: METRICS[m] for m in _metrics(summary)},
            "groups": groups}


def write_aggregates(run_dir: str | os.PathLike, table: pd.DataFrame, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``aggregates.json`` beside results.csv from a results table (one row per cell and seed)."""
    import json

    from roadinterp.io import write_text_atomic
    from roadinterp.summary import summarize

    path = Path(run_dir) / FILE
    summary = summarize(table) if not table.empty else table
    return write_text_atomic(path, json.dumps(aggregates_json(summary, config), indent=1, default=str) + "\n")


def groups(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The (family, component, size) groups of a summary that scanned more than one (layer, position)."""
    agg = over_layers(summary)
    if agg.empty:
        return []
    agg = agg[agg["layers"] * agg["positions"] >= 2]
    return [{k: r[k] for k in GROUP} for _, r in agg.iterrows()]


def layer_position_grid(summary: pd.DataFrame, *, family: str, component: str, size: int) -> dict[str, pd.DataFrame]:
    """Per metric present: its mean over seeds on a layers (rows) x positions (columns) frame, for one group;
    what the layer x position heat maps draw (plotly and matplotlib alike)."""
    s = summary[(summary["family"] == family) & (summary["component"] == component) & (summary["size"] == size)]
    s = s.assign(position=s["position"].map(_label), layer=s["layer"].astype(int))
    positions = position_order(s["position"])
    out = {}
    for m in _metrics(s):
        frame = s.pivot_table(index="layer", columns="position", values=f"{m}_mean", aggfunc="first")
        out[m] = frame.reindex(columns=positions).sort_index()
    return out
