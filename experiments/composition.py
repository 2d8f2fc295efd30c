"""Composing behaviour adapters trained separately: RoAd on disjoint blocks vs LoReFT rows.

On ``zoo:behaviour-base-gpt2`` (trained on the base behaviour, the ones digit of a + b)
we train, *separately and never together*, one adapter for ``op`` (subtraction) and one
for ``format`` (answer as a letter), then evaluate base / op only / format only / op+format
on every target, including the combined one (the letter of a - b).

* RoAd: each behaviour owns half of the 2D blocks at every site; op+format is
  ``roadinterp.compose`` (exact union of the two maps).
* LoReFT-style baseline: each behaviour gets half the rank; op+format stacks the rows
  (pyreft's composition). The RoAd paper reports that this baseline fails to compose.

Plus a lambda sweep on the ``format`` component (angles x lambda) inside the composition.

    python experiments/composition.py            # full run (3 seeds), writes docs/results.md
    python experiments/composition.py --quick --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import roadinterp as ri  # noqa: E402
from roadinterp.adapters.attach import evaluate  # noqa: E402
from roadinterp.adapters.compose import compose, split_blocks  # noqa: E402
from roadinterp.adapters.composition import behaviour_table, train_composable  # noqa: E402
from roadinterp.interventions.loreft import LoreftAdapter, concat_loreft  # noqa: E402
from roadinterp.sites import validate_site  # noqa: E402
from roadinterp.tasks import behaviour_data  # noqa: E402
from roadinterp.training import train_adapter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_md import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "zoo:behaviour-base-gpt2"
NAMES = ("op", "format")
SECTION = "## Composition"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run for tests (2 seeds, few steps)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 2)")
    p.add_argument("--steps", type=int, default=None, help="training steps per adapter (default 250, quick 15)")
    p.add_argument("--variant", default="road_4", help="RoAd variant (road_1 | road_2 | road_4)")
    p.add_argument("--road-lr", type=float, default=0.2)
    p.add_argument("--rank", type=int, default=8, help="LoReFT total rank, split evenly between the tasks")
    p.add_argument("--loreft-lr", type=float, default=0.01)
    p.add_argument("--layers", default="0,1", help="layers whose block_output (all positions) is adapted")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"), help="markdown file; its Composition section is replaced")
    a = p.parse_args(argv)
    a.seeds = a.seeds or (2 if a.quick else 3)
    a.steps = a.steps or (5 if a.quick else 250)
    a.n_train = a.n_train or (256 if a.quick else 4000)
    a.n_test = a.n_test or (64 if a.quick else 1000)
    return a


def fmt(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def mean_table(tables: list[pd.DataFrame]) -> pd.DataFrame:
    stacked = np.stack([t.to_numpy() for t in tables])  # [seeds, conditions, targets]
    t0 = tables[0]
    cells = [[fmt(stacked[:, i, j]) for j in range(stacked.shape[2])] for i in range(stacked.shape[1])]
    return pd.DataFrame(cells, index=t0.index, columns=t0.columns)


def to_md(df: pd.DataFrame, index_name: str) -> str:
    cols = [index_name, *map(str, df.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([str(idx), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)


def train_loreft(model, sites, targets, data, rank, lr, steps, seed):
    out = {}
    for i, name in enumerate(NAMES):
        ad = LoreftAdapter(targets, rank=rank, seed=seed * 10 + i, meta={"task": name})
        x, y = data[name]
        train_adapter(model, sites, [ad.intervention(s.key()) for s in sites], x, y, task="behaviour-base",
                      steps=steps, batch_size=256, lr=lr, seed=seed)
        out[name] = ad
    return out


def lambda_sweep(model, road, lams, n_test, seed):
    rows = []
    for lam in lams:
        c = compose(road, weights={"format": lam})
        row = {"lambda (format)": lam}
        for tname, beh in (("op", ("op",)), ("op+format", ("op", "format"))):
            x, y = behaviour_data(n_test, behaviours=beh, split="test", seed=seed)
            row[tname] = evaluate(model, c, x, y, "behaviour-base")
        rows.append(row)
    return pd.DataFrame(rows).set_index("lambda (format)")


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = ri.load_model(MODEL)
    layers = [int(x) for x in a.layers.split(",")]
    sites = [ri.Site(layer, "block_output", "all") for layer in layers]
    targets = {s.key(): validate_site(model, s) for s in sites}
    width = next(iter(targets.values()))
    owners = split_blocks(width // 2, NAMES)
    test_seed = 777
    road_tables, loreft_tables, sweeps = [], [], []
    lams = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5] if not a.quick else [0.0, 1.0]
    for seed in range(a.seeds):
        data = {b: behaviour_data(a.n_train, behaviours=(b,), split="train", seed=seed) for b in NAMES}
        road = train_composable(model, data, sites, owners, joint=False, variant=a.variant, steps=a.steps,
                                lr=a.road_lr, seed=seed)
        road_tables.append(behaviour_table(model, road, n=a.n_test, seed=test_seed))
        lo = train_loreft(model, sites, targets, data, a.rank // 2, a.loreft_lr, a.steps, seed)
        loreft_tables.append(behaviour_table(model, lo, n=a.n_test, seed=test_seed, combined=concat_loreft(lo)))
        sweeps.append(lambda_sweep(model, road, lams, a.n_test, test_seed))
        print(f"seed {seed} done at {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    seconds = time.perf_counter() - t0

    road_params = road["op"].n_trainable()
    lo_params = sum(p.numel() for p in lo["op"].parameters())
    cmd = "python experiments/composition.py" + (" " + " ".join(argv) if argv else " " + " ".join(sys.argv[1:]))
    sites_txt = ", ".join(s.key() for s in sites)
    body = f"""
Command: `{cmd.strip()}` ({a.seeds} seeds, {seconds / 60:.1f} min on {a.threads} shared CPU threads).
Model `{MODEL}` (2-layer GPT-2, d={width}; trained on the base behaviour only). Sites: {sites_txt}.
Each behaviour adapter is trained **separately** ({a.steps} steps, batch 256, {a.n_train} training prompts
per seed, Adam); accuracy on {a.n_test} held-out test prompts (argmax over the 20 answer tokens),
mean ± std over seeds. Rows: which adapters are applied; columns: which target is scored
(`op+format` = the letter of (a0 - b0) mod 10).

**RoAd ({a.variant})**, `op` owns blocks {owners['op'][0]}-{owners['op'][-1]}, `format` owns
{owners['format'][0]}-{owners['format'][-1]} at every site ({road_params} trained entries per behaviour);
op+format = `roadinterp.compose` (exact union):

{to_md(mean_table(road_tables), "condition")}

**LoReFT-style baseline**, rank {a.rank} split {a.rank // 2} + {a.rank // 2}, op+format = stacked rows
(`roadinterp.interventions.loreft.concat_loreft`, {lo_params} trained entries per behaviour):

{to_md(mean_table(loreft_tables), "condition")}

**Lambda sweep**: RoAd op+format with the `format` component's angles x lambda (alpha 1 -> alpha);
lambda 0 is exactly `op only`, lambda 1 the plain composition:

{to_md(mean_table(sweeps), "lambda (format)")}
"""
    write_section(Path(a.out), SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
