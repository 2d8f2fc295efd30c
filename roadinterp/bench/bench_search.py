"""``roadinterp bench search``: alignment-search throughput, batched seeds vs one cell at a time.

For each task, K seeds of one cell (family butterfly, the search's default training
settings) are trained four ways in the same process, interleaved (roadinterp.bench.common):

- ``sequential``: one ``train_dii`` per seed, what the search does cell by cell;
- ``batched``: one ``train_dii_batched`` call, the K candidates share every step;
- ``sequential_pyvene`` / ``batched_pyvene``: the same with ``engine="pyvene"``, every
  step through pyvene's hooks (base + one source forward per variable), which is
  what both paths did before :mod:`roadinterp.dii.replay`.

All four get the same precomputed counterfactual data, so the numbers compare training
+ held-out scoring only. Reported: cells per minute of each, the ratios, and the
largest IIA difference between batched and sequential over the K seeds (equal up to
float summation order).

Tasks: hierarchical equality on ``zoo:hierarchical-equality-mlp`` (width 16, the DAS
setting) and the interval task on ``zoo:interval-llama`` (a token task, width 64), both
at layer 1 block_output, last position.

``ksweep`` (per task): one batched group of K = 1, 2, 5, 10 seeds against one cell,
and the fixed/per-candidate split ``F + K m`` that bounds what batching can save.

``grid``: wall time of whole ``roadinterp.search`` runs (counterfactual generation
included, no controls, one process) on hierarchical equality, layers 0-2, butterfly,
as the number of seeds (so cells) grows, for the same four arms; ``plot`` draws it.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from roadinterp.bench.common import interleaved, machine, main, ratio, summary
from roadinterp.dii.batched import train_dii_batched
from roadinterp.sites import Site
from roadinterp.tasks import get_task
from roadinterp.dii.config import DIIConfig, make_data
from roadinterp.dii.train import train_dii

# ``reps``/``warmup`` per task: a batched group of the MLP task takes ~0.4 s, so one
# hiccup of the shared machine moves a median of three; it gets more repetitions
# (cheap) and an untimed warm-up round. The token task's arms take 1-20 s each.
TASKS = [
    dict(name="hierarchical-equality", model="zoo:hierarchical-equality-mlp", site=Site(1, "block_output", "last"),
         size=8, reps=7, warmup=1),
    dict(name="interval", model="zoo:interval-llama", site=Site(1, "block_output", "last"), size=8, reps=3,
         warmup=0),
]
# the search's defaults (SearchConfig: n_train 8192, n_test 2048, 4 epochs, batch 256), 5 seeds
FULL = dict(seeds=5, family="butterfly", n_train=8192, n_test=2048, epochs=4, batch_size=256, reps=None, warmup=None,
            pyvene=True, grid_seeds=[1, 2, 4, 8], ks=[1, 2, 5, 10])
QUICK = dict(seeds=2, family="butterfly", n_train=64, n_test=64, epochs=1, batch_size=32, reps=1, warmup=0,
             pyvene=True, grid_seeds=[1, 2], ks=[1, 2])
ARMS = {"sequential": (False, "auto"), "batched": (True, "auto"), "sequential_pyvene": (False, "pyvene"),
        "batched_pyvene": (True, "pyvene")}


def grid(cfg: dict) -> dict:
    """Seconds of whole searches (3 layers x seeds cells) per arm, as the grid grows."""
    from roadinterp.search import search

    layers = [0, 1, 2]
    arms = {k: v for k, v in ARMS.items() if cfg["pyvene"] or not k.endswith("_pyvene")}
    out: dict = {"cells": [], "seconds": {name: [] for name in arms}}
    for seeds in cfg["grid_seeds"]:
        out["cells"].append(len(layers) * seeds)
        for name, (batched, engine) in arms.items():
            t0 = time.perf_counter()
            search(task="hierarchical-equality", layers=layers, families=[cfg["family"]], sizes=[8], seeds=seeds,
                   controls=False, n_train=cfg["n_train"], n_test=cfg["n_test"], epochs=cfg["epochs"],
                   batch_size=cfg["batch_size"], batched=batched, engine=engine)
            out["seconds"][name].append(time.perf_counter() - t0)
    return out


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
    reps = cfg["reps"] or spec["reps"]
    warmup = spec["warmup"] if cfg["warmup"] is None else cfg["warmup"]
    times = interleaved(fns, reps=reps, warmup=warmup)
    k = len(configs)
    timed = summary(times, k * 60.0)  # per_s of (60 k) = cells per minute
    cpm = {name: timed[name]["per_s"] for name in timed}
    iia = {name: [r.iia for r in rs] for name, rs in last.items()}
    out = {
        "model": spec["model"], "site": site.label(), "size": spec["size"], "reps": reps, "warmup": warmup,
        "engine": sorted({r.engine for r in last["sequential"]}),
        "cells_per_min": cpm, "seconds_per_group": {n: timed[n]["median_s"] for n in timed},
        "batched_vs_sequential": ratio(cpm["batched"], cpm["sequential"]),
        "iia": iia, "iia_sequential": iia["sequential"], "iia_batched": iia["batched"],
        "max_iia_diff": max(abs(a - b) for a, b in zip(iia["sequential"], iia["batched"])),
    }
    out["ksweep"] = ksweep(model, task, site, spec, cfg, reps)
    if cfg["pyvene"]:
        out["batched_vs_sequential_pyvene"] = ratio(cpm["batched_pyvene"], cpm["sequential_pyvene"])
        out["replay_vs_pyvene_sequential"] = ratio(cpm["sequential"], cpm["sequential_pyvene"])
        out["replay_vs_pyvene_batched"] = ratio(cpm["batched"], cpm["batched_pyvene"])
        out["max_iia_diff_engines"] = max(abs(a - b) for a, b in zip(iia["sequential"], iia["sequential_pyvene"]))
    return out


def ksweep(model, task, site, spec: dict, cfg: dict, reps: int) -> dict:
    """One ``train_dii_batched`` group of K = ``cfg["ks"]`` seeds vs one ``train_dii`` cell (replay engine).

    A group costs about ``F + K m`` (``F``: the per-step work paid once per group, ``m``:
    each candidate's own rows), one cell ``F + m``, so batched_vs_sequential tends to
    ``K (F + m) / (F + K m)``: it saturates at ``(F + m) / m`` however many seeds share a
    group. ``F`` and ``m`` are a least-squares line through the group times.
    """
    ks = list(cfg["ks"])
    configs = [DIIConfig(family=cfg["family"], size=spec["size"], seed=s, n_train=cfg["n_train"],
                         n_test=cfg["n_test"], epochs=cfg["epochs"], batch_size=cfg["batch_size"])
               for s in range(max(ks))]
    data = [make_data(task, c) for c in configs]
    fns = {"one": lambda: train_dii(model, task, site, config=configs[0], data=data[0])}
    for k in ks:
        fns[f"K={k}"] = lambda k=k: train_dii_batched(model, task, site, configs[:k], data=data[:k])
    med = {name: v["median_s"] for name, v in summary(interleaved(fns, reps=reps, warmup=0)).items()}
    xs, ys = ks, [med[f"K={k}"] for k in ks]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    return {
        "seconds": med, "ratio": {f"K={k}": ratio(k * med["one"], med[f"K={k}"]) for k in ks},
        "fit": {"F_s": my - slope * mx, "m_s": slope, "points": n},
    }


def run(quick: bool = False) -> dict:
    """Cells per minute, batched vs sequential (replay and pyvene engines), per task; IIAs; ratios."""
    cfg = QUICK if quick else FULL
    old = torch.get_num_threads()
    try:
        tasks = {spec["name"]: _one_task(spec, cfg) for spec in TASKS}
        grown = grid(cfg)
    finally:
        torch.set_num_threads(old)
    ratios = {"batched_vs_sequential": min(t["batched_vs_sequential"] for t in tasks.values())}
    for name, t in tasks.items():
        for key in ("batched_vs_sequential", "batched_vs_sequential_pyvene", "replay_vs_pyvene_sequential",
                    "replay_vs_pyvene_batched"):
            if key in t:
                ratios[f"{key}_{name}"] = t[key]
    return {
        "benchmark": "search", "quick": quick, "config": dict(cfg), "tasks": tasks, "ratios": ratios, "grid": grown,
        "max_iia_diff": max(t["max_iia_diff"] for t in tasks.values()),
        "targets": {"batched_vs_sequential": ">= 3", "max_iia_diff": "<= 0.02"},
        "machine": machine(),
    }


def plot(result: dict, path: str) -> None:
    """Search wall time against grid size (cells) per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = result["grid"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, secs) in enumerate(g["seconds"].items()):
        ax.plot(g["cells"], secs, "--" if name.endswith("_pyvene") else "-", marker="o", color=f"C{i // 2}",
                alpha=1.0 if name.startswith("batched") else 0.6, label=name.replace("_", " "))
    ax.set_xlabel("cells in the search (3 layers x seeds)")
    ax.set_ylabel("seconds (whole search, one process)")
    ax.set_title("Search cost by grid size, hierarchical equality (butterfly)")
    ax.set_xticks(g["cells"])
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # python -m roadinterp.bench.bench_search [--quick] [--plot PNG] [--from JSON]
    main(run, plot)
