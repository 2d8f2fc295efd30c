"""Alignment search on a real pretrained LM: SmolLM2-135M on ioi and ravel-city.

A layer scan at the last token with the butterfly and das families, several seeds and
the controls (the same cell on a randomly re-initialised copy of the same config, the
task's rival hypothesis, the no-op baseline), written into docs/results.md beside MIB's
published DAS numbers. Prompts are filtered to those the model answers correctly; the
section records each task's base accuracy and kept fraction.

The full scan (every third layer, 3 seeds, 2048 training counterfactuals) is hours of CPU
on the reference machine; ``--quick`` is the reduced scan this repository reports, and
says so in the section it writes.

    python experiments/lm_alignment.py --run runs/lm --out docs/results.md            # full
    python experiments/lm_alignment.py --quick --run runs/lm-quick --out docs/results.md
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results_md import write_section  # noqa: E402

import roadinterp as ri  # noqa: E402
from roadinterp.search import get_bound_task  # noqa: E402

HEADING = "## Alignment on a pretrained LM: SmolLM2-135M (ioi, ravel-city)"
MODEL = "zoo:smollm2-135m"
FULL = dict(layers=list(range(0, 30, 3)), seeds=3, n_train=2048, n_test=512, epochs=2, batch_size=32)
QUICK = dict(layers=[15, 27], seeds=1, n_train=64, n_test=32, epochs=1, batch_size=16)
SIZES = {"ioi": 16, "ravel-city": 16}


def command(args, task) -> str:
    c = args.scan
    return (f"roadinterp align --model {MODEL} --task {task} --family butterfly,das --positions last "
            f"--layers {','.join(map(str, c['layers']))} --size {SIZES[task]} --seeds {c['seeds']} "
            f"--n-train {c['n_train']} --n-test {c['n_test']} --epochs {c['epochs']} "
            f"--batch-size {c['batch_size']} --out {args.run}/{task}")


def render(results, args) -> str:
    c = args.scan
    lines = []
    if args.quick:
        lines += [f"**Reduced scan** (`--quick`): layers {c['layers']} (not every third layer), {c['seeds']} seeds "
                  f"(not 3), {c['n_train']} training / {c['n_test']} held-out counterfactuals, {c['epochs']} epoch, "
                  f"batch {c['batch_size']}. The full scan (`python experiments/lm_alignment.py`) did not fit the "
                  "shared 2-core machine; these numbers are a smoke-level reading, not the full result.", ""]
    lines += ["Commands (then `python experiments/lm_alignment.py"
              + (" --quick" if args.quick else "") + f" --run {args.run} --out {args.out}` renders this section):", ""]
    lines += [f"    {command(args, t)}" for t in results]
    lines += ["", "| task | base accuracy train / test (full vocab) | kept prompts train / test | family | layer | "
              "seeds | held-out IIA mean ± std | range | train IIA | no-op | random-init | rival (its no-op) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, (table, stats, secs) in results.items():
        s = ri.summarize(table).sort_values(["layer", "family"])
        acc = f"{stats['train']['base_accuracy']:.3f} / {stats['test']['base_accuracy']:.3f}"
        kept = (f"{stats['train']['kept']}/{stats['train']['n']} / {stats['test']['kept']}/{stats['test']['n']}")
        for _, r in s.iterrows():
            lines.append(
                f"| {task} | {acc} | {kept} | {r['family']} | {r['layer']} | {int(r['n_seeds'])} | "
                f"{r['iia_mean']:.3f} ± {r['iia_std']:.3f} | {r['iia_min']:.3f}–{r['iia_max']:.3f} | "
                f"{r.get('train_iia_mean', float('nan')):.3f} | {r.get('iia_null_mean', float('nan')):.3f} | "
                f"{r.get('iia_random_model_mean', float('nan')):.3f} | {r.get('iia_rival_mean', float('nan')):.3f} "
                f"({r.get('iia_rival_null_mean', float('nan')):.3f}) |")
    lines += ["", "MIB (Mueller et al. 2025, causal variable localization track) runs DAS on IOI (output token, "
              "output position), MCQA, arithmetic and RAVEL (country, continent, language) on GPT-2 small, "
              "Qwen-2.5-0.5B, Gemma-2-2B and Llama-3.1-8B, and finds DAS the best featurizer. Those are other, "
              "larger models with MIB's own prompts, counterfactuals and metric; their per-cell DAS numbers were "
              "not available in this session's sources, so no number is set beside ours here.", ""]
    for task, (table, stats, secs) in results.items():
        best = ri.best_alignment(table)
        lines.append(f"- **{task}**: best {best['family']} at layer {best['layer']}, held-out IIA "
                     f"{best['iia_mean']:.3f} ± {best['iia_std']:.3f} ({int(best['n_seeds'])} seeds); "
                     f"wall time {secs / 60:.1f} min.")
    if args.partial:
        lines.append("- Rendered from the cells stored when the scan was stopped (`--render-only`); wall time is "
                     "from the run directory's first to last write. Peak memory was not recorded for this run.")
    else:
        lines.append(f"- Peak memory (max RSS of the scan process): {args.peak_mb:.0f} MiB.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/lm", help="run directory root (one sub-directory per task; resumed)")
    ap.add_argument("--out", default="docs/results.md", help="markdown file whose section this writes")
    ap.add_argument("--tasks", default="ioi,ravel-city")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the reduced scan (see the module docstring)")
    ap.add_argument("--render-only", action="store_true",
                    help="write the section from the cells already stored in --run (a scan cut short)")
    args = ap.parse_args(argv)
    args.scan = QUICK if args.quick else FULL
    results = {}
    if args.render_only:
        from roadinterp.store import read_run

        for task in args.tasks.split(","):
            run = Path(args.run) / task
            if (run / "run.json").is_file():
                table = read_run(run)[1]
                wall = (run / "results.db").stat().st_mtime - (run / "run.json").stat().st_mtime
                results[task] = (table, get_bound_task(task, MODEL).stats, wall)
        args.peak_mb = float("nan")
        args.partial = True
        write_section(args.out, HEADING, render(results, args))
        return 0
    args.partial = False
    for task in args.tasks.split(","):
        t0 = time.perf_counter()
        table = ri.search(task=task, model=MODEL, families=["butterfly", "das"], positions=["last"],
                          sizes=[SIZES[task]], controls=True, out=f"{args.run}/{task}", resume=True,
                          workers=args.workers, batched=True, **args.scan)
        stats = get_bound_task(task, MODEL).stats
        results[task] = (table, stats, time.perf_counter() - t0)
        print(task, f"{results[task][2]:.0f} s", stats, flush=True)
    args.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_section(args.out, HEADING, render(results, args))
    print(f"wrote {HEADING!r} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
