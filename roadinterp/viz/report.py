"""Self-contained HTML reports: one page per alignment run or per set of adapters.

A report is a single ``.html`` file you can mail, archive or open offline: plotly.js
is inlined once in the page head, figures follow as ``<div>``s that reuse it, and
styles are inline with system fonts only. The page makes no network request (no
CDN, no web fonts, no images). Every piece of text that comes from a run (config
values, task and model names, positions) is HTML-escaped.

:func:`write_report` reads a run directory with :func:`roadinterp.store.read_run`, so
it works on a finished, partial (some cells) or empty run; the ``align`` command
calls it at the end of every run. The adapter page (learned angles of trained
adapters, block ownership of a composed one) is :mod:`roadinterp.viz.adapter_report`,
built with this module's page helpers.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.offline

from roadinterp.io import write_text_atomic
from roadinterp.cellid import CELL_FIELDS
from roadinterp.viz import figures as F
from roadinterp.viz._html import SHOWN_ROWS, _collapsed, _e, _num, _table  # noqa: F401 (re-exported)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #1d1d1f; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #666; font-size: 0.9em; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
table.data th { background: #f4f6fa; } table.data tr.best td { background: #fff6d6; }
table.data tr.suspect td { background: #fdf1f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.best-sentence { font-size: 1.05em; background: #f4f9f4; border-left: 4px solid #3a9a3a; padding: 8px 12px; }
.warn { background: #fdf1f0; border-left: 4px solid #c0392b; padding: 6px 12px; }
.empty { font-size: 1.1em; color: #8a6d00; background: #fffbe6; padding: 10px 12px; border-left: 4px solid #e0b000; }
.figure { margin: 12px 0 24px; }
details summary { cursor: pointer; }
"""

_CELL_KEYS = list(CELL_FIELDS)


def _label(v: Any) -> str:
    return F._label(v)


def _figure_div(fig, title: str) -> str:
    return f'<div class="figure" title="{_e(title)}">{F.to_html_fragment(fig, include_plotlyjs=False)}</div>'


def _page(title: str, body: Sequence[str], *, with_plotly: bool) -> str:
    head = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style>",
    ]
    if with_plotly:  # inlined once; every figure div below reuses it
        head.append(f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>')
    head.append("</head><body>")
    return "\n".join([*head, *body, "</body></html>"])


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text, mode=0o644)  # a report is meant to be shared


def _stamp() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# ----------------------------------------------------------------- run report
def _expected_cells(config: Mapping[str, Any]) -> int | None:
    try:
        n = 1
        for k in ("layers", "components", "positions", "families", "sizes"):
            v = config.get(k)
            if not isinstance(v, list) or not v:
                return None
            n *= len(v)
        return n * int(config.get("seeds") or 1)
    except (TypeError, ValueError):
        return None


def best_sentence(best: Mapping[str, Any]) -> str:
    """The best alignment as plain text: :func:`roadinterp.summary.describe_best` (the CLI's wording too)."""
    from roadinterp.summary import describe_best

    return describe_best(best)


def _controls_html(summary: pd.DataFrame) -> str:
    """The illusion controls and every rival, per cell, with the cell's warning codes."""
    from roadinterp.controls import rival_names

    cols = [("iia_mean", "IIA"), ("iia_joint_mean", "IIA, one source"), ("iia_site_patch_mean", "site patch"),
            ("iia_joint_null_mean", "its no-op"), ("iia_rowspace_mean", "row-space part"),
            ("dormant_fraction_mean", "dormant fraction")]
    for name in rival_names(summary.iloc[0].to_dict()) if len(summary) else []:
        cols += [(f"iia_rival[{name}]_mean", f"rival {name}: held-out"),
                 (f"train_iia_rival[{name}]_mean", f"rival {name}: train"),
                 (f"iia_site_patch_rival[{name}]_mean", f"rival {name}: site patch"),
                 (f"iia_rival_null[{name}]_mean", f"rival {name}: no-op")]
    cols = [(c, h) for c, h in cols if c in summary]
    rows = [[*(_label(r[k]) for k in _CELL_KEYS), *(_num(r[c]) for c, _ in cols), r.get("warnings") or ""]
            for _, r in summary.iterrows()]
    numeric = [False] * len(_CELL_KEYS) + [True] * len(cols) + [False]
    classes = ["best" if "illusion-suspect" not in str(r[-1]) else "suspect" for r in rows]
    return _table([*_CELL_KEYS, *(h for _, h in cols), "warnings"], rows, numeric=numeric, row_class=classes)


_CONTROLS_NOTE = (
    "IIA, one source: the learned subspace when every variable comes from one source; site patch: "
    "interchanging the whole site vector on those counterfactuals. A subspace that beats the site patch "
    "moves the output in a way the site as a whole does not: the interpretability-illusion signature. "
    "Row-space part: only the part of the subspace the next linear map can read (sites with a registered "
    "reader); near the no-op while the subspace scores high means a dormant direction did the work. "
    "Rivals: held-out IIA low with train IIA and site patch high means the site carries the rival but the "
    "subspace does not generalise to unseen entities; site patch near its no-op means the site does not "
    "carry it. Warning codes: docs/concepts.md#controls-and-warnings."
)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _control_warnings(best: Mapping[str, Any], margin: float = 0.1) -> list[str]:
    """Warnings when a control explains the best cell.

    Hypotheses are compared by their gain over their *own* no-op baseline when it is known
    (a rival whose labels rarely change scores a high raw IIA by doing nothing).
    """
    out = []
    iia, null = best["iia_mean"], best.get("iia_null_mean")
    v = best.get("iia_random_model_mean")
    if _finite(v) and v >= iia - margin:
        out.append(f"a randomly initialised model aligns almost as well ({v:.3f} vs {iia:.3f}): "
                   "this alignment does not single out the claimed variables.")
    if _finite(null) and iia - null < margin:
        out.append(f"the best cell is barely above the no-op baseline ({iia:.3f} vs {null:.3f}): "
                   "the intervention hardly changes what the model does.")
    v, own = best.get("iia_rival_mean"), best.get("iia_rival_null_mean")
    if _finite(v):
        if _finite(own) and _finite(null):
            if v - own >= (iia - null) - margin:
                out.append(f"the rival hypothesis gains almost as much over its no-op baseline "
                           f"({v - own:+.3f} vs {iia - null:+.3f}): this alignment does not single out the "
                           "claimed variables.")
        elif v >= iia - margin:
            out.append(f"the rival hypothesis aligns almost as well ({v:.3f} vs {iia:.3f}): "
                       "this alignment does not single out the claimed variables.")
    return out


def _with_null_baselines(config: Mapping[str, Any], table: pd.DataFrame) -> pd.DataFrame:
    """Fill the no-op baselines of runs stored before they were recorded (they depend only on
    the task and the held-out set, both fixed by run.json)."""
    from roadinterp.errors import RoadinterpError
    from roadinterp.summary import null_baseline
    from roadinterp.tasks import get_task

    missing = [c for c in ("iia_null", "iia_rival_null") if c not in table or table[c].isna().all()]
    if not missing or table.empty:
        return table
    try:
        table = table.copy()
        if "iia_null" in missing:
            table["iia_null"] = null_baseline(config)
        if "iia_rival_null" in missing and table["iia_rival"].notna().any():
            table["iia_rival_null"] = null_baseline(config, next(iter(get_task(config["task"]).rivals)))
    except (RoadinterpError, KeyError, StopIteration, TypeError, ValueError):
        pass  # a config this roadinterp cannot rebuild: show what was stored
    return table


def _summary_html(summary: pd.DataFrame) -> str:
    has_rand = "iia_random_model_mean" in summary
    has_rival = "iia_rival_mean" in summary
    has_null = "iia_null_mean" in summary
    has_train, has_vocab = "train_iia_mean" in summary, "iia_vocab_mean" in summary
    header = [*_CELL_KEYS, "IIA mean ± std", "range", "seeds"] + (["train IIA"] if has_train else []) \
        + (["full-vocabulary IIA"] if has_vocab else [])
    has_rival_null = "iia_rival_null_mean" in summary
    if has_null:
        header.append("no-op baseline")
    if has_rand:
        header.append("random-init mean (max)")
    if has_rival:
        header.append("rival mean (max)")
    has_agree = "seed_agreement" in summary
    if has_agree:
        header.append("seed agreement (random)")
    rows = []
    for _, r in summary.iterrows():
        row = [_label(r[k]) for k in _CELL_KEYS]
        row += [f"{r['iia_mean']:.3f} ± {r['iia_std']:.3f}", f"{r['iia_min']:.3f}–{r['iia_max']:.3f}", int(r["n_seeds"])]
        if has_train:  # memorisation shows as train IIA far above held-out IIA
            row.append(_num(r["train_iia_mean"]))
        if has_vocab:  # top-1 over every token, not only among the answers (MIB's reading)
            row.append(_num(r["iia_vocab_mean"]))
        if has_null:
            row.append(_num(r["iia_null_mean"]))
        if has_rand:
            row.append(f"{_num(r['iia_random_model_mean'])} ({_num(r['iia_random_model_max'])})")
        if has_rival:
            own = f"; no-op {_num(r['iia_rival_null_mean'])}" if has_rival_null else ""
            row.append(f"{_num(r['iia_rival_mean'])} ({_num(r['iia_rival_max'])}{own})")
        if has_agree:
            a, c = r["seed_agreement"], r.get("seed_agreement_chance")
            row.append(f"{_num(a, 2)} ({_num(c, 2)})" if _finite(a) else "")
        rows.append(row)
    numeric = [False] * len(_CELL_KEYS) + [True] * (len(header) - len(_CELL_KEYS))
    return _table(header, rows, numeric=numeric, row_class=["best"] + [""] * (len(rows) - 1))


def _cells_html(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c != "key" and table[c].notna().any()]
    rows = [[_label(v) if not isinstance(v, float) else _num(v) for v in r] for r in table[cols].itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in cols]
    return _table(cols, rows, numeric=numeric)


def run_figures(table: pd.DataFrame, *, static: bool = False) -> list[tuple[str, Any]]:
    """(name, figure) pairs of a run report's IIA section: plotly, or the matplotlib twins with ``static``.

    Per family a layer x position heat map (layers as rows, so a 30-layer scan stays one
    readable column per position), size x family, the best IIA per layer with the
    controls as bands, and per (family, component, size) that scanned several layers or positions
    MIB's layer x position map (``layer-position-*``, :mod:`roadinterp.viz.mib`).
    """
    from roadinterp.viz import learned as Ln
    from roadinterp.viz import static as S

    M = S if static else F
    figs = []
    families = list(dict.fromkeys(table["family"].map(_label)))
    for fam in families:
        figs.append((f"iia-{fam}", M.iia_heatmap(
            table, "position", "layer", reduce="best", where={"family": fam},
            title=f"{fam}: IIA by layer and position (best size and component per square)")))
    figs.append(("iia-size-family", M.iia_heatmap(
        table, "size", "family", reduce="best",
        title="IIA by size and family (best layer, component and position per square)")))
    figs.append(("layer-sweep", (S if static else Ln).layer_sweep(table)))
    from roadinterp.aggregates import groups
    from roadinterp.summary import summarize
    from roadinterp.viz import mib

    for g in groups(summarize(table))[: mib.MAX_GROUPS]:  # MIB's reading: layer x position, best position per layer
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{g['family']}-{g['component']}-s{g['size']}")
        figs.append((f"layer-position-{stem}", (S if static else mib).layer_position(table, **g)))
    return figs


def _slug(key: str) -> str:
    from roadinterp.cellid import CellId

    return CellId.parse(key).stem


def _focus_figures(run_dir, table: pd.DataFrame, cells: Sequence[str], *, static: bool):
    """Per focus cell (in order): key, why shown, its rows, its :func:`~roadinterp.viz.learned.agreement_panels`
    and its (figure name, figure) list. Each cell's saved subspaces are read once, here."""
    from roadinterp.viz import learned as Ln
    from roadinterp.viz import static as S

    M = S if static else Ln
    for key, why in Ln.focus_cells(table, cells):
        rows = Ln.cell_rows(table, key)
        kinds = Ln.saved_kinds(run_dir, rows)
        panels = Ln.agreement_panels(run_dir, rows)
        figs = []
        if "cell" in kinds:
            figs.append((f"angles-{_slug(key)}", M.seed_angles(run_dir, rows)))
        if "subspace" in kinds:
            figs.append((f"subspaces-{_slug(key)}", M.seed_subspaces(run_dir, rows, panels)))
        if not Ln.rowspace_table(rows).empty:
            figs.append((f"rowspace-{_slug(key)}", M.rowspace_split(rows)))
        yield key, why, rows, panels, figs


def learned_figures(run_dir, table: pd.DataFrame, cells: Sequence[str] = (), *,
                    static: bool = False) -> list[tuple[str, str, str, Any]]:
    """(cell key, why shown, figure name, figure) of the "Learned angles" section, focus cells in order.

    Focus cells: the best cell of each family and every cell named in ``cells``
    (``family|layer|component|position|size``). Road and butterfly cells get the angle
    figure; every rotated family with saved subspaces the seed-agreement figure; a cell whose
    site has a registered reader the row-space / dormant split; a cell with none of these gets
    one ``(key, why, "", None)`` entry.
    """
    out = []
    for key, why, _, _, figs in _focus_figures(run_dir, table, cells, static=static):
        out += [(key, why, name, fig) for name, fig in figs] or [(key, why, "", None)]
    return out


def _cell_sentence(rows: pd.DataFrame, panels: Mapping[str, dict]) -> str:
    """IIA, seed agreement and the random-init control's of one cell; ``panels`` from
    :func:`roadinterp.viz.learned.agreement_panels`."""
    from roadinterp.viz import learned as Ln

    iia = rows["iia"]
    s = (f"Held-out IIA {iia.mean():.3f} ± {iia.std() if len(iia) > 1 else 0.0:.3f} "
         f"(range {iia.min():.3f}–{iia.max():.3f}, {len(iia)} seed{'s' if len(iia) != 1 else ''})")
    main = panels[Ln.CONDITIONS[None]]
    if _finite(main["agreement"]):
        s += (f"; seed agreement {main['agreement']:.2f} (mean principal-angle cosine between the seeds' "
              f"subspaces; random subspaces {main['chance']:.2f})")
    if "iia_random_model" in rows and rows["iia_random_model"].notna().any():
        s += f". Random-init control: IIA {rows['iia_random_model'].mean():.3f}"
        ctrl = panels[Ln.CONDITIONS["random_model"]]
        if _finite(ctrl["agreement"]):
            s += f", seed agreement {ctrl['agreement']:.2f}"
    return s + "."


def _learned_html(run_dir, table: pd.DataFrame, summary: pd.DataFrame, cells: Sequence[str]):
    """HTML pieces and plotly figures of the "Learned angles" section."""
    from roadinterp.viz import learned as Ln

    intro = ('<p class="meta">What the rotations learned, read back from the cells saved in the run directory: '
             "for the best cell of each family (and any cell named with <code>--cell</code>), the learned angles "
             "of every RoAd layer of the road/butterfly rotation, every seed overlaid, beside the same cell trained "
             "on the random-init model; and for every rotated family the principal angles between the seeds' "
             "learned subspaces (agreement 1 = the seeds swap the same subspace; random subspaces already score "
             "the level given in brackets). Seeds that reach the same IIA with different subspaces have not found "
             "<em>the</em> place the variable lives. Where the next layer reads the site through one linear map, "
             "the subspace is split into the part that map can see (row space) and the dormant rest (its null "
             "space), with the IIA of the row-space part alone: a subspace that scores only through its dormant "
             "part is an interpretability illusion.</p>")
    body = ["<h2>Learned angles</h2>", intro]
    body.extend(f'<p class="warn">{_e(w)}</p>' for w in Ln.subspace_warnings(summary))
    figs = []
    for _, why, rows, panels, named in _focus_figures(run_dir, table, cells, static=False):
        r = rows.iloc[0]
        body.append(f"<h3>{_e(r['family'])} at layer {_e(_label(r['layer']))} {_e(r['component'])}"
                    f"@{_e(_label(r['position']))}, size {_e(_label(r['size']))} "
                    f'<span class="meta">({_e(why)})</span></h3>')
        body.append(f"<p>{_e(_cell_sentence(rows, panels))}</p>")
        if not named:
            body.append('<p class="meta">No learned parameters were saved for this cell (neuron and boundless '
                        "learn no rotation to compare; runs without a run directory save nothing).</p>")
        for name, fig in named:
            figs.append(fig)
            body.append(_figure_div(fig, name))
    return body, figs


def write_figures(run_dir: str | os.PathLike, out_dir: str | os.PathLike, cells: Sequence[str] = ()) -> list[Path]:
    """The report's key figures as matplotlib PNG and PDF in ``out_dir`` (for a paper): the IIA heat
    maps, the layer sweep and the "Learned angles" figures. Returns the files written."""
    from roadinterp.errors import RunDirError
    from roadinterp.store import read_run
    from roadinterp.viz import learned as Ln
    from roadinterp.viz.static import save_static

    config, table = read_run(run_dir)
    if table.empty:
        raise RunDirError(f"{run_dir} has no finished cells yet: nothing to plot")
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot write figures to {out_dir}: {e.strerror or e}; pass a directory you can write to") from None
    table = Ln.with_seed_agreement(run_dir, _with_null_baselines(config, table))
    figs = run_figures(table, static=True)
    figs += [(name, fig) for _, _, name, fig in learned_figures(run_dir, table, cells, static=True) if fig is not None]
    out = []
    for name, fig in figs:
        for suffix in (".png", ".pdf"):
            out.append(save_static(fig, Path(out_dir) / f"{name}{suffix}"))
    return out


def write_report(run_dir: str | os.PathLike, out_html: str | os.PathLike, cells: Sequence[str] = ()) -> Path:
    """Write one self-contained HTML page for the (finished, partial or empty) run in ``run_dir``.

    ``cells``: extra cells (``family|layer|component|position|size``) to show in the
    "Learned angles" section beside each family's best.
    """
    from roadinterp.store import read_run
    from roadinterp.viz import learned as Ln

    run_dir = Path(run_dir)
    config, table = read_run(run_dir)
    name = run_dir.resolve().name
    title = f"roadinterp alignment run: {name}"
    done = len(table)
    expected = _expected_cells(config)
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="meta">task {_e(config.get("task", "?"))} · model {_e(config.get("model") or "task default")} · '
            f"{done} finished cell{'s' if done != 1 else ''}"
            + (f" of {expected}" if expected else "")
            + f" · report written {_e(_stamp())}</p>"]
    figs: list[tuple[str, Any]] = []
    if table.empty:
        body.append('<p class="empty">No finished cells yet: this run has not stored any result. '
                    "The report is rewritten at the end of every run.</p>")
    else:
        from roadinterp.summary import best_alignment, summarize

        table = Ln.with_seed_agreement(run_dir, _with_null_baselines(config, table))
        for key in cells:
            Ln.cell_rows(table, key)  # an unknown cell fails before any work
        summary = summarize(table)
        best = best_alignment(table)
        # the picture first: the best-alignment sentence and the layer sweep with its control bands
        named = run_figures(table)
        sweep = [(t, fig) for t, fig in named if t == "layer-sweep"]
        body.append("<h2>Best alignment</h2>")
        body.append(f'<p class="best-sentence">{_e(best_sentence(best))}</p>')
        body.extend(_figure_div(fig, t) for t, fig in sweep)
        body.extend(f'<p class="warn">{_e(w)}</p>' for w in _control_warnings(best))
        want = config.get("seeds")
        if isinstance(want, int) and int(best["n_seeds"]) < want:
            have = int(best["n_seeds"])
            msg = f"The best cell has {have} of {want} seeds so far; its spread is not yet known."
            body.append(f'<p class="warn">{_e(msg)}</p>')
        if expected and done < expected:
            body.append(f'<p class="meta">Partial run: {done} of {expected} cells; '
                        "means over fewer seeds than configured are less reliable.</p>")
        body.append("<h2>Summary over seeds</h2>")
        body.append('<p class="meta">One row per cell (family, layer, component, position, size), best mean first. '
                    "IIA: the argmax among the task's answers is the counterfactual label; full-vocabulary IIA "
                    "(token tasks): the top-1 token of the whole vocabulary is its answer token. "
                    "Controls: IIA of the same cell on a randomly initialised model and for the task's rival "
                    "hypothesis; a real alignment scores high on IIA and low on both.</p>")
        body.append(_collapsed(summary, _summary_html, "cells"))
        from roadinterp.viz.mib import section_html

        mib = [(t, fig) for t, fig in named if t.startswith("layer-position-")]
        body += section_html(summary) + [_figure_div(fig, t) for t, fig in mib]
        body.append("<h2>Controls and warnings</h2>")
        body.append(f'<p class="meta">{_e(_CONTROLS_NOTE)}</p>')
        body.append(_collapsed(summary, _controls_html, "cells"))
        body.append("<h2>IIA heat maps</h2>")
        rest = [(t, fig) for t, fig in named if t != "layer-sweep" and not t.startswith("layer-position-")]
        body.extend(_figure_div(fig, t) for t, fig in rest)
        figs = [fig for _, fig in sweep] + [fig for _, fig in mib] + [fig for _, fig in rest]
        learned_body, learned_figs = _learned_html(run_dir, table, summary, cells)
        body.extend(learned_body)
        figs += learned_figs
        body.append(f"<h2>All cells ({done})</h2>")
        body.append(_collapsed(table, _cells_html, "rows"))
    body.append("<h2>Configuration (run.json)</h2>")
    body.append(_table(["field", "value"], [[k, json.dumps(v)] for k, v in sorted(config.items())]))
    return _write_atomic(Path(out_html), _page(title, body, with_plotly=bool(figs)))
