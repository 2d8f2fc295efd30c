"""Where one DII step's time goes, before (pyvene) and after (the KV engine): ``python -m roadinterp.bench.profile_step``.

The step is the one ``roadinterp bench lm`` times as ``step_ms`` (:func:`roadinterp.bench.bench_lm.make_step`):
one forward + backward of a butterfly intervention at ``block_output`` / last token of
layer 15 of ``zoo:smollm2-135m``, on 32 IOI counterfactuals (``io_position``), fp32, one
torch thread. Each engine gets one warm-up step, then one step under ``torch.profiler``
(CPU). The output (JSON on stdout; ``--md FILE`` also writes a markdown table) holds per
engine: the profiled step's wall time, the self-CPU time and call count of the operator
groups that matter (matrix products, attention, element-wise), the top operators by self
CPU time, and how many rows x positions x blocks the step ran forward.

``--growth``: how a KV step's time grows (butterfly, batch 32, median of 3 after a
warm-up, no profiler): with the site's layer (the blocks after it) on the real model; with
prompt length (IOI's prompts left-padded by extra padding tokens, so the cached prefix
grows and the tail stays one position); and with width (random-init models of SmolLM2's
shape, 30 layers, 9 query / 3 KV heads, at hidden 288 / 576 / 1152, MLP 2.67x, head
width hidden / 9, on the same IOI inputs).

``--quick``: ``zoo:interval-llama`` at layer 1 (what the test suite runs).
"""

from __future__ import annotations

import json
import time

import torch

from roadinterp.bench.bench_lm import FULL, QUICK, make_step, step_ms, step_setup
from roadinterp.bench.common import machine
from roadinterp.sites import n_layers

MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


def _group(name: str) -> str:
    """``matmul``, ``attention`` (sdpa, softmax) or ``other`` for an ``aten::`` operator name."""
    op = name.split("::", 1)[-1]
    if op in MATMUL:
        return "matmul"
    return "attention" if "attention" in op or "softmax" in op else "other"


def profile(setup: tuple, size: int, engine: str, top: int = 12) -> dict:
    """Wall time and operator table of one profiled step by ``engine`` (after one warm-up step) on
    ``setup`` (:func:`roadinterp.bench.bench_lm.step_setup`), butterfly of ``size``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = make_step(*setup, "butterfly", size, engine)
    step()  # warm-up (allocator, lazy tables)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    rows = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    groups: dict[str, dict] = {}
    for e in rows:
        g = groups.setdefault(_group(e.key), {"self_cpu_s": 0.0, "calls": 0})
        g["self_cpu_s"] += e.self_cpu_time_total / 1e6
        g["calls"] += e.count
    total = sum(g["self_cpu_s"] for g in groups.values()) or float("nan")
    for g in groups.values():
        g["share"] = g["self_cpu_s"] / total
    rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"engine": step.engine, "wall_s": wall, "aten_self_cpu_s": total, "groups": groups,
            "top": [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in rows[:top]]}


def run(quick: bool = False) -> dict:
    cfg = dict(QUICK if quick else FULL)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setup = step_setup(cfg)
        out = {name: profile(setup, cfg["size"], name) for name in ("pyvene", "kv")}
    finally:
        torch.set_num_threads(old)
    return {"benchmark": "profile_step", "quick": quick, "model": cfg["model"], "task": cfg["task"],
            "variables": cfg["variables"], "layer": cfg["step_layer"], "batch": cfg["step_batch"],
            "family": "butterfly", "size": cfg["size"], "engines": out,
            "ratio_wall": out["pyvene"]["wall_s"] / out["kv"]["wall_s"], "machine": machine()}


def left_pad(inputs: dict, k: int, pad_id: int) -> dict:
    """``inputs`` with ``k`` more padding tokens on the left (masked out; real tokens keep their position ids)."""
    ids = inputs["input_ids"]
    n, seq = ids.shape
    mask = inputs.get("attention_mask", torch.ones(n, seq, dtype=torch.long))
    pos = inputs.get("position_ids", (mask.cumsum(1) - 1).clamp(min=0))
    z = torch.zeros(n, k, dtype=torch.long)
    return {**inputs, "input_ids": torch.cat([torch.full((n, k), pad_id, dtype=ids.dtype), ids], 1),
            "attention_mask": torch.cat([z.to(mask.dtype), mask], 1), "position_ids": torch.cat([z.to(pos.dtype), pos], 1)}


def _random_llama(like, hidden: int, seed: int = 0):
    """A random-init Llama of ``like``'s shape at width ``hidden`` (heads scaled, fp32, eval)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = like.config.to_dict()
    heads = c["num_attention_heads"]
    c.update(hidden_size=hidden, intermediate_size=round(hidden * c["intermediate_size"] / c["hidden_size"]),
             head_dim=hidden // heads)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**c)).eval()
    model.config._attn_implementation = like.config._attn_implementation
    return model


def growth(cfg: dict | None = None, *, layers=(0, 8, 15, 22, 29), pads=(0, 20, 60), widths=(288, 576, 1152),
           reps: int = 3) -> dict:
    """KV step milliseconds (butterfly, ``cfg``'s batch) against the site's layer, prompt length and width."""
    import dataclasses

    cfg = dict(cfg or FULL)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, task, data, site, width = step_setup(cfg)
        depth = n_layers(model)

        def ms(m, d, s, w):
            step = make_step(m, task, d, s, w, "butterfly", cfg["size"], "kv")
            if step.engine != "kv":
                raise RuntimeError(f"the KV engine did not run ({step.engine})")
            return step_ms(step, reps)

        by_layer = {int(layer): ms(model, data, dataclasses.replace(site, layer=layer), width)
                    for layer in layers if layer < depth}
        pad_id = task.tokenizer.pad_token_id if getattr(task, "tokenizer", None) is not None else 0
        seq = int(data.base["input_ids"].shape[1])
        by_length = {}
        for k in pads:
            padded = data if k == 0 else dataclasses.replace(
                data, base=left_pad(data.base, k, pad_id), sources=[left_pad(s, k, pad_id) for s in data.sources])
            by_length[seq + k] = ms(model, padded, site, width)
        by_width = {int(w): ms(_random_llama(model, w), data, site, w) for w in widths}
    finally:
        torch.set_num_threads(old)
    return {"model": cfg["model"], "batch": cfg["step_batch"], "family": "butterfly", "size": cfg["size"],
            "reps": reps, "step_ms_by_layer": by_layer, "n_layers": depth, "site_layer_for_length_and_width":
            cfg["step_layer"], "step_ms_by_prompt_tokens": by_length, "step_ms_by_width": by_width,
            "machine": machine()}


def markdown(res: dict) -> str:
    """The before/after table of a :func:`run` result."""
    pv, kv = res["engines"]["pyvene"], res["engines"]["kv"]

    def cell(e, g):
        x = e["groups"].get(g, {"self_cpu_s": 0.0, "calls": 0, "share": 0.0})
        return f"{x['self_cpu_s']:.3f} s, {x['calls']} calls ({100 * x['share']:.0f} %)"

    lines = ["| | pyvene (before) | KV engine (after) |", "|---|---|---|",
             f"| wall time of the profiled step | {pv['wall_s']:.3f} s | {kv['wall_s']:.3f} s |"]
    for g in ("matmul", "attention", "other"):
        lines.append(f"| {g} (aten self CPU) | {cell(pv, g)} | {cell(kv, g)} |")
    lines.append(f"| engine that ran | {pv['engine']} | {kv['engine']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m roadinterp.bench.profile_step [--quick] [--growth] [--md FILE]
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="zoo:interval-llama at layer 1 (what the tests run)")
    ap.add_argument("--growth", action="store_true", help="KV step time against layer, prompt length and width")
    ap.add_argument("--md", metavar="FILE", help="also write the before/after table as markdown (not with --growth)")
    a = ap.parse_args()
    if a.growth and a.md:
        ap.error("--md writes the profile's table; --growth has none")
    result = growth(QUICK if a.quick else FULL) if a.growth else run(quick=a.quick)
    print(json.dumps(result, indent=2))
    if a.md:
        with open(a.md, "w") as f:
            f.write(markdown(result))
