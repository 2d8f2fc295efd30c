"""Heat maps of a screen (layers x positions): exact whole-vector patch IIA, AtP, the exact change.

``heatmap`` is the plotly figure, ``heatmap_static`` its matplotlib twin; both draw
:func:`screen_panels` (one layers x positions frame per panel) of a screen's grid table, so
the two show the same numbers. Reads only that table (``roadinterp.screen.run.GRID_COLUMNS``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

PANELS = (("iia", "exact whole-vector patch IIA"), ("atp", "AtP estimate (logit diff.)"),
          ("delta", "exact change (logit diff.)"))


def screen_panels(grid: pd.DataFrame, positions: Sequence[str] | None = None) -> list[tuple[str, str, pd.DataFrame]]:
    """``(column, title, frame)`` per panel with values; frame rows = positions (prompt order), columns = layers."""
    order = list(positions) if positions is not None else list(dict.fromkeys(grid["position"]))
    out = []
    for col, title in PANELS:
        if grid[col].notna().any():
            frame = grid.pivot(index="position", columns="layer", values=col).reindex(order)
            out.append((col, title, frame.astype(float)))
    return out


def _title(meta: dict) -> str:
    return (f"screen: {meta.get('model')} / {meta.get('task')} {','.join(meta.get('variables', []))} "
            f"({meta.get('component')}, no-op {meta.get('iia_null', float('nan')):.3f}, n={meta.get('n')})")


def heatmap(grid: pd.DataFrame, meta: dict):
    """Plotly: one heat map per panel side by side; IIA on 0..1, logit panels on a symmetric scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = screen_panels(grid, meta.get("positions"))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t, _ in panels], shared_yaxes=True,
                        horizontal_spacing=0.06)
    for i, (col, title, frame) in enumerate(panels, 1):
        z = frame.to_numpy()
        lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
        scale = dict(zmin=0, zmax=1, colorscale="Viridis") if col == "iia" else \
            dict(zmin=-lim, zmax=lim, colorscale="RdBu", reversescale=True)
        fig.add_trace(go.Heatmap(z=z, x=[str(c) for c in frame.columns], y=list(frame.index), name=title,
                                 colorbar=dict(x=i / len(panels) - 0.02, len=0.9, thickness=10),
                                 hovertemplate="layer %{x}<br>%{y}<br>%{z:.3f}<extra>" + title + "</extra>",
                                 **scale), row=1, col=i)
        fig.update_xaxes(title_text="layer", row=1, col=i)
    fig.update_yaxes(autorange="reversed", title_text="position", row=1, col=1)
    fig.update_layout(title=_title(meta), height=max(320, 22 * len(panels[0][2]) + 160),
                      width=max(900, 420 * len(panels)), template="plotly_white")
    return fig


def heatmap_static(grid: pd.DataFrame, meta: dict):
    """Matplotlib twin of :func:`heatmap` (built on a ``Figure``, no pyplot state)."""
    from matplotlib.figure import Figure

    panels = screen_panels(grid, meta.get("positions"))
    n_pos, n_layer = panels[0][2].shape
    fig = Figure(figsize=(max(4.0, 0.22 * n_layer + 2.2) * len(panels), max(3.0, 0.28 * n_pos + 1.6)),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (col, title, frame) in zip(axes, panels):
        z = frame.to_numpy()
        if col == "iia":
            im = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                           interpolation="nearest")
        else:
            lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
            im = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                           interpolation="nearest")
        step = max(1, n_layer // 15)
        ax.set_xticks(range(0, n_layer, step), [str(c) for c in frame.columns[::step]], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0].set_yticks(range(n_pos), list(panels[0][2].index), fontsize=7)
    axes[0].set_ylabel("position")
    fig.suptitle(_title(meta), fontsize=9)
    return fig
