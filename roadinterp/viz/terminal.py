"""The results table and the best-alignment sentence as ``roadinterp align`` prints them (rich).

The table fits 120 columns: per cell the IIA mean and spread over seeds, the no-op baseline,
the random-init and rival controls and the warning codes; ``wide`` adds the range, train IIA,
full-vocabulary IIA, seed agreement and the whole-site patch (the report and results.csv
always hold every column). The sentence is :func:`roadinterp.summary.describe_best`, the
report's wording too. A scan over several layers or positions adds MIB's aggregates
(:mod:`roadinterp.aggregates`: per layer the best position, then mean | max over layers) for
IIA and each control, one row per (family, component, size). Reads only a summary table.
"""

from __future__ import annotations

# columns of the results table: (header, summary column, digits); WIDE ones only with --wide
_COLUMNS = [("IIA mean ± std", None, 3), ("no-op", "iia_null_mean", 3), ("random-init", "iia_random_model_mean", 3),
            ("rival", "iia_rival_mean", 3)]
_WIDE = [("range", None, 3), ("train IIA", "train_iia_mean", 3), ("vocab IIA", "iia_vocab_mean", 3),
         ("seed agree (random)", None, 2), ("site patch", "iia_site_patch_mean", 3)]


def print_summary(console, summary, best, out, *, wide: bool = False) -> None:
    """The results table (120 columns; every control with ``wide``) and the best-alignment sentence."""
    from rich.table import Table

    from roadinterp.cellid import CellId
    from roadinterp.summary import describe_best

    def f(r, c, digits=3):
        v = r.get(c)
        return "-" if v is None or v != v else f"{v:.{digits}f}"

    columns = _COLUMNS + (_WIDE if wide else [])
    t = Table(title="alignment search: held-out IIA over seeds")
    for col in ("family", "layer", "site", "size", "seeds", *(c[0] for c in columns), "warnings"):
        t.add_column(col, no_wrap=col != "warnings")
    for _, r in summary.iterrows():
        cells = []
        for header, col, digits in columns:
            if header == "IIA mean ± std":
                cells.append(f"{r['iia_mean']:.3f} ± {r['iia_std']:.3f}")
            elif header == "range":
                cells.append(f"{r['iia_min']:.3f}-{r['iia_max']:.3f}")
            elif header.startswith("seed agree"):
                agree = f(r, "seed_agreement", 2)
                cells.append(agree if agree == "-" else f"{agree} ({f(r, 'seed_agreement_chance', 2)})")
            else:
                cells.append(f(r, col, digits))
        t.add_row(str(r["family"]), str(r["layer"]), CellId.from_row(r).where, str(r["size"]),
                  str(int(r["n_seeds"])), *cells, str(r.get("warnings") or "").replace(";", "; "))
    console.print(t)
    print_aggregates(console, summary, wide=wide)
    if best:
        console.print(describe_best(best), markup=False, highlight=False, soft_wrap=True)
    console.print(f"results: {out}/results.csv  report: {out}/report.html", markup=False, soft_wrap=True)


# MIB's aggregates: (header, metric of roadinterp.aggregates.METRICS); WIDE ones only with --wide
_AGG = [("IIA", "iia"), ("site patch", "iia_site_patch"), ("random-init", "iia_random_model")]
_AGG_WIDE = [("vocab IIA", "iia_vocab")]


def print_aggregates(console, summary, *, wide: bool = False) -> None:
    """MIB's mean | max over layers of the best position per layer, for IIA and every control present
    (the no-op baseline once: one held-out set serves every cell); nothing for a run of one cell per
    (family, component, size)."""
    from rich.table import Table

    from roadinterp.aggregates import over_layers
    from roadinterp.cellid import CellId

    agg = over_layers(summary)
    if agg.empty or int((agg["layers"] * agg["positions"]).max()) < 2:
        return
    cols = [(h, m) for h, m in _AGG + (_AGG_WIDE if wide else []) if f"{m}_layer_mean" in agg]

    def f(v):
        return "-" if v is None or v != v else f"{v:.3f}"

    t = Table(title="MIB's aggregates: best position per layer, then mean | max over layers")
    has_null = "iia_null_layer_mean" in agg
    for col in ("family", "size", "layers x pos", *(h for h, _ in cols), *(["no-op"] if has_null else []),
                "max at"):
        t.add_column(col, no_wrap=True)
    for _, r in agg.iterrows():
        cell = CellId(r["family"], int(r["best_layer"]), r["component"], r["best_position"], int(r["size"]))
        where = f"L{cell.layer} {cell.where}"
        t.add_row(str(r["family"]), str(r["size"]), f"{r['layers']} x {r['positions']}",
                  *(f"{f(r[f'{m}_layer_mean'])} | {f(r[f'{m}_layer_max'])}" for _, m in cols),
                  *([f(r["iia_null_layer_mean"])] if has_null else []), where)
    console.print(t)
