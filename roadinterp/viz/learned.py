"""What the rotations of an alignment run learned, read back from its run directory.

A search saves, per cell and seed, the learned RoAd interchange (``cells/<slug>/``) and
the subspace each variable swaps (``subspaces/<slug>/``), and the same for the cell's
random-init control (``<slug>-random_model``); see :mod:`roadinterp.store`. This module
turns those saves into tidy tables and plotly figures:

* :func:`seed_angles` — learned angles per RoAd layer of a road/butterfly cell, every
  seed overlaid, beside the random-init control's. Seeds that found the same rotation
  have the same distributions; a control whose angles look like the trained model's
  learned nothing about the trained model.
* :func:`seed_subspaces` — seed x seed mean principal-angle cosine between the learned
  subspaces (:mod:`roadinterp.subspace`), trained model beside control, chance level in
  the title. Do seeds with the same IIA learn the same subspace?
* :func:`rowspace_split` — per seed, how much of the learned subspace the next layer can
  read (its row-space share) and how much is *dormant* (in the kernel of the reader:
  ``dormant_fraction``, :mod:`roadinterp.controls`), beside the IIA of the whole subspace
  and of its row-space part alone. A subspace that scores only through its dormant part
  is the interpretability illusion of Makelov et al. (2023).
* :func:`layer_sweep` — best IIA per layer and family with the controls as bands (the
  way MIB and the DAS papers show a layer sweep); readable at 30 layers.

It reads only the store and the saved cells (no model, no search); the static twins are
in :mod:`roadinterp.viz.static`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from roadinterp import io
from roadinterp.errors import ConfigError
from roadinterp.cellid import CELL_FIELDS, CellId
from roadinterp.store import row_slug, saved_path
from roadinterp.subspace import agreement_of, pair_angles, pairwise_agreement, random_angles
from roadinterp.viz import figures as F

CELL_KEYS = list(CELL_FIELDS)
CONDITIONS = {None: "trained model", "random_model": "control: random-init model"}
_LAYOUT = F._LAYOUT


# ------------------------------------------------------------------ cells
def cell_key(row) -> str:
    """``family|layer|component|position|size`` of a results row (:attr:`roadinterp.cellid.CellId.cell`)."""
    return CellId.from_row(row).cell


def cell_rows(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """The seeds' rows of one cell, by ``family|layer|component|position|size`` (a trailing ``|seed`` is ignored)."""
    want = CellId.parse(key).cell  # a trailing |seed is ignored
    keys = table.apply(cell_key, axis=1) if len(table) else pd.Series(dtype=str)
    rows = table[keys == want]
    if rows.empty:
        known = list(dict.fromkeys(keys))[:8]
        raise ConfigError(f"no cell {want!r} in this run; cells look like {', '.join(known) or '(none yet)'}")
    return rows.sort_values("seed", kind="stable")


def focus_cells(table: pd.DataFrame, named: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(cell key, why) for the best cell of each family (by mean IIA over seeds) and each named cell."""
    out: dict[str, str] = {}
    if len(table):
        t = table.assign(_cell=table.apply(cell_key, axis=1))
        means = t.groupby(["family", "_cell"], sort=False)["iia"].mean().reset_index()
        for fam, d in means.groupby("family", sort=False):
            out.setdefault(d.loc[d["iia"].idxmax(), "_cell"], f"best {fam} cell")
    for key in named:
        k = cell_key(cell_rows(table, key).iloc[0])
        out[k] = out.get(k, "") + ("; " if k in out else "") + "named"
    return list(out.items())


def load_saved(run_dir, row, what: str = "cell", control: str | None = None):
    """The saved interchange (``what="cell"``) or SubspaceBasis (``"subspace"``) of a row; None if absent."""
    p = saved_path(run_dir, row_slug(row, control), what)
    return io.load(p) if (p / io.CONFIG_NAME).is_file() else None


# ------------------------------------------------------------------ tables
def seed_angle_table(run_dir, rows: pd.DataFrame) -> pd.DataFrame:
    """Angles of every seed's saved interchange and its random-init control's.

    Columns of :func:`roadinterp.viz.angle_table` plus ``seed``, ``iia`` and ``condition``
    (``trained model`` / ``control: random-init model``); ``target`` is the RoAd layer.
    Empty when nothing was saved (das, lowrank and neuron have no angles).
    """
    parts = []
    for _, row in rows.iterrows():
        for control, cond in CONDITIONS.items():
            iv = load_saved(run_dir, row, "cell", control)
            if iv is None or not hasattr(iv, "strides"):
                continue
            t = F.angle_table(iv)
            iia = row["iia"] if control is None else row.get("iia_random_model")
            parts.append(t.assign(seed=int(row["seed"]), iia=iia, condition=cond))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def seed_bases(run_dir, rows: pd.DataFrame, control: str | None = None) -> tuple[list[int], list[float], list]:
    """(seeds, their IIA, their SubspaceBasis) for the seeds of ``rows`` that saved one."""
    seeds, iias, bases = [], [], []
    for _, row in rows.iterrows():
        b = load_saved(run_dir, row, "subspace", control)
        if b is not None:
            seeds.append(int(row["seed"]))
            iias.append(float(row["iia"] if control is None else row.get("iia_random_model", math.nan)))
            bases.append(b)
    return seeds, iias, bases


def with_seed_agreement(run_dir, table: pd.DataFrame) -> pd.DataFrame:
    """Fill ``seed_agreement`` (and its chance level) from the saved subspaces where a row lacks it."""
    if table.empty or ("seed_agreement" in table and table["seed_agreement"].notna().all()):
        return table
    table = table.copy()
    for col in ("seed_agreement", "seed_agreement_chance"):
        if col not in table:
            table[col] = np.nan
    keys = table.apply(cell_key, axis=1)
    n_seeds = keys.map(keys.value_counts())
    for key in dict.fromkeys(keys[table["seed_agreement"].isna() & (n_seeds >= 2)]):  # one seed: nothing to compare
        _, _, bases = seed_bases(run_dir, table[keys == key])
        if len(bases) >= 2:
            table.loc[keys == key, ["seed_agreement", "seed_agreement_chance"]] = agreement_of(bases)
    return table


def layer_sweep_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per (family, layer): the best cell by mean IIA (its mean, std, train IIA), and per layer the
    range over every cell at that layer of each control's cell mean (``*_lo``/``*_hi``) and the no-op."""
    if table.empty:
        return pd.DataFrame()
    t = table.assign(_cell=table.apply(cell_key, axis=1))
    cols = [c for c in ("iia", "train_iia", *F.CONTROLS, "iia_null") if c in t and t[c].notna().any()]
    cells = t.groupby(["family", "layer", "_cell"], sort=False)[cols].mean()
    cells["iia_std"] = t.groupby(["family", "layer", "_cell"], sort=False)["iia"].std().fillna(0.0)
    cells = cells.reset_index()
    best = cells.loc[cells.groupby(["family", "layer"], sort=False)["iia"].idxmax()]
    best = best.rename(columns={"_cell": "cell"}).sort_values(["family", "layer"]).reset_index(drop=True)
    for c in [c for c in (*F.CONTROLS, "iia_null") if c in cells]:
        rng = cells.groupby("layer")[c].agg(["min", "max"]).rename(columns={"min": f"{c}_lo", "max": f"{c}_hi"})
        best = best.merge(rng, left_on="layer", right_index=True, how="left")
    return best


def subspace_warnings(summary: pd.DataFrame, *, iia_spread: float = 0.05, margin: float = 0.1,
                      disagree: float = 0.5, limit: int = 5) -> list[str]:
    """Cells whose seeds agree on IIA (std <= ``iia_spread``, mean ``margin`` above the no-op)
    but not on the subspace: agreement less than ``disagree`` of the way from chance to 1.

    Best cells first (``summary`` order); past ``limit`` cells one line counts the rest.
    """
    out: list[str] = []
    if summary.empty or "seed_agreement" not in summary:
        return out
    for _, r in summary.iterrows():
        a, c, null = r.get("seed_agreement"), r.get("seed_agreement_chance"), r.get("iia_null_mean")
        if not (_finite(a) and _finite(c)) or int(r["n_seeds"]) < 2 or r["iia_std"] > iia_spread:
            continue
        if _finite(null) and r["iia_mean"] - null < margin:
            continue
        if c < 1 and (a - c) / (1 - c) < disagree:
            out.append(f"{r['family']} at layer {F._label(r['layer'])} {r['component']}@{F._label(r['position'])}, "
                       f"size {F._label(r['size'])}: the {int(r['n_seeds'])} seeds agree on IIA "
                       f"({r['iia_mean']:.3f} ± {r['iia_std']:.3f}) but their subspaces overlap hardly more than "
                       f"random ones (mean principal-angle cosine {a:.2f}, random subspaces {c:.2f}): beyond the few "
                       "directions they share (see the principal angles), each seed picked its own subspace, so the "
                       "cell does not pin down where the variable lives.")
    if len(out) > limit:
        rest = (f"... and {len(out) - limit} more cells whose seeds agree on IIA but not on the subspace "
                "(seed agreement column of the summary table).")
        out = [*out[:limit], rest]
    return out


# ------------------------------------------------------------------ figures
def _cell_title(rows: pd.DataFrame) -> str:
    r = rows.iloc[0]
    return (f"{r['family']} at layer {F._label(r['layer'])} {r['component']}@{F._label(r['position'])}, "
            f"size {F._label(r['size'])}")


def seed_angles(run_dir, rows: pd.DataFrame) -> go.Figure:
    """Box plot per RoAd layer (rows) and seed (colours) of the learned angles; trained | random-init.

    ``rows``: one cell's seeds (:func:`cell_rows`). Each trace is one seed in one panel;
    its ``x`` are the saved thetas (radians) and ``y`` their RoAd layer.
    """
    df = seed_angle_table(run_dir, rows)
    if df.empty:
        raise ConfigError(f"no saved RoAd angles for {_cell_title(rows)} (only road and butterfly cells have angles)")
    conds = [c for c in CONDITIONS.values() if c in set(df["condition"])]
    fig = make_subplots(rows=1, cols=len(conds), subplot_titles=conds, shared_yaxes=True, horizontal_spacing=0.05)
    seeds = sorted(set(df["seed"]))
    colors = _palette(len(seeds))
    points = "all" if df.groupby(["condition", "seed", "target"]).size().max() <= 64 else "outliers"
    for col, cond in enumerate(conds, start=1):
        for seed, color in zip(seeds, colors):
            d = df[(df["condition"] == cond) & (df["seed"] == seed)]
            if d.empty:
                continue
            iia = d["iia"].iloc[0]
            fig.add_trace(go.Box(
                x=d["theta"].to_numpy(), y=d["target"].to_numpy(), orientation="h", name=f"seed {seed}",
                legendgroup=f"seed {seed}", showlegend=col == 1, marker={"color": color, "size": 3},
                boxpoints=points, jitter=0.4, pointpos=0, line={"width": 1},
                hovertemplate=f"seed {seed} (IIA {_num(iia)})<br>%{{y}}<br>theta %{{x:.3f}}<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(title_text="theta (rad)", row=1, col=col)
    n_layers = df["target"].nunique()
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(boxmode="group", title=f"learned angles per RoAd layer, every seed: {_cell_title(rows)}",
                      legend_title_text="seed", **{**_LAYOUT, "height": 200 + n_layers * (14 + 8 * len(seeds))})
    return fig


def agreement_data(run_dir, rows: pd.DataFrame, control: str | None = None) -> dict:
    """Seeds, IIA, ``[S, S]`` agreement matrix, principal angles (degrees) per seed pair and
    variable, the agreement and its chance level; and ``random`` [samples, k] angles (degrees) of
    random subspace pairs of the first variable's size, the reference band."""
    seeds, iias, bases = seed_bases(run_dir, rows, control)
    if not bases:
        return {"seeds": [], "iia": [], "matrix": np.zeros((0, 0)), "angles": {}, "chance": math.nan,
                "agreement": math.nan, "variables": [], "random": np.zeros((0, 0))}
    per = [b.bases() for b in bases]
    pairs = pair_angles(per)  # i < j; (j, i) has the same angles and (i, i) all zero
    matrix = pairwise_agreement(per, pairs)
    angles = {(i, j): [np.degrees(a) for a in pairs[min(i, j), max(i, j)]] if i != j
              else [np.zeros(b.shape[1]) for b in per[i]] for i in range(len(per)) for j in range(len(per))}
    agree, chance = agreement_of(bases, matrix)
    return {"seeds": seeds, "iia": iias, "matrix": matrix, "angles": angles, "chance": chance,
            "agreement": agree, "variables": bases[0].variables,
            "random": np.degrees(random_angles(bases[0].dim, bases[0].sizes[0]))}


def agreement_panels(run_dir, rows: pd.DataFrame) -> dict[str, dict]:
    """:func:`agreement_data` of the trained model and of every control, by condition name
    (:data:`CONDITIONS`); read once, then shared by the figure and the report's sentence."""
    return {cond: agreement_data(run_dir, rows, control) for control, cond in CONDITIONS.items()}


def seed_subspaces(run_dir, rows: pd.DataFrame, panels: dict[str, dict] | None = None) -> go.Figure:
    """Do seeds learn the same subspace? Seed x seed mean principal-angle cosine (trained model,
    then the random-init control), and every seed pair's principal angles against random pairs.
    ``panels``: :func:`agreement_panels` of ``rows`` when already read.

    Matrix panels: 1 = the two seeds swap the same subspace for every variable; hover lists
    each variable's principal angles. Last panel: one line per seed pair and variable (angle
    index on x, degrees on y), the grey band the 5-95% range of random subspace pairs: lines
    that start near 0 and then join the band share a few directions and no more.
    """
    panels = subspace_panels(run_dir, rows, panels)
    titles = [f"{c}<br>agreement {_num(d['agreement'], 2)} (random {_num(d['chance'], 2)})" for c, d in panels]
    fig = make_subplots(rows=1, cols=len(panels) + 1, subplot_titles=[*titles, "principal angles per seed pair"],
                        horizontal_spacing=0.12, column_widths=[1.0] * len(panels) + [1.2])
    bar_x = fig.layout[f"xaxis{len(panels) if len(panels) > 1 else ''}"].domain[1] + 0.01
    for col, (_, d) in enumerate(panels, start=1):
        labels = [f"seed {s} ({_num(v, 2)})" for s, v in zip(d["seeds"], d["iia"])]
        n = len(labels)
        hover = [["<br>".join(f"{var}: " + ", ".join(f"{a:.0f}°" for a in ang)
                              for var, ang in zip(d["variables"], d["angles"][(i, j)]))
                  for j in range(n)] for i in range(n)]
        fig.add_trace(go.Heatmap(
            z=d["matrix"], x=labels, y=labels, zmin=0, zmax=1, colorscale="Viridis", showscale=col == len(panels),
            colorbar={"title": "mean cos", "x": bar_x, "len": 0.8, "thickness": 12}, text=[[f"{v:.2f}" for v in row] for row in d["matrix"]],
            texttemplate="%{text}" if n <= 12 else None, customdata=hover, name=titles[col - 1],
            hovertemplate="%{y} vs %{x}<br>mean cosine %{z:.3f}<br>principal angles:<br>%{customdata}<extra></extra>",
        ), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    last = len(panels) + 1
    rnd = panels[0][1]["random"]
    idx = np.arange(1, rnd.shape[1] + 1)
    lo, hi = np.percentile(rnd, 5, axis=0), np.percentile(rnd, 95, axis=0)
    fig.add_trace(go.Scatter(x=np.r_[idx, idx[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", mode="lines", line={"width": 0},
                             fillcolor="rgba(120,120,120,0.25)", name="random subspaces (5-95%)", hoverinfo="skip"),
                  row=1, col=last)
    for (cond, d), color in zip(panels, ("#2a6fdb", "#d9822b")):
        first = True
        for (i, j), per_var in d["angles"].items():
            if i >= j:
                continue
            for var, ang in zip(d["variables"], per_var):
                fig.add_trace(go.Scatter(
                    x=np.arange(1, len(ang) + 1), y=ang, mode="lines+markers", line={"color": color, "width": 1},
                    marker={"size": 4}, opacity=0.6, name=cond, legendgroup=cond, showlegend=first,
                    hovertemplate=(f"{cond}<br>seeds {d['seeds'][i]} and {d['seeds'][j]}, {var}"
                                   "<br>angle %{x}: %{y:.1f}°<extra></extra>"),
                ), row=1, col=last)
                first = False
    fig.update_xaxes(title_text="principal angle (sorted)", dtick=1 if len(idx) <= 16 else None, row=1, col=last)
    fig.update_yaxes(title_text="degrees", range=[0, 91], row=1, col=last)
    n = max(len(d["seeds"]) for _, d in panels)
    fig.update_layout(title=f"do seeds learn the same subspace? {_cell_title(rows)} (labels: seed (IIA))",
                      legend={"orientation": "h", "y": -0.3, "x": 1.0, "xanchor": "right"},
                      **{**_LAYOUT, "height": 340 + 28 * n, "margin": {"l": 110, "r": 20, "t": 100, "b": 110}})
    return fig


def subspace_panels(run_dir, rows: pd.DataFrame, panels: dict[str, dict] | None = None) -> list[tuple[str, dict]]:
    """(condition, :func:`agreement_data`) of the conditions with saved subspaces, for the
    seed_subspaces figures; ConfigError when none has any."""
    panels = agreement_panels(run_dir, rows) if panels is None else panels
    out = [(c, d) for c, d in panels.items() if len(d["seeds"])]
    if not out:
        raise ConfigError(f"no saved subspaces for {_cell_title(rows)} (only rotated families save one)")
    return out


def rowspace_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per seed of one cell: ``dormant`` and ``row_space`` shares of the learned subspace (they sum
    to 1) and the IIA of the whole subspace (``iia_joint``), of its row-space part alone
    (``iia_rowspace``) and of doing nothing (``iia_joint_null``), all on the joint counterfactuals.
    Empty when the site has no registered reader (no ``dormant_fraction``)."""
    if "dormant_fraction" not in rows or not rows["dormant_fraction"].map(_finite).any():
        return pd.DataFrame(columns=["seed", "dormant", "row_space", "iia_joint", "iia_rowspace", "iia_joint_null"])
    r = rows[rows["dormant_fraction"].map(_finite)].sort_values("seed")
    return pd.DataFrame({
        "seed": r["seed"].astype(int).to_numpy(), "dormant": r["dormant_fraction"].astype(float).to_numpy(),
        "row_space": 1.0 - r["dormant_fraction"].astype(float).to_numpy(),
        **{c: r[c].astype(float).to_numpy() if c in r else np.full(len(r), np.nan)
           for c in ("iia_joint", "iia_rowspace", "iia_joint_null")},
    })


def rowspace_split(rows: pd.DataFrame) -> go.Figure:
    """Row space vs null space of one cell's learned subspace, per seed: stacked shares (left) and
    the IIA of the whole subspace beside its row-space part alone, no-op dotted (right)."""
    t = rowspace_table(rows)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "share of the subspace the next layer reads", "IIA: whole subspace vs its row-space part"))
    seeds = [f"seed {s}" for s in t["seed"]]
    # left: one stacked bar per seed (the dormant bar starts where the row-space bar ends)
    fig.add_trace(go.Bar(x=seeds, y=t["row_space"], name="row space (read downstream)", marker_color="#2a6fdb",
                         offsetgroup="share", hovertemplate="%{x}: row-space share %{y:.3f}<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=seeds, y=t["dormant"], base=t["row_space"], name="null space (dormant)",
                         marker_color="#bbbbbb", offsetgroup="share",
                         hovertemplate="%{x}: dormant share %{y:.3f}<extra></extra>"), 1, 1)
    # right: two bars side by side per seed
    fig.add_trace(go.Bar(x=seeds, y=t["iia_joint"], name="IIA, whole subspace", marker_color="#3a9a3a",
                         offsetgroup="joint", hovertemplate="%{x}: IIA %{y:.3f}<extra></extra>"), 1, 2)
    fig.add_trace(go.Bar(x=seeds, y=t["iia_rowspace"], name="IIA, row-space part only", marker_color="#d9822b",
                         offsetgroup="rowspace",
                         hovertemplate="%{x}: IIA of the row-space part %{y:.3f}<extra></extra>"), 1, 2)
    if len(t) and t["iia_joint_null"].map(_finite).any():
        null = float(t["iia_joint_null"].mean())
        fig.add_trace(go.Scatter(x=seeds, y=[null] * len(seeds), mode="lines+markers", name="no-op baseline",
                                 line={"dash": "dot", "color": "#444"}, marker={"size": 4}), 1, 2)
    fig.update_layout(barmode="group", title=f"how much of the learned subspace is dormant? {_cell_title(rows)}",
                      **_LAYOUT)
    fig.update_yaxes(range=[0, 1.02])
    return fig


def layer_sweep(table: pd.DataFrame) -> go.Figure:
    """Best held-out IIA per layer (one line per family, ±std over seeds), controls as grey bands.

    A band spans, at each layer, the lowest to the highest cell mean of that control over
    every cell at the layer; the dotted line is the no-op baseline.
    """
    t = layer_sweep_table(table)
    fig = go.Figure()
    if t.empty:
        return fig
    layers = sorted(set(t["layer"]))
    bands = [(c, F.CONTROLS[c], col) for c, col in (("iia_random_model", "rgba(120,120,120,0.25)"),
                                                    ("iia_rival", "rgba(214,96,77,0.2)")) if f"{c}_lo" in t]
    per_layer = t.drop_duplicates("layer").set_index("layer").reindex(layers)
    # one layer: stretch bands and the no-op line over +-0.3 so they stay visible
    xs, rep = ([layers[0] - 0.3, layers[0] + 0.3], 2) if len(layers) == 1 else (layers, 1)
    for c, name, color in bands:
        lo = np.repeat(per_layer[f"{c}_lo"].to_numpy(dtype=float), rep)
        hi = np.repeat(per_layer[f"{c}_hi"].to_numpy(dtype=float), rep)
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=np.r_[hi, lo[::-1]], fill="toself", fillcolor=color, mode="lines",
                                 line={"width": 0}, name=f"{name} (range over cells)", hoverinfo="skip"))
    if "iia_null_lo" in t:
        fig.add_trace(go.Scatter(x=xs, y=np.repeat(per_layer["iia_null_hi"].to_numpy(dtype=float), rep), mode="lines",
                                 name="no-op baseline", line={"dash": "dot", "color": "#444"}))
    for fam, d in t.groupby("family", sort=False):
        fig.add_trace(go.Scatter(
            x=d["layer"], y=d["iia"], mode="lines+markers", name=str(fam),
            error_y={"type": "data", "array": d["iia_std"], "visible": True, "thickness": 1},
            customdata=d[["cell", "iia_std"]].to_numpy(dtype=object),
            hovertemplate=f"{fam} layer %{{x}}: IIA %{{y:.3f}} ± %{{customdata[1]:.3f}}<br>%{{customdata[0]}}<extra></extra>",
        ))
    fig.update_layout(title="best held-out IIA per layer (best cell per family; bands: controls)",
                      xaxis_title="layer", yaxis_title="IIA", yaxis_range=[0, 1.02], **_LAYOUT)
    fig.update_xaxes(dtick=1 if len(layers) <= 12 else 2)
    return fig


def _palette(n: int) -> list[str]:
    base = ["#2a6fdb", "#d9822b", "#3a9a3a", "#c0392b", "#8e44ad", "#16a085", "#7f8c8d", "#b7950b"]
    return [base[i % len(base)] for i in range(n)]


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if _finite(v) else "n/a"


def saved_kinds(run_dir: str | os.PathLike, rows: pd.DataFrame) -> set[str]:
    """Which saves (``cell``, ``subspace``) exist for any seed of ``rows``."""
    return {what for what in ("cell", "subspace") for _, r in rows.iterrows()
            if (saved_path(run_dir, row_slug(r), what) / io.CONFIG_NAME).is_file()}


__all__ = [
    "agreement_data", "agreement_panels", "cell_key", "cell_rows", "focus_cells", "layer_sweep", "layer_sweep_table", "load_saved",
    "rowspace_split", "rowspace_table", "saved_kinds", "seed_angle_table", "seed_angles", "seed_bases", "seed_subspaces", "subspace_panels", "subspace_warnings",
    "with_seed_agreement",
]
