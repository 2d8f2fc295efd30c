"""Render an align run's summary (mean ± std over seeds, range, controls) as a results.md section.

    python experiments/render_run.py runs/interval --heading "## Alignment: interval" \
        --command "roadinterp align --task interval ..." --out docs/results.md

Every number in the section comes from the run directory's results store.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results_md import write_section  # noqa: E402

import roadinterp as ri  # noqa: E402
from roadinterp.store import read_run  # noqa: E402


def summary_table(table, config: dict | None = None) -> list[str]:
    """Markdown rows; ``config`` (run.json) fills the no-op baseline for runs stored without it."""
    s = ri.summarize(table)
    if config is not None and ("iia_null_mean" not in s or "iia_rival_null_mean" not in s):
        from roadinterp.search import SearchConfig
        from roadinterp.summary import null_baseline
        from roadinterp.tasks import get_task

        cfg = SearchConfig.from_json(config)
        s["iia_null_mean"] = null_baseline(cfg)
        rivals = list(get_task(cfg.task).rivals)
        s["iia_rival_null_mean"] = null_baseline(cfg, rivals[0]) if rivals else float("nan")
    lines = ["| family | layer | position | size | seeds | IIA mean ± std | range | no-op baseline | "
             "random-init model | rival hypothesis (its no-op) | subspace vs site patch (no-op) | "
             "row-space part (dormant fraction) | warnings |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in s.sort_values(["layer", "position", "iia_mean"], ascending=[True, True, False]).iterrows():
        lines.append(
            f"| {r['family']} | {r['layer']} | {r['position']} | {r['size']} | {int(r['n_seeds'])} | "
            f"{r['iia_mean']:.3f} ± {r['iia_std']:.3f} | {r['iia_min']:.3f}–{r['iia_max']:.3f} | "
            f"{r.get('iia_null_mean', float('nan')):.3f} | "
            f"{r.get('iia_random_model_mean', float('nan')):.3f} | {r.get('iia_rival_mean', float('nan')):.3f} "
            f"({r.get('iia_rival_null_mean', float('nan')):.3f}) | "
            f"{_site_patch(r)} | {_rowspace(r)} | {(r.get('warnings') or '').replace(';', ', ')} |"
        )
    best = ri.best_alignment(table)
    from roadinterp.controls import describe_warnings

    warn = describe_warnings(best.get("warnings") or "")
    lines += ["", "No-op baseline: the IIA of an intervention that changes nothing (share of held-out "
                  "counterfactuals whose label equals the base label); an alignment means something only "
                  "well above it. Site patch: the learned subspace vs interchanging the whole site vector, "
                  "both on counterfactuals that take every variable from one source (its no-op in "
                  "parentheses); warnings: docs/concepts.md#controls-and-warnings.", "",
              f"Best alignment by mean: **{best['family']} at layer {best['layer']} {best['component']}@"
              f"{best['position']}**, IIA {best['iia_mean']:.3f} ± {best['iia_std']:.3f} over "
              f"{int(best['n_seeds'])} seeds" + (f"; warnings: {warn}." if warn else ".")]
    return lines


def _site_patch(r) -> str:
    """'subspace vs site patch (no-op)' on the one-source counterfactuals, or '-' when not run."""
    j, sp, n = (r.get(c, float("nan")) for c in ("iia_joint_mean", "iia_site_patch_mean", "iia_joint_null_mean"))
    return "-" if math.isnan(sp) else f"{j:.3f} vs {sp:.3f} ({n:.3f})"


def _rowspace(r) -> str:
    """IIA of the subspace's row-space part and its dormant fraction, or '-' where no reader is registered."""
    v, f = r.get("iia_rowspace_mean", float("nan")), r.get("dormant_fraction_mean", float("nan"))
    return "-" if math.isnan(v) else f"{v:.3f} ({f:.2f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run directory written by roadinterp align")
    ap.add_argument("--heading", required=True, help="section heading, starting with '## '")
    ap.add_argument("--command", required=True, help="the command that produced the run")
    ap.add_argument("--intro", default="", help="a sentence or two of context")
    ap.add_argument("--out", default="docs/results.md")
    a = ap.parse_args(argv)
    config, table = read_run(a.run)
    body = [f"Command: `{a.command}`; rendered by `python experiments/render_run.py {a.run} ...`.", ""]
    if a.intro:
        body += [a.intro, ""]
    body += summary_table(table, config)
    write_section(a.out, a.heading, "\n".join(body))
    print(f"wrote {a.heading!r} to {a.out} from {a.run} ({len(table)} cells)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
