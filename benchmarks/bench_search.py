"""``roadinterp bench search``: alignment-search throughput, batched seeds vs one cell at a time.

For each task, K seeds of one cell (family butterfly, the search's default training
settings) are trained four ways in the same process, interleaved (benchmarks.common):

- ``sequential``: one ``train_dii`` per seed, what the search does cell by cell;
- ``batched``: one ``train_dii_batched`` call, the K candidates share every step;
- ``sequential_pyvene`` / ``batched_pyvene``: the same with ``engine="pyvene"``, every
  step through pyvene's hooks (base + one source forward per variable), which is
  what both paths did before :mod:`roadinterp.replay`.

All four get the same precomputed counterfactual data, so the numbers compare training
+ held-out scoring only. Reported: cells per minute of each, the ratios, and the
largest IIA difference between batched and sequential over the K seeds (equal up to
float summation order).

Tasks: hierarchical equality on ``zoo:hierarchical-equality-mlp`` (width 16, the DAS
setting) and the interval task on ``zoo:interval-llama`` (a token task, width 64), both
at layer 1 block_output, last position.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from benchmarks.common import interleaved, machine, ratio, summary
from roadinterp.batched import train_dii_batched
from roadinterp.sites import Site
from roadinterp.tasks import get_task
from roadinterp.train import DIIConfig, make_data, train_dii

TASKS = [
    dict(name="hierarchical-equality", model="zoo:hierarchical-equality-mlp", site=Site(1, "block_output", "last"),
         size=8),
    dict(name="interval", model="zoo:interval-llama", site=Site(1, "block_output", "last"), size=8),
]
# the search's defaults (SearchConfig: n_train 8192, n_test 2048, 4 epochs, batch 256), 5 seeds
FULL = dict(seeds=5, family="butterfly", n_train=8192, n_test=2048, epochs=4, batch_size=256, reps=2, warmup=0,
            pyvene=True)
QUICK = dict(seeds=2, family="butterfly", n_train=64, n_test=64, epochs=1, batch_size=32, reps=1, warmup=0,
             pyvene=True)


def _one_task(spec: dict, cfg: dict) -> dict:
    from roadinterp.zoo import load_model

    model = load_model(spec["model"], device="cpu")
    task = get_task(spec["name"])
    site = spec["site"]
    configs = [DIIConfig(family=cfg["family"], size=spec["size"], seed=s, n_train=cfg["n_train"],
                         n_test=cfg["n_test"], epochs=cfg["epochs"], batch_size=cfg["batch_size"])
               for s in range(cfg["seeds"])]
    data = [make_data(task, c) for c in configs]
    last: dict[str, list] = {}

    def arms(engine: str, suffix: str) -> dict:
        cs = [replace(c, engine=engine) for c in configs]

        def sequential():
            last["sequential" + suffix] = [train_dii(model, task, site, config=c, data=d) for c, d in zip(cs, data)]

        def batched():
            last["batched" + suffix] = train_dii_batched(model, task, site, cs, data=data)

        return {"sequential" + suffix: sequential, "batched" + suffix: batched}

    fns = arms("auto", "")
    if cfg["pyvene"]:
        fns.update(arms("pyvene", "_pyvene"))
    times = interleaved(fns, reps=cfg["reps"], warmup=cfg["warmup"])
    k = len(configs)
    timed = summary(times, k * 60.0)  # per_s of (60 k) = cells per minute
    cpm = {name: timed[name]["per_s"] for name in timed}
    iia = {name: [r.iia for r in rs] for name, rs in last.items()}
    out = {
        "model": spec["model"], "site": site.label(), "size": spec["size"],
        "engine": sorted({r.engine for r in last["sequential"]}),
        "cells_per_min": cpm, "seconds_per_group": {n: timed[n]["median_s"] for n in timed},
        "batched_vs_sequential": ratio(cpm["batched"], cpm["sequential"]),
        "iia": iia, "iia_sequential": iia["sequential"], "iia_batched": iia["batched"],
        "max_iia_diff": max(abs(a - b) for a, b in zip(iia["sequential"], iia["batched"])),
    }
    if cfg["pyvene"]:
        out["batched_vs_sequential_pyvene"] = ratio(cpm["batched_pyvene"], cpm["sequential_pyvene"])
        out["replay_vs_pyvene_sequential"] = ratio(cpm["sequential"], cpm["sequential_pyvene"])
        out["replay_vs_pyvene_batched"] = ratio(cpm["batched"], cpm["batched_pyvene"])
        out["max_iia_diff_engines"] = max(abs(a - b) for a, b in zip(iia["sequential"], iia["sequential_pyvene"]))
    return out


def run(quick: bool = False) -> dict:
    """Cells per minute, batched vs sequential (replay and pyvene engines), per task; IIAs; ratios."""
    cfg = QUICK if quick else FULL
    old = torch.get_num_threads()
    try:
        tasks = {spec["name"]: _one_task(spec, cfg) for spec in TASKS}
    finally:
        torch.set_num_threads(old)
    ratios = {"batched_vs_sequential": min(t["batched_vs_sequential"] for t in tasks.values())}
    for name, t in tasks.items():
        for key in ("batched_vs_sequential", "batched_vs_sequential_pyvene", "replay_vs_pyvene_sequential",
                    "replay_vs_pyvene_batched"):
            if key in t:
                ratios[f"{key}_{name}"] = t[key]
    return {
        "benchmark": "search", "quick": quick, "config": dict(cfg), "tasks": tasks, "ratios": ratios,
        "max_iia_diff": max(t["max_iia_diff"] for t in tasks.values()),
        "targets": {"batched_vs_sequential": ">= 3", "max_iia_diff": "<= 0.02"},
        "machine": machine(),
    }


if __name__ == "__main__":  # python -m benchmarks.bench_search [--quick]
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
