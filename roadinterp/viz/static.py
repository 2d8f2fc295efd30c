"""Static (matplotlib) twins of the figures in :mod:`roadinterp.viz.figures`.

Same names, same arguments, same data (both call the ``*_table``/``*_grid`` helpers
of ``figures``); these return a ``matplotlib.figure.Figure`` for papers (.png/.pdf via
:func:`save_static`). They build ``Figure`` objects directly, never through
``pyplot``, so they leave no global state and need no display. Plotly's own static
export (kaleido) downloads a browser, which is why the static path is matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from roadinterp.errors import ConfigError
from roadinterp.viz import figures as F

STATIC_SUFFIXES = (".png", ".pdf", ".svg")


def _grid_axes(n: int, *, ncols: int = 4, size=(3.2, 2.4), **kw):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols + 0.6, size[1] * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw).reshape(-1)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _title(obj, what: str) -> str:
    return F._title(obj, what)


def angles(obj: Any, kind: str = "histogram", *, bins: int = 40) -> Figure:
    """Learned angles per target: one histogram (or polar scatter, radius alpha) per target."""
    df = F.angle_table(obj)
    targets = F._target_order(df)
    if kind == "histogram":
        fig, axes = _grid_axes(len(targets))
        for ax, tgt in zip(axes, targets):
            ax.hist(df.loc[df["target"] == tgt, "theta"].to_numpy(), bins=bins, color="#2a6fdb")
            ax.set_title(str(tgt), fontsize=8)
            ax.set_xlabel("theta (rad)")
    elif kind == "polar":
        fig, axes = _grid_axes(len(targets), subplot_kw={"projection": "polar"}, size=(3.0, 3.0))
        for ax, tgt in zip(axes, targets):
            d = df[df["target"] == tgt]
            ax.scatter(d["theta"].to_numpy(), d["alpha"].fillna(1.0).to_numpy(), s=8, alpha=0.7)
            ax.set_title(str(tgt), fontsize=8)
    else:
        raise ConfigError(f"angles kind must be 'histogram' or 'polar', got {kind!r}")
    fig.suptitle(_title(obj, "learned angles" if kind == "histogram" else "learned angles (radius = alpha)"))
    return fig


def alphas(obj: Any, *, bins: int = 40) -> Figure:
    """Learned alpha per target, one histogram per target."""
    df = F.angle_table(obj)
    targets = F._target_order(df)
    fig, axes = _grid_axes(len(targets))
    for ax, tgt in zip(axes, targets):
        ax.hist(df.loc[df["target"] == tgt, "alpha"].to_numpy(), bins=bins, color="#d9822b")
        ax.set_title(str(tgt), fontsize=8)
        ax.set_xlabel("alpha")
    fig.suptitle(_title(obj, "learned alphas"))
    return fig


def angle_heatmap(obj: Any) -> Figure:
    """Blocks x targets image of theta (NaN, shown blank, outside the subspace)."""
    grid = F.block_angle_grid(obj)
    z = grid.to_numpy(dtype=float)
    lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig = Figure(figsize=(max(4.0, 0.5 * z.shape[1] + 3), max(3.0, min(12.0, 0.12 * z.shape[0] + 2))),
                 layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim,
                   interpolation="nearest")
    ax.set_xticks(range(z.shape[1]), [str(c) for c in grid.columns], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("target")
    ax.set_ylabel("block")
    fig.colorbar(im, ax=ax, label="theta")
    ax.set_title(_title(obj, "angle per 2D block"))
    return fig


def ownership(owners: Mapping[str, Iterable[int]], n_blocks: int | None = None) -> Figure:
    """Adapter x block image: filled where the adapter owns the block."""
    grid = F.ownership_grid(owners, n_blocks)
    z = grid.to_numpy()
    fig = Figure(figsize=(max(4.0, min(14.0, 0.08 * z.shape[1] + 3)), 1.2 + 0.4 * z.shape[0]), layout="constrained")
    ax = fig.subplots()
    ax.imshow(z, aspect="auto", cmap=ListedColormap(["#f2f2f2", "#2a6fdb"]), vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_yticks(range(z.shape[0]), list(grid.index))
    ax.set_xlabel("block")
    free = int((z.sum(axis=0) == 0).sum())
    ax.set_title(f"block ownership ({z.shape[1]} blocks, {free} free)")
    return fig


def iia_heatmap(table: pd.DataFrame, x: str = "layer", y: str = "position", *, reduce: str = "mean",
                where: Mapping[str, Any] | None = None, title: str | None = None) -> Figure:
    """IIA on an (x, y) grid with train-IIA and control panels beside it (shared 0..1 colour scale).

    Values are printed in the squares up to ``figures.DENSE_ROWS`` rows (a 30-layer scan shows colour only).
    """
    grid = F.iia_grid(table, x, y, reduce=reduce, where=where)
    panels, titles = zip(*F.heatmap_panels(grid, reduce))
    iia = grid["iia"]
    dense = len(iia.index) > F.DENSE_ROWS
    w = max(3.0, 0.7 * len(iia.columns) + 1.5)
    h = 0.22 * len(iia.index) + 1.5 if dense else 0.45 * len(iia.index) + 1.5
    fig = Figure(figsize=(w * len(panels) + 1, max(2.5, h)), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    im = None
    for ax, p, panel_title in zip(axes, panels, titles):
        z = grid[p].to_numpy(dtype=float)
        im = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       interpolation="nearest")
        for (i, j), v in np.ndenumerate(z):
            if np.isfinite(v) and not dense:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 else "white")
        ax.set_xticks(range(len(iia.columns)), list(iia.columns))
        ax.set_xlabel(x)
        ax.set_title(panel_title, fontsize=9)
    axes[0].set_yticks(range(len(iia.index)), list(iia.index))
    axes[0].set_ylabel(y)
    fig.colorbar(im, ax=list(axes), label="accuracy")
    fig.suptitle(F._iia_title(x, y, where, title))
    return fig


def seed_angles(run_dir, rows: pd.DataFrame) -> Figure:
    """Learned angles per RoAd layer (rows), every seed (colours, one band each); trained | random-init.

    Each seed in each panel is one scatter whose x offsets are its saved thetas; a black
    tick marks each seed's median per layer.
    """
    from roadinterp.viz import learned as Ln

    df = Ln.seed_angle_table(run_dir, rows)
    if df.empty:
        raise ConfigError(f"no saved RoAd angles for {Ln._cell_title(rows)} (only road and butterfly cells have angles)")
    conds = [c for c in Ln.CONDITIONS.values() if c in set(df["condition"])]
    targets = list(dict.fromkeys(df.sort_values("layer", kind="stable")["target"]))
    seeds = sorted(set(df["seed"]))
    colors = Ln._palette(len(seeds))
    fig = Figure(figsize=(5.0 * len(conds) + 1, 1.0 + 0.35 * len(targets) * max(1, len(seeds) / 3)),
                 layout="constrained")
    axes = fig.subplots(1, len(conds), sharey=True, squeeze=False)[0]
    band = 0.8 / len(seeds)
    for ax, cond in zip(axes, conds):
        for k, (seed, color) in enumerate(zip(seeds, colors)):
            d = df[(df["condition"] == cond) & (df["seed"] == seed)]
            if d.empty:
                continue
            y = d["target"].map({t: i for i, t in enumerate(targets)}).to_numpy(dtype=float) - 0.4 + (k + 0.5) * band
            ax.scatter(d["theta"].to_numpy(), y, s=6, color=color, alpha=0.7, label=f"seed {seed}")
            med = d.groupby("target", sort=False)["theta"].median()
            ax.scatter(med.to_numpy(), [targets.index(t) - 0.4 + (k + 0.5) * band for t in med.index],
                       marker="|", s=60, color="black")
        ax.set_title(cond, fontsize=9)
        ax.set_xlabel("theta (rad)")
    axes[0].set_yticks(range(len(targets)), targets, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"learned angles per RoAd layer: {Ln._cell_title(rows)}", fontsize=10)
    return fig


def seed_subspaces(run_dir, rows: pd.DataFrame, panels: dict[str, dict] | None = None) -> Figure:
    """Seed x seed mean principal-angle cosine of the learned subspaces; trained | random-init.
    ``panels``: :func:`roadinterp.viz.learned.agreement_panels` of ``rows`` when already read."""
    from roadinterp.viz import learned as Ln

    panels = Ln.subspace_panels(run_dir, rows, panels)
    n = max(len(d["seeds"]) for _, d in panels)
    fig = Figure(figsize=(4.2 * (len(panels) + 1) + 1, 2.2 + 0.45 * n), layout="constrained")
    *axes, prof = fig.subplots(1, len(panels) + 1, squeeze=False)[0]
    im = None
    for ax, (cond, d) in zip(axes, panels):
        m = d["matrix"]
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        labels = [f"seed {s} ({v:.2f})" for s, v in zip(d["seeds"], d["iia"])]
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        if len(labels) <= 12:
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > 0.6 else "white")
        ax.set_title(f"{cond}\nagreement {Ln._num(d['agreement'], 2)} (random {Ln._num(d['chance'], 2)})", fontsize=9)
    fig.colorbar(im, ax=list(axes), label="mean principal-angle cosine")
    rnd = panels[0][1]["random"]
    idx = np.arange(1, rnd.shape[1] + 1)
    prof.fill_between(idx, np.percentile(rnd, 5, axis=0), np.percentile(rnd, 95, axis=0), color="0.6", alpha=0.35,
                      linewidth=0, label="random subspaces (5-95%)")
    for (cond, d), color in zip(panels, ("#2a6fdb", "#d9822b")):
        first = True
        for (i, j), per_var in d["angles"].items():
            for ang in per_var if i < j else []:
                prof.plot(np.arange(1, len(ang) + 1), ang, "-o", color=color, ms=2, lw=0.8, alpha=0.6,
                          label=cond if first else None)
                first = False
    prof.set_ylim(0, 91)
    prof.set_xlabel("principal angle (sorted)")
    prof.set_ylabel("degrees")
    prof.set_title("principal angles per seed pair", fontsize=9)
    prof.legend(fontsize=7)
    fig.suptitle(f"do seeds learn the same subspace? {Ln._cell_title(rows)}", fontsize=10)
    return fig


def rowspace_split(rows: pd.DataFrame) -> Figure:
    """Row-space vs dormant share of one cell's learned subspace per seed (stacked), and the IIA of
    the whole subspace beside its row-space part alone, no-op dotted."""
    from roadinterp.viz import learned as Ln

    t = Ln.rowspace_table(rows)
    fig = Figure(figsize=(8.0, 3.0), layout="constrained")
    share, iia = fig.subplots(1, 2)
    x = np.arange(len(t))
    labels = [f"seed {s}" for s in t["seed"]]
    share.bar(x, t["row_space"], color="#2a6fdb", label="row space (read downstream)")
    share.bar(x, t["dormant"], bottom=t["row_space"], color="#bbbbbb", label="null space (dormant)")
    iia.bar(x - 0.2, t["iia_joint"], 0.4, color="#3a9a3a", label="whole subspace")
    iia.bar(x + 0.2, t["iia_rowspace"], 0.4, color="#d9822b", label="row-space part only")
    if len(t) and t["iia_joint_null"].notna().any():
        iia.axhline(float(t["iia_joint_null"].mean()), ls=":", color="0.3", label="no-op baseline")
    for ax, title in ((share, "share the next layer reads"), (iia, "IIA")):
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"how much of the learned subspace is dormant? {Ln._cell_title(rows)}", fontsize=10)
    return fig


def layer_sweep(table: pd.DataFrame) -> Figure:
    """Best held-out IIA per layer (a line per family, ±std), controls as shaded bands, no-op dotted."""
    from roadinterp.viz import learned as Ln

    t = Ln.layer_sweep_table(table)
    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    ax = fig.subplots()
    if t.empty:
        return fig
    per_layer = t.drop_duplicates("layer").set_index("layer").sort_index()
    layers = per_layer.index.to_numpy()
    # one layer: stretch bands and the no-op line over +-0.3 so they stay visible
    xs, rep = (np.array([layers[0] - 0.3, layers[0] + 0.3]), 2) if len(layers) == 1 else (layers, 1)
    for c, color in (("iia_random_model", "0.6"), ("iia_rival", "#d6604d")):
        if f"{c}_lo" in per_layer:
            ax.fill_between(xs, np.repeat(per_layer[f"{c}_lo"].to_numpy(dtype=float), rep),
                            np.repeat(per_layer[f"{c}_hi"].to_numpy(dtype=float), rep),
                            color=color, alpha=0.3, linewidth=0, label=f"{F.CONTROLS[c]} (range over cells)")
    if "iia_null_hi" in per_layer:
        ax.plot(xs, np.repeat(per_layer["iia_null_hi"].to_numpy(dtype=float), rep), ":", color="0.3",
                label="no-op baseline")
    for fam, d in t.groupby("family", sort=False):
        ax.errorbar(d["layer"].to_numpy(), d["iia"].to_numpy(), yerr=d["iia_std"].to_numpy(), marker="o", ms=3,
                    capsize=2, label=str(fam))
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out IIA")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("best IIA per layer (best cell per family; bands: controls)", fontsize=10)
    return fig


def composition(results: pd.DataFrame) -> Figure:
    """Grouped bars: accuracy per target task under each condition (mean over seeds, std whiskers)."""
    s = F.composition_table(results)
    targets = list(dict.fromkeys(s["target"].astype(str)))
    conds = list(s["condition"].cat.categories)
    fig = Figure(figsize=(max(4.0, 1.2 * len(targets) * len(conds) / 2 + 2), 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(conds))
    for k, cond in enumerate(conds):
        d = s[s["condition"] == cond].set_index(s.loc[s["condition"] == cond, "target"].astype(str))
        d = d.reindex(targets)
        xs = np.arange(len(targets)) + (k - (len(conds) - 1) / 2) * width
        yerr = d["std"].to_numpy() if (d["n"] > 1).any() else None
        ax.bar(xs, d["mean"].to_numpy(), width, yerr=yerr, label=str(cond), capsize=2)
    ax.set_xticks(range(len(targets)), targets)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy")
    ax.legend(title="condition", fontsize=8)
    ax.set_title("composition: accuracy per task and adapter set")
    return fig


def lambda_sweep(df: pd.DataFrame) -> Figure:
    """Accuracies as adapter scales vary: lines (one lambda) or one image per metric (lambda_a x lambda_b)."""
    keys, t = F.lambda_table(df)
    metrics = [m for m in F.LAMBDA_METRICS if m in t.columns]
    if keys == ["lambda"]:
        fig = Figure(figsize=(5, 3.2), layout="constrained")
        ax = fig.subplots()
        for m in metrics:
            ax.plot(t["lambda"].to_numpy(), t[m].to_numpy(), marker="o", label=m)
        ax.set_xlabel("lambda")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title("lambda sweep")
        return fig
    fig = Figure(figsize=(3.6 * len(metrics) + 1, 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    im = None
    for ax, m in zip(axes, metrics):
        p = t.pivot(index="lambda_b", columns="lambda_a", values=m)
        im = ax.imshow(p.to_numpy(dtype=float), origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(p.columns)), [str(v) for v in p.columns])
        ax.set_yticks(range(len(p.index)), [str(v) for v in p.index])
        ax.set_xlabel("lambda_a")
        ax.set_ylabel("lambda_b")
        ax.set_title(m, fontsize=9)
    fig.colorbar(im, ax=list(axes), label="accuracy")
    fig.suptitle("lambda sweep")
    return fig


def examples(table) -> Figure:
    """Example inputs/outputs per condition as a matplotlib table."""
    df = F.examples_table(table)
    fig = Figure(figsize=(min(14.0, 2.2 * max(1, len(df.columns))), 0.8 + 0.3 * (len(df) + 1)), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    if len(df):
        tab = ax.table(cellText=df.to_numpy().tolist(), colLabels=[str(c) for c in df.columns], loc="center",
                       cellLoc="left")
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
    ax.set_title("examples")
    return fig


def layer_position(table: pd.DataFrame, *, family: str, component: str, size: int) -> Figure:
    """Twin of :func:`roadinterp.viz.mib.layer_position`: mean IIA per (layer, position) of one group, a
    panel per score and control, rings on each layer's best position (by that panel's values)."""
    from roadinterp import aggregates as A
    from roadinterp.summary import summarize
    from roadinterp.viz import mib

    summary = summarize(table)
    grid = A.layer_position_grid(summary, family=family, component=component, size=size)
    panels = [m for m in mib.PANELS if m in grid]
    first = grid[panels[0]]
    dense = len(first.index) > F.DENSE_ROWS
    h = (0.22 if dense else 0.45) * len(first.index) + 1.8
    fig = Figure(figsize=((0.8 * len(first.columns) + 1.6) * len(panels) + 1, max(2.8, h)), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    im = None
    for ax, m in zip(axes, panels):
        z = grid[m].to_numpy(dtype=float)
        im = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        for i, row in enumerate(z):
            if np.isfinite(row).any():
                ax.scatter([int(np.nanargmax(row))], [i], s=90, facecolors="none", edgecolors="white", linewidths=1.5)
            for j, v in enumerate(row):
                if np.isfinite(v) and not dense:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > 0.6 else "white")
        ax.set_xticks(range(len(first.columns)), list(first.columns))
        ax.set_xlabel("position")
        ax.set_title(A.METRICS[m], fontsize=9)
    axes[0].set_yticks(range(len(first.index)), [str(v) for v in first.index])
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=list(axes), label="accuracy")
    fig.suptitle(mib.title({"family": family, "component": component, "size": size}, summary), fontsize=9)
    return fig


def save_static(fig: Figure, path) -> Path:
    """Save a matplotlib figure as .png, .pdf or .svg (chosen by suffix)."""
    path = Path(path)
    if path.suffix.lower() not in STATIC_SUFFIXES:
        raise ConfigError(f"static figures are saved as {', '.join(STATIC_SUFFIXES)}; got {path.name!r}")
    if not isinstance(fig, Figure):
        raise ConfigError(
            f"save_static needs a matplotlib Figure (from roadinterp.viz.static), got {type(fig).__name__}; "
            "save plotly figures as .html"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path
