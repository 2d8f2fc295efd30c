"""Interactive (plotly) figures of learned RoAd maps and alignment-search results.

Every figure here is a function of *data*: the first step of each one turns its
argument (a ``RoadAdapter``, a ``RoadRotation``, a ``RoadInterchange``, a results
table or a plain array/DataFrame) into a tidy ``pandas.DataFrame`` with one of the
``*_table`` helpers below, and the plot only draws that frame. The matplotlib twins
in :mod:`roadinterp.viz.static` reuse the same helpers, so the two versions of a
figure always show the same numbers, and tests check those numbers directly.

Angles are the raw learned ``theta`` in radians (peft layout: road_1 has one per 2D
block, road_2 one per element, road_4 two per element). Parameters outside an
adapter's subspace are unused (identity) and are left out.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from roadinterp.errors import ConfigError

ANGLE_COLUMNS = ["target", "layer", "variant", "index", "block", "theta", "alpha"]
CONTROLS = {"iia_random_model": "control: random-init model", "iia_rival": "control: rival hypothesis"}
TRAIN = {"train_iia": "train IIA"}
DENSE_ROWS = 12  # heat maps with more rows than this drop the printed values (hover keeps them)
CONDITION_ORDER = ["base", "A", "B", "A+B"]
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


# ------------------------------------------------------------------ data helpers
def layer_of(key: str) -> int | None:
    """Layer index of a target key: ``"2:block_output:last"`` -> 2, ``model.layers.0.mlp`` -> 0."""
    head = str(key).split(":", 1)[0]
    if ":" in str(key) and head.lstrip("-").isdigit():
        return int(head)
    m = _LAYER_RE.search(str(key))
    return int(m.group(1)) if m else None


def _rotation_rows(target: str, layer, theta, alpha, variant: str, dim: int, group_size: int,
                   blocks: Sequence[int] | None) -> pd.DataFrame:
    from roadinterp.road import rotation as rot

    theta = np.asarray(theta, dtype=float).reshape(-1)
    alpha = np.asarray(alpha, dtype=float).reshape(-1)
    owner = rot.param_block(dim, variant, group_size).numpy()
    df = pd.DataFrame({"target": target, "layer": layer, "variant": variant, "index": np.arange(theta.size),
                       "block": owner, "theta": theta, "alpha": alpha, "n_blocks": dim // 2})
    if blocks is not None:
        df = df[df["block"].isin(list(blocks))]
    return df


def _to_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().float().numpy()
    return np.asarray(t, dtype=float)


def angle_table(obj: Any) -> pd.DataFrame:
    """Tidy table of learned parameters: columns ``target, layer, variant, index, block, theta, alpha``.

    ``obj``: a ``RoadAdapter`` (one target per rotation, subspace only), a
    ``RoadRotation``, a ``RoadInterchange`` (one target per butterfly layer), a dict
    ``{name: any of these}`` (targets become ``name/target``), a DataFrame with at
    least a ``theta`` column, or an array (1-D: one target; 2-D: one target per row).
    """
    if isinstance(obj, pd.DataFrame):
        if "theta" not in obj.columns:
            raise ConfigError(f"an angle table needs a 'theta' column, got columns {list(obj.columns)}")
        df = obj.copy()
        defaults = {"target": "values", "layer": None, "variant": "", "block": None, "alpha": np.nan}
        for c, v in defaults.items():
            if c not in df.columns:
                df[c] = v
        if "index" not in df.columns:
            df["index"] = df.groupby("target").cumcount()
        return df[ANGLE_COLUMNS + [c for c in df.columns if c not in ANGLE_COLUMNS]].reset_index(drop=True)
    if isinstance(obj, Mapping):
        parts = []
        for name, sub in obj.items():
            t = angle_table(sub)
            t["target"] = [f"{name}/{x}" for x in t["target"]]
            parts.append(t)
        if not parts:
            raise ConfigError("angle_table got an empty dict; pass at least one adapter")
        return pd.concat(parts, ignore_index=True)
    if hasattr(obj, "items") and hasattr(obj, "targets") and hasattr(obj, "variant"):  # RoadAdapter
        parts = [
            _rotation_rows(key, layer_of(key), _to_numpy(r.theta), _to_numpy(r.alpha), r.variant, r.dim,
                           r.group_size, obj.blocks)
            for key, r in obj.items()
        ]
        return pd.concat(parts, ignore_index=True)
    if hasattr(obj, "strides") and hasattr(obj, "theta"):  # RoadInterchange [L, n_params]
        theta, alpha = _to_numpy(obj.theta), _to_numpy(obj.alpha)
        parts = [
            _rotation_rows(f"butterfly layer {i} (stride {s})", i, theta[i], alpha[i], obj.variant, obj.dim, 2 * s, None)
            for i, s in enumerate(obj.strides)
        ]
        return pd.concat(parts, ignore_index=True)
    if hasattr(obj, "spec") and hasattr(obj, "theta"):  # RoadRotation
        return _rotation_rows("rotation", None, _to_numpy(obj.theta), _to_numpy(obj.alpha), obj.variant, obj.dim,
                              obj.group_size, obj.spec.blocks)
    arr = _to_numpy(obj)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ConfigError(f"angles from an array need 1 or 2 dimensions, got shape {arr.shape}")
    return pd.concat([
        pd.DataFrame({"target": f"row {i}", "layer": i, "variant": "", "index": np.arange(arr.shape[1]),
                      "block": None, "theta": arr[i], "alpha": np.nan})
        for i in range(arr.shape[0])
    ], ignore_index=True)


def _target_order(df: pd.DataFrame) -> list[str]:
    """Targets ordered by layer (None last), then first appearance."""
    first = df.drop_duplicates("target")[["target", "layer"]].reset_index(drop=True)
    first["_l"] = [math.inf if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in first["layer"]]
    return first.sort_values("_l", kind="stable")["target"].tolist()


def block_angle_grid(obj: Any) -> pd.DataFrame:
    """``[block, target]`` frame of theta (mean over a block's parameters; NaN outside the subspace)."""
    df = angle_table(obj)
    if df["block"].isna().all():
        df = df.assign(block=df["index"])
    grid = df.pivot_table(index="block", columns="target", values="theta", aggfunc="mean", dropna=False)
    grid = grid.reindex(columns=_target_order(df))
    n = int(df["block"].max()) + 1
    if "n_blocks" in df.columns and df["n_blocks"].notna().any():
        n = max(n, int(df["n_blocks"].max()))
    return grid.reindex(range(n))


def ownership_grid(owners: Mapping[str, Iterable[int]], n_blocks: int | None = None) -> pd.DataFrame:
    """``[adapter, block]`` 0/1 frame: 1 where the adapter owns the block.

    ``owners``: ``{adapter_name: [block, ...]}``, or a composed ``RoadAdapter`` whose
    ``meta["owners"]`` holds that map (then ``n_blocks`` defaults to its width / 2).
    """
    if hasattr(owners, "targets") and hasattr(owners, "meta"):
        adapter = owners
        owners = (adapter.meta or {}).get("owners")
        if not owners:
            raise ConfigError("this adapter has no meta['owners'] (not composed); pass {adapter_name: blocks}")
        if n_blocks is None:
            n_blocks = min(adapter.targets.values()) // 2
    owned = {str(k): [int(b) for b in v] for k, v in owners.items()}
    if not owned:
        raise ConfigError("ownership needs at least one adapter in owners")
    top = max((max(v) for v in owned.values() if v), default=-1)
    n = top + 1 if n_blocks is None else int(n_blocks)
    for name, bs in owned.items():
        bad = [b for b in bs if not 0 <= b < n]
        if bad:
            raise ConfigError(f"adapter {name!r} owns block {bad[0]}, outside 0..{n - 1} (n_blocks={n})")
    z = np.zeros((len(owned), n), dtype=int)
    for i, bs in enumerate(owned.values()):
        z[i, bs] = 1
    return pd.DataFrame(z, index=list(owned), columns=range(n))


def _label(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _sort_labels(values: Iterable) -> list[str]:
    labels = list(dict.fromkeys(values))

    def key(s):
        try:
            return (0, float(s), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(s))

    return sorted(labels, key=key)


def iia_grid(table: pd.DataFrame, x: str = "layer", y: str = "position", *, reduce: str = "mean",
             where: Mapping[str, Any] | None = None) -> dict[str, pd.DataFrame]:
    """Pivoted ``[y, x]`` frames of IIA and its controls.

    ``reduce="mean"``: mean over every row (seeds and any other grid axes) with that
    (x, y). ``reduce="best"``: per (x, y), the cell (family, layer, component,
    position, size) with the highest mean over seeds, and *that cell's* controls.
    Returns ``{"iia": ..., "iia_std": ..., "n": ..., "iia_random_model": ..., "iia_rival": ...}``
    (controls only when the table has them; likewise ``train_iia`` and ``seed_agreement``).
    """
    if reduce not in ("mean", "best"):
        raise ConfigError(f"reduce must be 'mean' or 'best', got {reduce!r}")
    for c in (x, y, "iia"):
        if c not in table.columns:
            raise ConfigError(f"iia_heatmap needs column {c!r}; table has {list(table.columns)}")
    t = table.copy()
    for k, v in (where or {}).items():
        t = t[t[k].isin(v if isinstance(v, (list, tuple, set)) else [v])]
    t = t[t["iia"].notna()]
    extras = [c for c in (*TRAIN, *CONTROLS, "seed_agreement") if c in t.columns and t[c].notna().any()]
    t["_x"], t["_y"] = t[x].map(_label), t[y].map(_label)
    xs, ys = _sort_labels(t["_x"]), _sort_labels(t["_y"])
    values = ["iia", *extras]
    if reduce == "mean":
        g = t.groupby(["_y", "_x"])
        stats = g[values].mean()
        stats["iia_std"] = g["iia"].std().fillna(0.0)
        stats["n"] = g["iia"].count()
        stats["cell"] = ""
    else:
        keys = [k for k in ("family", "layer", "component", "position", "size") if k in t.columns]
        t["_cell"] = t[keys].apply(lambda r: " ".join(f"{k}={_label(r[k])}" for k in keys), axis=1)
        g = t.groupby(["_y", "_x", "_cell"])
        cells = g[values].mean()
        cells["iia_std"] = g["iia"].std().fillna(0.0)
        cells["n"] = g["iia"].count()
        cells = cells.reset_index()
        best = cells.loc[cells.groupby(["_y", "_x"])["iia"].idxmax()]
        stats = best.rename(columns={"_cell": "cell"}).set_index(["_y", "_x"])
    out = {}
    for col in [*values, "iia_std", "n", "cell"]:
        out[col] = stats[col].unstack("_x").reindex(index=ys, columns=xs)
    return out


def composition_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of accuracy per (target, condition), conditions in base/A/B/A+B order."""
    for c in ("condition", "target", "accuracy"):
        if c not in results.columns:
            raise ConfigError(f"composition results need column {c!r}; got {list(results.columns)}")
    g = results.groupby(["target", "condition"], sort=False)["accuracy"]
    s = pd.DataFrame({"mean": g.mean(), "std": g.std().fillna(0.0), "n": g.count()}).reset_index()
    conds = [c for c in CONDITION_ORDER if c in set(s["condition"])]
    conds += [c for c in dict.fromkeys(s["condition"]) if c not in conds]
    s["condition"] = pd.Categorical(s["condition"], categories=conds, ordered=True)
    return s.sort_values(["condition"], kind="stable").reset_index(drop=True)


LAMBDA_METRICS = ["accuracy_a", "accuracy_b", "accuracy_combined"]


def lambda_table(df: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """(lambda columns, frame of metric means over seeds per lambda setting)."""
    if {"lambda_a", "lambda_b"} <= set(df.columns):
        keys = ["lambda_a", "lambda_b"]
    elif "lambda" in df.columns:
        keys = ["lambda"]
    else:
        raise ConfigError(f"lambda_sweep needs 'lambda' or 'lambda_a' and 'lambda_b'; got {list(df.columns)}")
    metrics = [m for m in LAMBDA_METRICS if m in df.columns]
    if not metrics:
        raise ConfigError(f"lambda_sweep needs at least one of {LAMBDA_METRICS}; got {list(df.columns)}")
    return keys, df.groupby(keys)[metrics].mean().reset_index()


def examples_table(table) -> pd.DataFrame:
    """Examples as a DataFrame of strings (accepts a DataFrame or a list of dicts)."""
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    return df.astype(object).where(df.notna(), "").map(str)


# ------------------------------------------------------------------- figures
_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 60, "b": 50}}


def _title(obj, what: str) -> str:
    variant = getattr(obj, "variant", None)
    return f"{what} ({variant})" if variant else what


def angles(obj: Any, kind: str = "histogram", *, bins: int = 40) -> go.Figure:
    """Distribution of learned angles, one trace per target (layer/site/module or butterfly layer).

    ``kind="histogram"``: overlaid histograms of theta (radians).
    ``kind="polar"``: each parameter as a point at angle theta and radius alpha.
    """
    df = angle_table(obj)
    fig = go.Figure()
    if kind == "histogram":
        for tgt in _target_order(df):
            d = df[df["target"] == tgt]
            fig.add_trace(go.Histogram(x=d["theta"].to_numpy(), name=str(tgt), opacity=0.6, nbinsx=bins))
        fig.update_layout(barmode="overlay", xaxis_title="theta (rad)", yaxis_title="parameters",
                          title=_title(obj, "learned angles"), **_LAYOUT)
    elif kind == "polar":
        for tgt in _target_order(df):
            d = df[df["target"] == tgt]
            r = d["alpha"].fillna(1.0).to_numpy()
            fig.add_trace(go.Scatterpolar(theta=d["theta"].to_numpy(), r=r, mode="markers", name=str(tgt),
                                          thetaunit="radians", marker={"size": 5, "opacity": 0.7}))
        fig.update_layout(title=_title(obj, "learned angles (radius = alpha)"), **_LAYOUT)
    else:
        raise ConfigError(f"angles kind must be 'histogram' or 'polar', got {kind!r}")
    return fig


def alphas(obj: Any, *, bins: int = 40) -> go.Figure:
    """Distribution of learned alpha (scale) per target; 1 everywhere means a pure rotation."""
    df = angle_table(obj)
    fig = go.Figure()
    for tgt in _target_order(df):
        d = df[df["target"] == tgt]
        fig.add_trace(go.Histogram(x=d["alpha"].to_numpy(), name=str(tgt), opacity=0.6, nbinsx=bins))
    fig.update_layout(barmode="overlay", xaxis_title="alpha", yaxis_title="parameters",
                      title=_title(obj, "learned alphas"), **_LAYOUT)
    return fig


def angle_heatmap(obj: Any) -> go.Figure:
    """Blocks x targets heat map of theta (mean over a block's parameters; blank outside the subspace)."""
    grid = block_angle_grid(obj)
    z = grid.to_numpy(dtype=float)
    lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(c) for c in grid.columns], y=list(grid.index), colorscale="RdBu", zmid=0,
        zmin=-lim, zmax=lim, colorbar={"title": "theta"},
        hovertemplate="target %{x}<br>block %{y}<br>theta %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=_title(obj, "angle per 2D block"), xaxis_title="target", yaxis_title="block",
                      **_LAYOUT)
    return fig


def ownership(owners: Mapping[str, Iterable[int]], n_blocks: int | None = None) -> go.Figure:
    """Which adapter owns which 2D block in a composed adapter (one row per adapter)."""
    grid = ownership_grid(owners, n_blocks)
    z = grid.to_numpy()
    clash = int((z.sum(axis=0) > 1).sum())
    free = int((z.sum(axis=0) == 0).sum())
    fig = go.Figure(go.Heatmap(
        z=z, x=list(grid.columns), y=list(grid.index), colorscale=[[0, "#f2f2f2"], [1, "#2a6fdb"]],
        zmin=0, zmax=1, showscale=False, xgap=1, ygap=2,
        hovertemplate="%{y} block %{x}: %{z}<extra></extra>",
    ))
    note = f"{z.shape[1]} blocks, {free} free" + (f", {clash} claimed twice" if clash else "")
    fig.update_layout(title=f"block ownership ({note})", xaxis_title="block", yaxis_title="adapter",
                      **{**_LAYOUT, "height": 160 + 40 * z.shape[0]})
    return fig


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _iia_title(x: str, y: str, where, title: str | None) -> str:
    if title:
        return title
    cond = ", ".join(f"{k}={_label(v)}" for k, v in (where or {}).items())
    return f"IIA by {x} and {y}" + (f" ({cond})" if cond else "")


def heatmap_panels(grid: Mapping[str, pd.DataFrame], reduce: str) -> list[tuple[str, str]]:
    """(column, panel title) of an IIA heat map: held-out IIA, train IIA, then the controls present."""
    first = "held-out IIA (mean over seeds)" if reduce == "mean" else "held-out IIA (best cell)"
    return [("iia", first), *[(c, t) for c, t in {**TRAIN, **CONTROLS}.items() if c in grid]]


def iia_heatmap(table: pd.DataFrame, x: str = "layer", y: str = "position", *, reduce: str = "mean",
                where: Mapping[str, Any] | None = None, title: str | None = None) -> go.Figure:
    """Mean IIA over seeds on an (x, y) grid, with train IIA and the controls in panels beside it.

    Panels share one 0..1 colour scale: held-out IIA, then (when present) train IIA, the
    random-init-model control and the rival-hypothesis control. A good alignment is bright
    in the first two panels and dark in the controls; train far above held-out is
    memorisation. Hover adds the seed spread and, when stored, the seeds' subspace
    agreement. With many rows (a 30-layer scan) the values are only on hover. See
    :func:`iia_grid` for ``reduce`` and ``where``.
    """
    grid = iia_grid(table, x, y, reduce=reduce, where=where)
    panels = heatmap_panels(grid, reduce)
    titles = [t for _, t in panels]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, shared_yaxes=True,
                        horizontal_spacing=0.04)
    iia = grid["iia"]
    dense = len(iia.index) > DENSE_ROWS
    agree = grid.get("seed_agreement")
    agree_text = (np.vectorize(lambda v: f"<br>seed agreement {v:.2f}" if np.isfinite(v) else "")(
        agree.to_numpy(dtype=float)) if agree is not None else np.full(iia.shape, "", dtype=object))
    custom = np.dstack([grid["iia_std"].to_numpy(dtype=float), grid["n"].to_numpy(dtype=float),
                        grid["cell"].fillna("").to_numpy(dtype=object), agree_text.astype(object)])
    for i, (p, panel_title) in enumerate(panels, start=1):
        z = grid[p].to_numpy(dtype=float)
        text = [[_fmt(v) for v in row] for row in z]
        fig.add_trace(go.Heatmap(
            z=z, x=list(iia.columns), y=list(iia.index), zmin=0, zmax=1, colorscale="Viridis",
            text=text, texttemplate=None if dense else "%{text}", customdata=custom, showscale=(i == len(panels)),
            colorbar={"title": "accuracy"}, name=panel_title, xgap=1, ygap=1,
            hovertemplate=(f"{x} %{{x}}<br>{y} %{{y}}<br>{panel_title}: %{{z:.3f}}"
                           "<br>IIA std %{customdata[0]:.3f}, n %{customdata[1]}%{customdata[3]}"
                           "<br>%{customdata[2]}<extra></extra>"),
        ), row=1, col=i)
        fig.update_xaxes(title_text=x, type="category", row=1, col=i)
    fig.update_yaxes(title_text=y, type="category", row=1, col=1)
    fig.update_yaxes(autorange="reversed")
    row_px = 18 if dense else 40
    fig.update_layout(title=_iia_title(x, y, where, title), **{**_LAYOUT, "height": 220 + row_px * len(iia.index)})
    return fig


def composition(results: pd.DataFrame) -> go.Figure:
    """Accuracy per target task under base / A / B / A+B (bars: mean over seeds, whiskers: std)."""
    s = composition_table(results)
    fig = go.Figure()
    for cond in s["condition"].cat.categories:
        d = s[s["condition"] == cond]
        fig.add_trace(go.Bar(x=d["target"].astype(str), y=d["mean"], name=str(cond),
                             error_y={"type": "data", "array": d["std"], "visible": bool((d["n"] > 1).any())},
                             customdata=d["n"], hovertemplate="%{x}: %{y:.3f} (n=%{customdata})<extra></extra>"))
    fig.update_layout(barmode="group", title="composition: accuracy per task and adapter set",
                      xaxis_title="task", yaxis_title="accuracy", yaxis_range=[0, 1.05], **_LAYOUT)
    return fig


def lambda_sweep(df: pd.DataFrame) -> go.Figure:
    """Accuracy of tasks A, B and combined as adapter scales vary.

    One ``lambda`` column: lines. ``lambda_a`` and ``lambda_b``: one heat map per metric.
    """
    keys, t = lambda_table(df)
    metrics = [m for m in LAMBDA_METRICS if m in t.columns]
    if keys == ["lambda"]:
        fig = go.Figure()
        for m in metrics:
            fig.add_trace(go.Scatter(x=t["lambda"], y=t[m], mode="lines+markers", name=m))
        fig.update_layout(title="lambda sweep", xaxis_title="lambda", yaxis_title="accuracy",
                          yaxis_range=[0, 1.05], **_LAYOUT)
        return fig
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, shared_yaxes=True)
    for i, m in enumerate(metrics, start=1):
        p = t.pivot(index="lambda_b", columns="lambda_a", values=m)
        fig.add_trace(go.Heatmap(z=p.to_numpy(), x=[str(v) for v in p.columns], y=[str(v) for v in p.index],
                                 zmin=0, zmax=1, colorscale="Viridis", showscale=(i == len(metrics)),
                                 texttemplate="%{z:.2f}", name=m), row=1, col=i)
        fig.update_xaxes(title_text="lambda_a", type="category", row=1, col=i)
    fig.update_yaxes(title_text="lambda_b", type="category", row=1, col=1)
    fig.update_layout(title="lambda sweep", **_LAYOUT)
    return fig


def examples(table) -> go.Figure:
    """A table of example inputs/outputs per condition (text is HTML-escaped)."""
    df = examples_table(table)
    fig = go.Figure(go.Table(
        header={"values": [html.escape(str(c)) for c in df.columns], "fill_color": "#e8eef8", "align": "left"},
        cells={"values": [[html.escape(v) for v in df[c]] for c in df.columns], "align": "left"},
    ))
    fig.update_layout(title="examples", **{**_LAYOUT, "height": 120 + 28 * (len(df) + 1)})
    return fig


# ------------------------------------------------------------------- saving
def to_html_fragment(fig: go.Figure, *, include_plotlyjs: bool) -> str:
    """A ``<div>`` for ``fig``; inlines plotly.js when asked (never a CDN link)."""
    return fig.to_html(full_html=False, include_plotlyjs=bool(include_plotlyjs),
                       config={"displaylogo": False, "responsive": True})


def save_html(fig: go.Figure, path) -> Path:
    """Write a self-contained HTML page (plotly.js inlined) for one figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(fig.to_html(full_html=True, include_plotlyjs=True, config={"displaylogo": False}),
                    encoding="utf-8")
    return path
