"""Reading a results table: summaries over seeds, the best alignment, the no-op baseline.

A search stores one row per cell and seed (:mod:`roadinterp.store`). :func:`summarize`
groups the seeds of each cell (mean, spread, range, controls, warning codes),
:func:`annotate` gives every seed's row its cell's warnings, :func:`best_alignment`
names the cell with the best *mean* IIA, :func:`describe_best` says so in one sentence (the
CLI prints it, the report leads with it), and :func:`null_baseline` is the IIA of doing
nothing on a run's held-out set (:func:`roadinterp.controls.null_iia`), the floor every
IIA is read against. These only read tables and run.json, so reports
(:mod:`roadinterp.viz.report`) use them without importing the search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from roadinterp.cellid import CELL_FIELDS
from roadinterp.controls import cell_warnings, describe_warnings, is_control_column, join_codes, null_iia

SCORES = ("train_iia", "iia_vocab")  # per-seed scores beside ``iia`` (not controls): summarised like controls


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, spread and range over seeds per (family, layer, component, position, size), with warnings.

    ``train_iia`` and ``iia_vocab`` (held-out IIA over the full vocabulary), when stored and not
    all empty (vector tasks, runs from before the column), and every control column (``iia_*``,
    ``train_iia_rival[...]``, ``dormant_fraction``) get ``_mean`` and ``_max``; ``warnings`` holds :func:`roadinterp.controls.cell_warnings`
    of the row, ``;``-separated. ``seed_agreement`` (when stored): mean principal-angle cosine
    between the seeds' learned subspaces (:mod:`roadinterp.subspace`), with
    ``seed_agreement_chance`` for random subspaces.
    """
    if table.empty:
        return table
    keys = list(CELL_FIELDS)
    agg = {"iia": ["mean", "std", "min", "max", "count"]}
    for c in table.columns:
        if (c in SCORES or is_control_column(c)) and pd.to_numeric(table[c], errors="coerce").notna().any():
            agg[c] = ["mean", "max"]
    agree = [c for c in ("seed_agreement", "seed_agreement_chance") if c in table and table[c].notna().any()]
    for c in agree:  # one value per cell, repeated on its seeds' rows
        agg[c] = ["mean"]
    numeric = table.assign(**{c: pd.to_numeric(table[c], errors="coerce") for c in agg})
    s = numeric.groupby(keys, sort=False).agg(agg)
    s.columns = ["_".join(c) for c in s.columns]
    s = s.rename(columns={"iia_count": "n_seeds", **{f"{c}_mean": c for c in agree}}).reset_index()
    s["iia_std"] = s["iia_std"].fillna(0.0)
    s["warnings"] = [join_codes(cell_warnings(r)) for r in s.to_dict("records")]
    return s.sort_values("iia_mean", ascending=False, kind="stable").reset_index(drop=True)


def best_alignment(table: pd.DataFrame) -> dict[str, Any] | None:
    """The cell with the highest *mean* IIA over seeds (with its controls and ``warnings``).

    Whoever names it must name its warnings too (:func:`roadinterp.controls.describe_warnings`):
    the best cell can be an ``illusion-suspect``.
    """
    s = summarize(table)
    return None if s.empty else s.iloc[0].to_dict()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _label(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def describe_best(best: Mapping[str, Any]) -> str:
    """The best alignment (a :func:`best_alignment` row) in one sentence: the cell, its mean IIA
    over seeds with spread and range, every control that ran, and its warnings (never leaving
    out ``illusion-suspect``). The one wording: the CLI prints it and the report leads with it."""
    n = int(best["n_seeds"])
    s = (f"Best alignment: {best['family']} at layer {_label(best['layer'])} "
         f"{best['component']}@{_label(best['position'])}, size {_label(best['size'])}: IIA "
         f"{best['iia_mean']:.3f} ± {best['iia_std']:.3f}, the mean over {n} seed{'s' if n != 1 else ''} "
         f"(range {best['iia_min']:.3f}-{best['iia_max']:.3f}).")
    ctrl = []
    if _finite(best.get("iia_random_model_mean")):
        ctrl.append(f"random-init model {best['iia_random_model_mean']:.3f}")
    if _finite(best.get("iia_rival_mean")):
        own = best.get("iia_rival_null_mean")
        ctrl.append(f"rival hypothesis {best['iia_rival_mean']:.3f}"
                    + (f" (its no-op baseline {own:.3f})" if _finite(own) else ""))
    if _finite(best.get("iia_null_mean")):
        ctrl.append(f"no-op baseline {best['iia_null_mean']:.3f}")
    s += f" Controls: {', '.join(ctrl)}." if ctrl else " No controls were run for this cell."
    text = describe_warnings(best.get("warnings") or "")
    return s + (f" Warnings: {text}." if text else "")


def annotate(table):
    """``table`` (one row per seed) with a ``warnings`` column: its cell's codes, ``;``-separated."""
    table = table.copy()
    if table.empty or "iia" not in table or table["iia"].isna().all():
        table["warnings"] = pd.Series([""] * len(table), dtype=object)
        return table
    keys = list(CELL_FIELDS)
    s = summarize(table.drop(columns=["warnings"], errors="ignore"))
    lookup = {tuple(str(v) for v in r[:5]): r[5] for r in s[keys + ["warnings"]].itertuples(index=False)}
    table["warnings"] = [lookup.get(tuple(str(v) for v in r), "") for r in table[keys].itertuples(index=False)]
    return table


def null_baseline(config: Any, hypothesis: str = "main") -> float:
    """:func:`null_iia` of the held-out set a search scores on (for runs stored without it).

    ``config`` is a ``SearchConfig`` or its run.json dict; the held-out set depends only on
    the task, ``n_test``, ``mode``, ``test_seed`` and (main hypothesis) ``variables``.
    """
    from roadinterp.dii.config import DIIConfig
    from roadinterp.tasks import get_task

    c = config.to_json() if hasattr(config, "to_json") else dict(config)
    if isinstance(c.get("dii"), Mapping):  # nested training fields (run.json since the dii package)
        c = {**c, **c["dii"]}
    default = DIIConfig()
    test = get_task(c["task"]).counterfactuals(
        c.get("n_test", default.n_test), split="test", seed=c.get("test_seed", default.test_seed),
        hypothesis=hypothesis, variables=c.get("variables") if hypothesis == "main" else None,
        mode=c.get("mode", default.mode))
    return null_iia(test)
