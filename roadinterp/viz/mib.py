"""MIB's view of a scan in the run report: the aggregates table and the layer x position heat maps.

MIB's causal-variable track reads a scan per layer at its *best position* and reports the mean
and the max over layers (:mod:`roadinterp.aggregates`). This module renders that reading for
:mod:`roadinterp.viz.report`: one table row per (family, component, size) with the two aggregates
of IIA and of every control, a per-layer table of the best positions, and per group a heat map
(layers as rows, positions as columns; IIA and each control in its own panel, one 0..1 colour
scale) with a ring on the position each layer keeps. The matplotlib twin of the heat map is
:func:`roadinterp.viz.static.layer_position`. Reads only a results table.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from roadinterp import aggregates as A

PANELS = ("iia", "iia_vocab", "iia_site_patch", "iia_random_model")  # heat-map panels, in order, when present
MAX_GROUPS = 6  # heat maps per report (the aggregates table lists every group)


def _n(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def title(group: dict, summary: pd.DataFrame) -> str:
    agg = A.over_layers(summary)
    r = agg[(agg["family"] == group["family"]) & (agg["component"] == group["component"])
            & (agg["size"] == group["size"])].iloc[0]
    return (f"{group['family']} {group['component']} size {group['size']}: IIA by layer and position; "
            f"best position per layer: mean {r['iia_layer_mean']:.3f} | max {r['iia_layer_max']:.3f} over layers")


def layer_position(table: pd.DataFrame, *, family: str, component: str, size: int) -> go.Figure:
    """Mean IIA over seeds per (layer, position) of one group, a panel per score and control, rings on
    the best position of each layer (the one MIB keeps), each panel by its own values."""
    from roadinterp.summary import summarize

    summary = summarize(table)
    grid = A.layer_position_grid(summary, family=family, component=component, size=size)
    panels = [m for m in PANELS if m in grid]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[A.METRICS[m] for m in panels],
                        shared_yaxes=True, horizontal_spacing=0.04)
    for i, m in enumerate(panels, start=1):
        z = grid[m]
        layers, positions = [str(v) for v in z.index], list(z.columns)
        fig.add_trace(go.Heatmap(z=z.to_numpy(dtype=float), x=positions, y=layers, zmin=0, zmax=1,
                                 colorscale="Viridis", showscale=i == len(panels), xgap=1, ygap=1,
                                 colorbar={"title": "accuracy"}, name=A.METRICS[m],
                                 hovertemplate=f"layer %{{y}}<br>position %{{x}}<br>{A.METRICS[m]} %{{z:.3f}}"
                                               "<extra></extra>"), row=1, col=i)
        vals = z.to_numpy(dtype=float)
        keep = ~np.isnan(vals).all(1)
        best = [positions[j] for j in np.nanargmax(np.where(np.isnan(vals), -1, vals), 1)]
        fig.add_trace(go.Scatter(x=[b for b, k in zip(best, keep) if k], y=[y for y, k in zip(layers, keep) if k],
                                 mode="markers", marker={"symbol": "circle-open", "size": 12, "color": "white",
                                                         "line": {"width": 2}},
                                 name="best position per layer", showlegend=i == 1, hoverinfo="skip"), row=1, col=i)
        fig.update_xaxes(title_text="position", type="category", row=1, col=i)
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed", row=1, col=1)
    n = len(next(iter(grid.values())).index)
    fig.update_layout(title=title({"family": family, "component": component, "size": size}, summary),
                      height=220 + (18 if n > 12 else 40) * n, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 80, "b": 50})
    return fig


_NOTE = ("MIB's protocol (causal-variable track): IIA per (layer, position), here the mean over seeds on the held-out "
         "set; per layer the best position; then the mean and the max over layers (MIB's table reports the mean). "
         "Every control goes through the same steps, choosing its own best position per layer, so the method's "
         "numbers are read against equally optimistic controls; the no-op baseline is one held-out set for every "
         "cell. Full-vocabulary IIA is MIB's own reading (the top-1 token of the whole vocabulary).")


def section_html(summary: pd.DataFrame) -> list[str]:
    """The report's "MIB's aggregates" section (no figures: :func:`roadinterp.viz.report.run_figures` makes
    them); empty when no group scanned more than one (layer, position)."""
    from roadinterp.viz._html import _collapsed, _table

    if not A.groups(summary):
        return []
    agg = A.over_layers(summary)
    metrics = [m for m in A.METRICS if f"{m}_layer_mean" in agg]
    header = ["family", "component", "size", "layers x positions", "seeds",
              *(f"{A.METRICS[m]}: mean | max" for m in metrics), "max at"]
    rows = [[r["family"], r["component"], r["size"], f"{r['layers']} x {r['positions']}", r["seeds"],
             *(f"{_n(r[f'{m}_layer_mean'])} | {_n(r[f'{m}_layer_max'])}" for m in metrics),
             f"L{r['best_layer']} @{r['best_position']}"] for _, r in agg.iterrows()]
    layers = A.per_layer(summary)
    lm = [m for m in A.METRICS if m in layers]

    def per_layer_table(frame):
        return _table(["family", "component", "size", "layer", *(A.METRICS[m] for m in lm)],
                      [[r["family"], r["component"], r["size"], r["layer"],
                        *(f"{_n(r[m])} @{r[f'{m}_position']}" if r[f"{m}_position"] is not None else "" for m in lm)]
                       for _, r in frame.iterrows()], numeric=[False, False, True, True, *[True] * len(lm)])

    return ["<h2>MIB's aggregates</h2>", f'<p class="meta">{html.escape(_NOTE)}</p>',
            _table(header, rows, numeric=[False, False, True, False, True, *[True] * len(metrics), False]),
            "<h3>Best position per layer</h3>", _collapsed(layers, per_layer_table, "layers")]
