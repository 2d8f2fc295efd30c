"""Alignment search on a real pretrained LM: SmolLM2-135M or Gemma-3-270M on ioi and ravel-city.

MIB-style, one causal variable at a time: IOI's ``io_position`` (*which* of the two
opening names is the indirect object) and ``io_token`` (*what* that name is), and
RAVEL's ``country`` of a city. Each is a layer scan at the last token with the
butterfly and das families, 3 seeds and every control (the same cell on a randomly
re-initialised copy of the model, the task's rival hypothesis, the no-op baseline, the
whole-site patch, the row-space part), written into docs/results.md with the mean and
spread over seeds of **every** layer searched. Prompts are filtered to those the model
answers correctly; the section records each task's base accuracy and kept fraction.

    python experiments/lm_alignment.py --run runs/lm --out docs/results.md --workers 2
    python experiments/lm_alignment.py --model zoo:gemma3-270m --scans ioi-io_position --run runs/lm-gemma3 \
        --out docs/results.md --workers 2          # the same protocol on the second family
    python experiments/lm_alignment.py --quick --run runs/lm-quick --out /tmp/results.md   # a smoke run

The scan resumes (``--resume`` per run directory); ``--render-only`` writes the section
from whatever cells are stored (a scan cut short says so).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results_md import write_section  # noqa: E402

import roadinterp as ri  # noqa: E402
from roadinterp.io import write_text_atomic  # noqa: E402
from roadinterp.search import get_bound_task  # noqa: E402

# per model: its section's heading, the layers a full scan searches (every third / every other one and
# the last), and the widths the section's legend names
MODELS = {
    "zoo:smollm2-135m": dict(heading="## Alignment on a pretrained LM: SmolLM2-135M (ioi, ravel-city)",
                             layers=list(range(0, 30, 3)), width=576, vocab="49,152"),
    "zoo:gemma3-270m": dict(heading="## Alignment on a pretrained LM: Gemma-3-270M (ioi)",
                            layers=[*range(0, 18, 2), 17], width=640, vocab="262,144"),
}
# (run name, task, the variable aligned)
SCANS = [("ioi-io_position", "ioi", "io_position"), ("ravel-city-country", "ravel-city", "country"),
         ("ioi-io_token", "ioi", "io_token")]
FULL = dict(seeds=3, n_train=256, n_test=128, epochs=3, batch_size=32, size=16)
QUICK = dict(layers=[21], seeds=2, n_train=32, n_test=32, epochs=1, batch_size=16, size=8)


# What MIB published for the same tasks, and why it is not set cell by cell beside ours.
MIB = [
    "**Beside MIB.** MIB (Mueller et al. 2025, causal variable localization track) runs DAS, DBM, PCA, SAE and "
    "full-vector baselines on IOI, MCQA, arithmetic and RAVEL with GPT-2 small, Qwen-2.5-0.5B, Gemma-2-2B and "
    "Llama-3.1-8B, and finds DAS the best featurizer. None of its models is {model} and its prompts, "
    "counterfactual splits and aggregation (per layer the best position, then the mean and the max over layers) "
    "are its own, so these are references for scale, not rows of the same table:",
    "",
    "- *IOI* is not scored as an IIA in MIB: it featurizes four attention heads of GPT-2 small (layers 7-8, every "
    "position), and its score is the squared error between the model's IO-minus-S logit difference and a linear "
    "causal model's target (lower is better). The DAS baseline's result files give 2.20 (`output_position`) and "
    "2.08 (`output_token`), means over the three public test splits (MIB's baseline outputs, "
    "`MIB-causal-variable-track/all_results_including_heatmaps/ioi_results/` in a public fork of "
    "aaronmueller/MIB, commit 949aed0). Our `io_position` / `io_token` are IIAs at the last token's residual "
    "stream: there is no MIB number to set beside them.",
    "- *RAVEL* (residual stream at the entity's last token or the last token): DAS on Gemma-2-2B reaches 0.957 "
    "(country), 0.848 (continent), 0.812 (language) at its best layer, as the public MIB leaderboard gives them "
    "(restated by a third-party submission, github.com/bojro/plot-mib-submissions; not read from the paper's "
    "table, which this project's offline sources did not hold).",
    "- MIB's RAVEL, MCQA and arithmetic numbers for Qwen, Llama and the other baselines exist only as raw result "
    "files too large for the offline sources to aggregate; they are not quoted here.",
    "",
]


def command(args, task: str, variable: str, name: str, families: str) -> str:
    c = args.scan
    return (f"roadinterp align --model {args.model} --task {task} --variables {variable} --family {families} "
            f"--positions last --layers {','.join(map(str, c['layers']))} --size {c['size']} --seeds {c['seeds']} "
            f"--n-train {c['n_train']} --n-test {c['n_test']} --epochs {c['epochs']} "
            f"--batch-size {c['batch_size']} --workers {args.workers} --out {args.run}/{name}")


TIMING = "timing.json"  # a live scan's wall time, kept in its run directory for --render-only


def _wall(run: Path) -> float:
    """Wall seconds of the live scan that filled ``run`` (NaN when none was recorded)."""
    try:
        return float(json.loads((run / TIMING).read_text())["wall_s"])
    except (OSError, ValueError, KeyError):
        return float("nan")


def _f(r, key: str) -> str:
    v = r.get(key, float("nan"))
    return "–" if v != v else f"{v:.3f}"


def render(results, args) -> str:
    c = args.scan
    lines = []
    if args.quick:
        lines += [f"**Smoke run** (`--quick`): layers {c['layers']}, {c['seeds']} seeds, {c['n_train']} training "
                  "counterfactuals. Not a result.", ""]
    lines += ["Commands (one per variable; then `python experiments/lm_alignment.py"
              + (" --quick" if args.quick else "")
              + ("" if args.model == "zoo:smollm2-135m" else f" --model {args.model}") + f" --run {args.run} --out {args.out} --render-only` renders "
              "this section from the stored cells):", ""]
    lines += [f"    {command(args, task, var, name, ','.join(dict.fromkeys(table['family'])))}"
              for name, (task, var, table, *_rest) in results.items()]
    lines += ["", "Every layer searched, mean ± std over seeds of held-out IIA (bases and sources from held-out "
              "entities: names, cities). *no-op*: IIA of changing nothing; *site patch*: IIA of patching the whole "
              f"{args.spec['width']}-wide residual at the last token (an upper reference for any subspace); *random-init*: the same "
              "cell trained on a re-initialised copy of the model; *rival*: the task's false hypothesis trained the "
              "same way (its own no-op in brackets); *vocab IIA*: held-out IIA read as MIB reads it, the top-1 token "
              f"of the whole {args.spec['vocab']}-token vocabulary must be the counterfactual answer (– for runs stored before "
              "that column existed).", ""]
    for name, (task, var, table, stats, secs) in results.items():
        acc = f"{stats['train']['base_accuracy']:.3f} / {stats['test']['base_accuracy']:.3f}"
        kept = f"{stats['train']['kept']}/{stats['train']['n']} / {stats['test']['kept']}/{stats['test']['n']}"
        lines += [f"### {task}: `{var}`", "",
                  f"Base accuracy (full vocabulary) train / test {acc}; kept prompts {kept}; wall time "
                  + ("not recorded" if secs != secs else f"{secs / 60:.1f} min") + ".", "",
                  "| family | layer | seeds | held-out IIA | range | vocab IIA | train IIA | no-op | site patch | "
                  "random-init | rival (its no-op) | warnings |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        s = ri.summarize(table).sort_values(["family", "layer"])
        for _, r in s.iterrows():
            lines.append(
                f"| {r['family']} | {r['layer']} | {int(r['n_seeds'])} | {r['iia_mean']:.3f} ± {r['iia_std']:.3f} | "
                f"{r['iia_min']:.3f}–{r['iia_max']:.3f} | {_f(r, 'iia_vocab_mean')} | {_f(r, 'train_iia_mean')} | "
                f"{_f(r, 'iia_null_mean')} | "
                f"{_f(r, 'iia_site_patch_mean')} | {_f(r, 'iia_random_model_mean')} | {_f(r, 'iia_rival_mean')} "
                f"({_f(r, 'iia_rival_null_mean')}) | {r.get('warnings') or ''} |")
        for fam, g in s.groupby("family"):
            lines.append(f"\n*{fam}, over all {len(g)} layers searched*: held-out IIA mean {g['iia_mean'].mean():.3f}, "
                         f"min {g['iia_mean'].min():.3f}, max {g['iia_mean'].max():.3f} (layer "
                         f"{int(g.loc[g['iia_mean'].idxmax(), 'layer'])}); no-op {g['iia_null_mean'].mean():.3f}.")
        lines.append("")
    lines += [line.replace("{model}", args.spec["heading"].split(": ")[1].split(" (")[0]) for line in MIB]
    missing = [name for name, *_ in SCANS if name not in results]
    if missing:
        lines.append(f"- **Not in this section** (not run, or no stored cells): {', '.join(missing)}; "
                     f"`python experiments/lm_alignment.py --scans {','.join(missing)} --run {args.run}` runs them.")
    if args.partial:
        lines.append(f"- Rendered from stored cells (`--render-only`); wall times are the live scans' (`{TIMING}` in "
                     "each run directory). Peak memory is not recorded by a render.")
    else:
        lines.append(f"- Peak memory (max RSS of the scan process, workers excluded): {args.peak_mb:.0f} MiB.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="zoo:smollm2-135m", choices=sorted(MODELS), help="the pretrained LM")
    ap.add_argument("--run", default="runs/lm", help="run directory root (one sub-directory per variable; resumed)")
    ap.add_argument("--out", default="docs/results.md", help="markdown file whose section this writes")
    ap.add_argument("--scans", default=",".join(n for n, *_ in SCANS), help="which scans (run names) to run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--families", default="butterfly,das", help="intervention families (comma-separated)")
    ap.add_argument("--quick", action="store_true", help="a smoke run (see the module docstring)")
    ap.add_argument("--render-only", action="store_true",
                    help="write the section from the cells already stored in --run (a scan cut short)")
    args = ap.parse_args(argv)
    args.spec = MODELS[args.model]
    args.scan = QUICK if args.quick else {**FULL, "layers": args.spec["layers"]}
    wanted = args.scans.split(",")
    unknown = sorted(set(wanted) - {n for n, *_ in SCANS})
    if unknown:
        ap.error(f"unknown scans {unknown}; known: {', '.join(n for n, *_ in SCANS)}")
    results = {}
    args.partial = args.render_only
    for name, task, var in SCANS:
        if name not in wanted:
            continue
        run = Path(args.run) / name
        if args.render_only:
            from roadinterp.store import read_run

            if (run / "run.json").is_file():
                results[name] = (task, var, read_run(run)[1], get_bound_task(task, args.model).stats, _wall(run))
            continue
        t0 = time.perf_counter()
        scan = {k: v for k, v in args.scan.items() if k != "size"}
        table = ri.search(task=task, model=args.model, variables=[var], families=args.families.split(","),
                          positions=["last"], sizes=[args.scan["size"]], controls=True, out=str(run), resume=True,
                          workers=args.workers, batched=True, **scan)
        wall = time.perf_counter() - t0
        results[name] = (task, var, table, get_bound_task(task, args.model).stats, wall)
        write_text_atomic(run / TIMING, json.dumps({"wall_s": wall, "workers": args.workers,
                                                    "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}),
                          mode=0o644)
        print(name, f"{results[name][4]:.0f} s", flush=True)
    args.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_section(args.out, args.spec["heading"], render(results, args))
    print(f"wrote {args.spec['heading']!r} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
