"""Timing helpers shared by the benchmarks: interleaved repetitions and medians.

Conditions are run round-robin (A B C, A B C, ...) rather than one after the
other, so slow drifts of the machine (thermal throttling, other processes, the
allocator warming up) hit every condition alike; each condition reports the
median over repetitions, which one unlucky repetition cannot move.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from typing import Callable, Mapping

import torch


def interleaved(
    fns: Mapping[str, Callable[[], object]], *, reps: int = 5, warmup: int = 1,
) -> dict[str, list[float]]:
    """Wall-clock seconds of each ``fns[name]()``, ``reps`` times, round-robin.

    ``warmup`` untimed round-robin passes come first (lazy init, caches, allocator).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


def summary(times: Mapping[str, list[float]], work: Mapping[str, float] | float = 1.0) -> dict[str, dict]:
    """Per condition: median seconds, min, max and ``work / median`` as ``per_s``."""
    out = {}
    for name, ts in times.items():
        w = work[name] if isinstance(work, Mapping) else work
        med = median(ts)
        out[name] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "reps": len(ts), "per_s": w / med}
    return out


def ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main(run: Callable[..., dict], plot: Callable[[dict, str], None] | None = None) -> None:
    """``python -m benchmarks.X [--quick] [--plot PNG] [--from JSON]``: run (or re-load) and print/plot."""
    import json
    import sys

    args = sys.argv[1:]
    if "--from" in args:  # re-plot a saved result without re-running
        with open(args[args.index("--from") + 1]) as f:
            res = json.load(f)
    else:
        res = run(quick="--quick" in args)
        print(json.dumps(res, indent=2))
    if "--plot" in args and plot is not None:
        plot(res, args[args.index("--plot") + 1])


def peft_lora_adapters(model, names, targets, r):
    """peft LoRA adapters ``names`` (rank ``r``) on ``targets``: the batching benchmarks' baseline."""
    from peft import LoraConfig, get_peft_model

    suffixes = sorted({t.rsplit(".", 1)[-1] for t in targets})
    pm = None
    for i, name in enumerate(names):
        torch.manual_seed(1000 + i)
        cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=suffixes, init_lora_weights=False)
        if pm is None:
            pm = get_peft_model(model, cfg, adapter_name=name)
        else:
            pm.add_adapter(name, cfg)
    return pm.eval()
