"""``roadinterp bench lm``: a full-depth site scan of SmolLM2-135M on IOI, KV engine vs the previous one.

The scan: every layer of ``zoo:smollm2-135m`` (30) at ``block_output`` / last token,
aligning IOI's ``io_position`` (which of the two names is the indirect object: MIB aligns
one variable at a time; ``io_token``, the name itself, is the harder one: docs/results.md),
family butterfly, 3 seeds, with controls
(random-init model, rival hypothesis, site patch), batched seeds, through
:func:`roadinterp.search.search` as a user runs it, with the KV engine
(``engine="auto"``, :mod:`roadinterp.dii.kvreplay`) and the frozen model in ``DTYPE``.

The naive arm is the previous engine: ``auto`` before the KV engine meant pyvene on
IOI's left-padded prompts (replay refuses per-row attention masks), every step running
base and sources through the whole model and the 49,152-way unembedding at every
position. It costs minutes per cell here, so it runs only the cells of ``naive_layers``
/ ``naive_seeds`` (same settings, fp32) and the whole naive scan is **extrapolated** per
cell: ``ratios.scan_vs_naive`` = mean naive seconds per cell / mean KV seconds per cell
(the KV scan's whole wall time / its cells, table building included). ``ratios.iia_gap``
is the largest |IIA difference| between the two arms over the cells both ran (main,
random-model and rival IIA). ``step_ms``: one forward+backward at batch 32 at layer 15
per family by the KV engine, and by pyvene for butterfly (pyvene's das/lowrank take minutes
per step on this machine).
``peak_rss_gb`` is this process's peak resident memory after the KV scan (before the
naive arm runs). ``--quick``: the 2-layer ``zoo:interval-llama`` on the interval task.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch

from roadinterp.bench.common import machine, main, ratio
from roadinterp.interventions import get_family
from roadinterp.sites import Site, n_layers

# template="raw": the prompts of every stored bench lm run (before prompt tasks had a chat form)
FULL = dict(model="zoo:smollm2-135m", device="auto", task="ioi", template="raw", variables=["io_position"], dtype="float32",
            seeds=3, n_train=256,
            n_test=128, epochs=2,
            batch_size=32, size=8, naive_layers=[22], naive_seeds=1, step_layer=15, step_batch=32,
            step_families=["butterfly", "road", "neuron", "das", "lowrank"], naive_step_families=["butterfly"], reps=3)
QUICK = dict(model="zoo:interval-llama", device="auto", task="interval", template="raw", variables=None, dtype="float32", seeds=2, n_train=64, n_test=32, epochs=1,
             batch_size=32, size=4, naive_layers=[1], naive_seeds=1, step_layer=1, step_batch=8,
             step_families=["butterfly", "das"], naive_step_families=["butterfly", "das"], reps=1)


def _progress(phase: str, **data) -> None:
    """One JSON line on stderr per finished phase or cell (a long run can be followed, or cut short)."""
    print(json.dumps({"t": round(time.time(), 1), "phase": phase, **data}, default=str), file=sys.stderr, flush=True)


def _device(cfg: dict) -> str:
    """The device ``cfg["device"]`` resolves to here (``auto``: a GPU when there is one)."""
    from roadinterp import zoo

    return str(zoo._resolve_device(cfg["device"]))


def _sync() -> None:
    """Wait for queued GPU work, so a timestamp covers it (no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _scan(cfg: dict, layers, seeds: int, engine: str, dtype: str):
    from roadinterp.search import search

    t0 = time.perf_counter()

    def on_cell(cell, row, done, total):
        _progress(f"cell/{engine}", layer=cell.layer, seed=cell.seed, done=done, total=total, iia=row["iia"],
                  iia_random_model=row.get("iia_random_model"), iia_rival=row.get("iia_rival"),
                  elapsed=round(time.perf_counter() - t0, 1))

    table = search(task=cfg["task"], model=cfg["model"], template=cfg["template"], variables=cfg["variables"], layers=list(layers), positions=["last"],
                   families=["butterfly"], sizes=[cfg["size"]], seeds=seeds, controls=True, n_train=cfg["n_train"],
                   n_test=cfg["n_test"], epochs=cfg["epochs"], batch_size=cfg["batch_size"], batched=True,
                   engine=engine, device=cfg["device"], dtype=dtype, on_cell=on_cell)
    return table, time.perf_counter() - t0


def make_step(model, task, data, site: Site, width: int, family: str, size: int, engine: str):
    """One DII forward + backward of ``family`` on all of ``data`` at ``site`` by ``engine``, as a callable."""
    from roadinterp.dii.runners import make_runner

    built = get_family(family).build(width, [size] * len(data.sources), seed=0)
    runner, (h,) = make_runner(model, site, task, built.interventions, built.coords, shared=built.shared,
                               datasets=[data], engine=engine)
    params = [p for iv in {id(i): i for i in built.interventions}.values() for p in iv.parameters()
              if p.requires_grad]
    idx = torch.arange(len(data))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(task.logits(runner([(h, idx)])).float(), data.labels)
        if params:
            loss.backward()

    step.engine = runner.engine
    return step


def step_ms(step, reps: int) -> float:
    """Median milliseconds of ``step()`` over ``reps`` calls after one warm-up call (GPU work synchronised)."""
    times = []
    for _ in range(reps + 1):  # the first is a warm-up
        _sync()
        t0 = time.perf_counter()
        step()
        _sync()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times[1:])[len(times[1:]) // 2]


def step_setup(cfg: dict):
    """The model, bound task, training counterfactuals, site and width of ``cfg``'s step measurements."""
    from roadinterp.search.frozen import place
    from roadinterp.search import get_bound_task, get_model
    from roadinterp.sites import site_width

    model = get_model(cfg["model"], cfg["device"], "float32")
    task = get_bound_task(cfg["task"], cfg["model"], template=cfg["template"])
    data = place(task.counterfactuals(cfg["step_batch"], split="train", seed=0, variables=cfg["variables"]), model)
    site = Site(cfg["step_layer"], "block_output", "last")
    return model, task, data, site, site_width(model, site)


def _steps(cfg: dict) -> dict:
    """Milliseconds of one fwd+bwd DII step per family at ``step_layer``: the KV engine, and pyvene
    for ``naive_step_families`` (median of ``reps`` after a warm-up)."""
    model, task, data, site, width = step_setup(cfg)
    out: dict = {}
    for fam in cfg["step_families"]:
        row = {}
        for engine in ("kv", "pyvene") if fam in cfg["naive_step_families"] else ("kv",):
            row[engine] = step_ms(make_step(model, task, data, site, width, fam, cfg["size"], engine), cfg["reps"])
        if "pyvene" in row:
            row["ratio"] = ratio(row["pyvene"], row["kv"])
        out[fam] = row
        _progress("step", family=fam, **row)
    out["_auto_picks"] = make_step(model, task, data, site, width, "butterfly", cfg["size"], "auto").engine
    return out


def _naive_arm(cfg: dict) -> tuple[list[dict], float]:
    """The naive cells (in a worker process, concurrently with the KV scan): rows and wall seconds."""
    torch.set_num_threads(1)
    table, seconds = _scan(cfg, cfg["naive_layers"], cfg["naive_seeds"], "pyvene", "float32")
    return table.to_dict(orient="records"), seconds


def run(quick: bool = False, **overrides) -> dict:
    """The scan by the KV engine, the naive arm on a subset, the gaps, the step costs.

    ``overrides`` replace settings of FULL/QUICK (e.g. ``layers=[0, 15, 29]`` for a reduced
    scan); the output's ``config`` holds what ran, so a reduced run says what was reduced.
    """
    cfg = {**(QUICK if quick else FULL), **overrides}
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(cfg, quick)
    finally:
        torch.set_num_threads(old)


def _run(cfg: dict, quick: bool) -> dict:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd

    from roadinterp.search import get_bound_task, get_model

    all_layers = list(range(n_layers(get_model(cfg["model"], cfg["device"], cfg["dtype"]))))
    layers = cfg.get("layers") or all_layers
    get_bound_task(cfg["task"], cfg["model"], template=cfg["template"])  # untimed: binding filters the prompts once (cached on disk)
    # the naive arm runs in its own process meanwhile (it would take as long as the whole scan
    # again): both arms share the machine, and this process's peak memory is the KV scan's
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        naive_future = pool.submit(_naive_arm, cfg)
        fast, fast_s = _scan(cfg, layers, cfg["seeds"], "auto", cfg["dtype"])
        peak = _peak_rss_gb()
        _progress("scan", seconds=fast_s, cells=len(fast), peak_rss_gb=peak)
        steps = _steps(cfg)
        naive_rows, naive_s = naive_future.result()
    naive = pd.DataFrame(naive_rows)
    _progress("naive", seconds=naive_s, cells=len(naive))
    keys = ["layer", "seed"]
    both = fast.merge(naive, on=keys, suffixes=("_kv", "_naive"))
    gaps = {c: float((both[f"{c}_kv"] - both[f"{c}_naive"]).abs().max())
            for c in ("iia", "iia_random_model", "iia_rival") if f"{c}_kv" in both}
    kv_cell = fast_s / len(fast)
    naive_cell = naive_s / len(naive)
    per_layer = fast.groupby("layer").agg(iia=("iia", "mean"), iia_random_model=("iia_random_model", "mean"),
                                          iia_rival=("iia_rival", "mean"), iia_null=("iia_null", "mean"))
    best = int(per_layer["iia"].idxmax())
    return {
        "benchmark": "lm", "quick": quick, "config": dict(cfg), "device": _device(cfg),
        "engine": steps.pop("_auto_picks"),
        "seconds": {"scan": fast_s, "naive_subset": naive_s, "kv_per_cell": kv_cell, "naive_per_cell": naive_cell,
                    "naive_scan_extrapolated": naive_cell * len(fast)},
        "cells": {"scan": len(fast), "naive": len(naive), "layers": len(layers), "model_layers": len(all_layers)},
        "reduced": layers != all_layers,
        "naive_arm": (f"engine=pyvene, float32, layers {cfg['naive_layers']}, {cfg['naive_seeds']} seed(s), same "
                      "settings; the full naive scan is extrapolated per cell"),
        "ratios": {"scan_vs_naive": ratio(naive_cell, kv_cell), "iia_gap": max(gaps.values()) if gaps else None},
        "iia_gaps": gaps,
        "peak_rss_gb": peak,
        "step_ms": steps,
        "per_layer": {int(k): {c: float(v) for c, v in r.items()} for k, r in per_layer.iterrows()},
        "best_layer": best,
        "targets": {"seconds.scan": "<= 900", "scan_vs_naive": ">= 10", "iia_gap": "<= 0.02", "peak_rss_gb": "< 4"},
        "machine": machine(),
    }


# ------------------------------------------------------------- per-row positions (--rows)
ROWS = dict(model="zoo:smollm2-135m", device="cpu", template="raw", layer=0, family="butterfly", size=8,
            step_batch=32, reps=3, n_train=128, n_test=64, epochs=1, batch_size=32,
            cases=[("ravel-city", ["country"], "city"), ("ioi", ["io_position"], "io"), ("ioi", ["io_position"], "s2")])
QUICK_ROWS = {**ROWS, "reps": 1, "n_train": 32, "n_test": 16, "step_batch": 8, "cases": [("ioi", ["io_position"], "io")]}


def run_rows(quick: bool = False, **overrides) -> dict:
    """The KV engine at a position that differs per row (RAVEL's ``city``, IOI's ``io`` and ``s2``) vs pyvene.

    ``seq`` and ``tail_start`` say how much of each prompt the KV tail runs (from the earliest index
    of the step's rows, bases and sources, to the end): an entity near the start of the prompt
    leaves little to cache, an entity late in it little to run.

    Per case, at ``layer``: milliseconds of one forward+backward at ``step_batch`` by each engine
    (median of ``reps`` after a warm-up) and their ratio; then one short DII fit by each engine
    from the same seed, with its held-out IIA (answers and full vocabulary) and the largest gap
    between the two loss curves. ``--quick``: IOI only, one repetition, a few dozen rows.
    """
    cfg = {**(QUICK_ROWS if quick else ROWS), **overrides}
    from roadinterp.dii.train import train_dii
    from roadinterp.search import get_bound_task, get_model
    from roadinterp.search.frozen import place
    from roadinterp.sites import site_width

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = get_model(cfg["model"], cfg["device"], "float32")
        out = {}
        for task_name, variables, position in cfg["cases"]:
            task = get_bound_task(task_name, cfg["model"], template=cfg["template"])
            site = Site(cfg["layer"], "block_output", position)
            data = place(task.counterfactuals(cfg["step_batch"], split="train", seed=0, variables=variables), model)
            width = site_width(model, site)
            at = data.positions[position]
            row: dict = {"seq": int(data.base["input_ids"].shape[1]), "tail_start": int(at.min()),
                         "distinct_positions": sorted({int(i) for i in at[:, 0]})}
            for engine in ("kv", "pyvene"):
                step = make_step(model, task, data, site, width, cfg["family"], cfg["size"], engine)
                assert step.engine == engine, (engine, step.engine)
                row[f"step_ms_{engine}"] = step_ms(step, cfg["reps"])
                _progress("rows/step", task=task_name, engine=engine, ms=row[f"step_ms_{engine}"])
            row["step_ratio"] = ratio(row["step_ms_pyvene"], row["step_ms_kv"])
            fits = {}
            for engine in ("kv", "pyvene"):
                t0 = time.perf_counter()
                r = train_dii(model, task, site, family=cfg["family"], size=cfg["size"], variables=variables,
                              n_train=cfg["n_train"], n_test=cfg["n_test"], epochs=cfg["epochs"],
                              batch_size=cfg["batch_size"], engine=engine, seed=0)
                fits[engine] = r
                row[f"fit_s_{engine}"] = time.perf_counter() - t0
                row[f"iia_{engine}"], row[f"iia_vocab_{engine}"] = r.iia, r.iia_vocab
                _progress("rows/fit", task=task_name, engine=r.engine, iia=r.iia, seconds=row[f"fit_s_{engine}"])
            row["loss_gap"] = max(abs(a - b) for a, b in zip(fits["kv"].losses, fits["pyvene"].losses))
            row["iia_gap"] = abs(row["iia_kv"] - row["iia_pyvene"])
            out[f"{task_name}@{position}"] = row
    finally:
        torch.set_num_threads(old)
    return {"benchmark": "lm-rows", "quick": quick, "config": cfg, "cases": out,
            "targets": {"step_ratio": ">= 10", "iia_gap": "0"}, "machine": machine()}


if __name__ == "__main__":  # python -m roadinterp.bench.bench_lm [--quick] [--rows]
    main(run_rows if "--rows" in sys.argv else run)
