"""``roadinterp bench batching --model zoo:smollm2-135m``: mixed-adapter serving on a real LM.

A batch of 16 prompts of mixed length (32-128 tokens, left-padded) generates 32 greedy
tokens with RoAd (``road_1``, group size 64) on the q/v/up projections of every block.
Prefill (the padded prompt forward) and decode (the 31 steps after it, KV cache) are
timed separately, for every arm, by one greedy loop shared by all arms:

- ``base``: the plain model (no adapter layers at all);
- ``shared``: RoAd layers, every sample adapter 0;
- ``distinct``: RoAd layers, sample ``i`` adapter ``i`` (16 different adapters);
- ``distinct_1000``: the same layers holding a resident bank of 1,000 adapters, the
  batch drawing 16 different ones from it;
- ``peft_road`` / ``peft_lora``: peft's RoAd and LoRA (r=8) with the same 16 adapters,
  mixed batch through ``adapter_names``;
- ``merged``: adapter 0 folded into the weights (plain Linears);
- ``sequential``: one call per adapter, batch 1, each prompt unpadded.

Arms run round-robin (interleaved) ``reps`` times after a short warm-up; medians and the
spread of the per-repetition ratios are reported. Checks (not assumed): the distinct
batch's tokens equal each sample generated alone with its adapter (the sequential arm)
and peft RoAd's tokens. Ratios are throughputs, higher is better for the toolkit.
"""

from __future__ import annotations

import copy
import inspect
import statistics
import time

import torch

from roadinterp.bench.common import machine, peft_lora_adapters
from roadinterp.adapters import serve
from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.linear import RoadLinear, apply_road, linear_targets, merge, road_layers
from roadinterp.adapters.modules import set_submodule
from roadinterp.adapters.peft_interop import to_peft
from roadinterp.road import fused
from roadinterp.road import rotation as rot

LM = dict(batch=16, min_prompt=32, max_prompt=128, new=32, targets=("q_proj", "v_proj", "up_proj"),
          variant="road_1", group_size=64, reps=3, lora_r=8, bank=1000)
LM_QUICK = dict(batch=4, min_prompt=4, max_prompt=12, new=4, targets=("q_proj", "v_proj", "up_proj"),
                variant="road_1", group_size=8, reps=1, lora_r=2, bank=50)
PEERS = ("base", "shared", "peft_road", "peft_lora", "sequential", "merged", "distinct_1000")


def _cache_kw(model) -> str:
    """transformers 5.24 calls the KV cache ``cache``; earlier versions ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


@torch.no_grad()
def greedy(model, input_ids: torch.Tensor, mask: torch.Tensor, new: int, **forward_kw):
    """Greedy decoding with a KV cache: ``(prefill_s, decode_s, tokens [batch, new])``.

    Position ids follow the padding (as HF ``generate`` does), so a left-padded row
    sees the positions it would see alone.
    """
    from transformers import DynamicCache

    key = _cache_kw(model)
    cache = DynamicCache(config=model.config)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)  # [batch, seq]
    sync = torch.cuda.synchronize if input_ids.is_cuda else (lambda: None)  # GPU kernels are asynchronous
    sync()
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{key: cache}, **forward_kw)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # [batch, 1]
    sync()
    t1 = time.perf_counter()
    tokens, am, p = [nxt], mask, pos[:, -1:]
    for _ in range(new - 1):
        am = torch.cat([am, am.new_ones(am.shape[0], 1)], dim=1)
        p = p + 1
        out = model(input_ids=nxt, attention_mask=am, position_ids=p, use_cache=True, **{key: cache}, **forward_kw)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(nxt)
    sync()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, torch.cat(tokens, dim=1)


def _prompts(cfg: dict, vocab: int):
    g = torch.Generator().manual_seed(0)
    b = cfg["batch"]
    lengths = torch.randint(cfg["min_prompt"], cfg["max_prompt"] + 1, (b,), generator=g)
    lengths[0], lengths[-1] = cfg["min_prompt"], cfg["max_prompt"]  # both ends of the range present
    rows = [torch.randint(3, vocab, (int(n),), generator=g) for n in lengths]
    width = int(lengths.max())
    ids = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    return rows, ids, mask


def _merged(base, adapter):
    """A copy of ``base`` with ``adapter`` folded into plain Linear weights."""
    m = copy.deepcopy(base)
    apply_road(m, adapter)
    merge(m)
    for path, layer in road_layers(m).items():
        set_submodule(m, path, layer.base)  # keep the merged weights, drop the wrapper
    return m


def _random_bank(base, n: int, cfg: dict):
    """``n`` random linear adapters ``task0..`` on ``cfg["targets"]``, and a copy of ``base`` serving them.

    Returns ``(paths, names, bank, road_model)``.
    """
    paths = linear_targets(base, list(cfg["targets"]))
    names = [f"task{i}" for i in range(n)]
    bank = {nm: RoadAdapter(paths, variant=cfg["variant"], group_size=cfg["group_size"], placement="linear",
                            init="random", seed=i) for i, nm in enumerate(names)}
    road_model = copy.deepcopy(base)
    apply_road(road_model, bank)
    return paths, names, bank, road_model


def _bank_model(base, paths: dict, cfg: dict):
    """A copy of ``base`` whose targets hold RoadLinear banks of ``cfg["bank"]`` random adapters."""
    m = copy.deepcopy(base)
    g = torch.Generator().manual_seed(7)
    n = cfg["bank"]
    for path, dim in paths.items():
        p = rot.n_params(dim, cfg["variant"])
        theta = (torch.rand(n, p, generator=g) - 0.5) * 0.2
        alpha = 1 + (torch.rand(n, p, generator=g) - 0.5) * 0.2
        base_layer = m.get_submodule(path)
        layer = RoadLinear(base_layer, theta, alpha, variant=cfg["variant"], group_size=cfg["group_size"])
        set_submodule(m, path, layer.to(base_layer.weight.device))
    return m


def _gather_cost(model, ids: torch.Tensor, reps: int = 5) -> float:
    """Seconds to turn one batch's ids into every layer's coefficient rows (median)."""
    layers = list(road_layers(model).values())
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for layer in layers:
            layer.set_adapter_ids(ids)
            layer._gather(ids.shape[0])
        ts.append(time.perf_counter() - t0)
    for layer in layers:
        layer.set_adapter_ids(None)
    return statistics.median(ts)


def run_lm(model="zoo:smollm2-135m", *, quick: bool = False, reps: int | None = None, **overrides) -> dict:
    """The real-LM benchmark (``model``: a ``load_model`` spec or a causal LM module).

    ``overrides`` replace entries of :data:`LM` for reduced runs (e.g. ``new=8``); the
    result's ``config`` says what ran.
    """
    from roadinterp.zoo import load_model

    cfg = dict(LM_QUICK if quick else LM)
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown bench settings {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    if reps is not None:
        cfg["reps"] = reps
    spec = model if isinstance(model, str) else type(model).__name__
    base = (load_model(model) if isinstance(model, str) else model).eval()
    b, new = cfg["batch"], cfg["new"]
    device = next(base.parameters()).device  # the bench runs wherever load_model put the model
    rows, ids, mask = _prompts(cfg, base.config.vocab_size)
    rows, ids, mask = [r.to(device) for r in rows], ids.to(device), mask.to(device)
    paths, names, bank, road_model = _random_bank(base, b, cfg)
    bank_model = _bank_model(base, paths, cfg)
    peft_road = to_peft(bank, copy.deepcopy(base))
    peft_lora = peft_lora_adapters(copy.deepcopy(base), names, paths, cfg["lora_r"])
    merged = _merged(base, bank[names[0]])
    distinct = torch.arange(b, device=device)
    pick = torch.randperm(cfg["bank"], generator=torch.Generator().manual_seed(3))[:b]

    def routed(model, routing):
        return lambda n_new: _routed_greedy(model, routing, ids, mask, n_new)

    def plain(model, **kw):
        return lambda n_new: greedy(model, ids, mask, n_new, **kw)

    def sequential(n_new):
        pre = dec = 0.0
        toks = []
        for i, r in enumerate(rows):
            with serve.route(road_model, [i]):
                p, d, t = greedy(road_model, r[None], torch.ones(1, len(r), dtype=torch.long, device=device), n_new)
            pre, dec = pre + p, dec + d
            toks.append(t[0])
        return pre, dec, torch.stack(toks)

    arms = {
        "base": plain(base), "shared": routed(road_model, torch.zeros(b, dtype=torch.long, device=device)),
        "distinct": routed(road_model, distinct), "distinct_1000": routed(bank_model, pick),
        "peft_road": plain(peft_road, adapter_names=names), "peft_lora": plain(peft_lora, adapter_names=names),
        "merged": plain(merged), "sequential": sequential,
    }
    for fn in arms.values():  # warm-up: lazy init, kernel load, allocator
        fn(2)
    times = {k: {"prefill": [], "decode": []} for k in arms}
    tokens = {}
    for _ in range(cfg["reps"]):
        for name, fn in arms.items():
            p, d, t = fn(new)
            times[name]["prefill"].append(p)
            times[name]["decode"].append(d)
            tokens[name] = t

    work = {"prefill": int(sum(len(r) for r in rows)), "decode": b * (new - 1)}
    med = {k: {ph: statistics.median(v[ph]) for ph in ("prefill", "decode")} for k, v in times.items()}
    for k in med:
        med[k]["total"] = med[k]["prefill"] + med[k]["decode"]
    tps = {k: {"prefill": work["prefill"] / v["prefill"], "decode": work["decode"] / v["decode"],
               "total": b * new / v["total"]} for k, v in med.items()}
    ratios, spread = {}, {}
    for peer in PEERS:
        for phase, suffix in (("decode", ""), ("prefill", "_prefill"), ("total", "_total")):
            key = f"distinct_vs_{peer}{suffix}"
            ratios[key] = med[peer][phase] / med["distinct"][phase]  # throughput ratio = time ratio
            if phase != "total":  # per-repetition ratios (each repetition ran every arm back to back)
                per = [x / y for x, y in zip(times[peer][phase], times["distinct"][phase])]
                spread[key] = [min(per), max(per)]

    ref = tokens["sequential"]
    same_rows = [bool(torch.equal(tokens["distinct"][i], ref[i])) for i in range(b)]
    bank_bytes = sum(layer.theta.numel() * layer.theta.element_size() + layer.alpha.numel() * layer.alpha.element_size()
                     for layer in road_layers(bank_model).values())
    model_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    gather_1000 = _gather_cost(bank_model, pick)
    gather_16 = _gather_cost(road_model, distinct)
    return {
        "benchmark": "batching", "setting": "lm", "device": str(device), "model": spec, "quick": quick, "config": cfg,
        "n_road_layers": len(paths), "prompt_lengths": [len(r) for r in rows], "padded_to": int(ids.shape[1]),
        "tail": fused.status(),
        "ratios": ratios, "ratio_spread": spread, "tokens_per_s": tps, "median_s": med,
        "times_s": times, "work_tokens": work,
        "checks": {
            "distinct_equals_sequential": all(same_rows), "rows_equal_to_sequential": sum(same_rows),
            "tokens_equal_to_sequential": int((tokens["distinct"] == ref).sum()), "tokens": int(ref.numel()),
            "distinct_equals_peft_road": bool(torch.equal(tokens["distinct"], tokens["peft_road"])),
            "shared_equals_merged_tokens": int((tokens["shared"] == tokens["merged"]).sum()),
        },
        "bank": {
            "adapters": cfg["bank"], "bytes": bank_bytes, "model_bytes": model_bytes,
            "fraction_of_model": bank_bytes / model_bytes,
            "params_per_adapter": sum(2 * rot.n_params(d, cfg["variant"]) for d in paths.values()),
            "model_params": sum(p.numel() for p in base.parameters()),
            "gather_s_per_batch_1000": gather_1000, "gather_s_per_batch_16": gather_16,
            "gather_fraction_of_prefill": gather_1000 / med["distinct_1000"]["prefill"],
        },
        "machine": machine(),
    }


def sweep(model="zoo:smollm2-135m", *, batches=(1, 4, 16), distinct=(1, 4, 16), prompt: int = 32, new: int = 8,
          reps: int = 2, quick: bool = False) -> dict:
    """How the ratios move with batch size (every sample its own adapter) and with the
    number of distinct adapters in a batch of ``max(batches)``: prefill and decode of
    equal-length prompts, roadinterp vs the plain model and vs peft RoAd / LoRA."""
    from roadinterp.zoo import load_model

    cfg = dict(LM_QUICK if quick else LM)
    base = (load_model(model) if isinstance(model, str) else model).eval()
    big = max(batches)
    paths, names, bank, road_model = _random_bank(base, big, cfg)
    peft_road = to_peft(bank, copy.deepcopy(base))
    peft_lora = peft_lora_adapters(copy.deepcopy(base), names, paths, cfg["lora_r"])
    g = torch.Generator().manual_seed(0)
    points = [("batch", b, b, b) for b in batches] + [("distinct", k, big, k) for k in distinct if k != big]
    rows = []
    for axis, x, b, k in points:
        ids = torch.randint(3, base.config.vocab_size, (b, prompt), generator=g).to(next(base.parameters()).device)
        mask = torch.ones_like(ids)
        which = torch.arange(b) % k
        arms = {
            "base": lambda n_new: greedy(base, ids, mask, n_new),
            "distinct": lambda n_new: _routed_greedy(road_model, which, ids, mask, n_new),
            "peft_road": lambda n_new: greedy(peft_road, ids, mask, n_new, adapter_names=[names[i] for i in which]),
            "peft_lora": lambda n_new: greedy(peft_lora, ids, mask, n_new, adapter_names=[names[i] for i in which]),
        }
        for fn in arms.values():
            fn(2)
        t = {a: {"prefill": [], "decode": []} for a in arms}
        for _ in range(reps):
            for a, fn in arms.items():
                p, d, _ = fn(new)
                t[a]["prefill"].append(p)
                t[a]["decode"].append(d)
        med = {a: {ph: statistics.median(v[ph]) for ph in v} for a, v in t.items()}
        row = {"axis": axis, "x": x, "batch": b, "n_distinct": k}
        for peer in ("base", "peft_road", "peft_lora"):
            row[f"distinct_vs_{peer}"] = med[peer]["decode"] / med["distinct"]["decode"]
            row[f"distinct_vs_{peer}_prefill"] = med[peer]["prefill"] / med["distinct"]["prefill"]
        rows.append(row)
    return {"benchmark": "batching_sweep", "model": model if isinstance(model, str) else type(model).__name__,
            "prompt": prompt, "new": new, "reps": reps, "tail": fused.status(), "rows": rows, "machine": machine()}


def _routed_greedy(model, which, ids, mask, n_new):
    with serve.route(model, which):
        return greedy(model, ids, mask, n_new)


def plot_sweep(result: dict, path: str) -> None:
    """Two panels: ratios vs batch size, and vs distinct adapters in the largest batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    series = [("distinct_vs_base", "vs plain model, decode"), ("distinct_vs_base_prefill", "vs plain model, prefill"),
              ("distinct_vs_peft_road", "vs peft RoAd, decode"), ("distinct_vs_peft_lora", "vs peft LoRA r=8, decode")]
    big = max(r["batch"] for r in result["rows"])
    for ax, axis, label in ((axes[0], "batch", "batch size (each sample its own adapter)"),
                            (axes[1], "distinct", f"distinct adapters in a batch of {big}")):
        rows = [r for r in result["rows"] if r["axis"] == axis or (axis == "distinct" and r["batch"] == big)]
        rows = sorted(rows, key=lambda r: r["batch"] if axis == "batch" else r["n_distinct"])
        xs = [r["batch"] if axis == "batch" else r["n_distinct"] for r in rows]
        for key, name in series:
            ax.plot(xs, [r[key] for r in rows], marker="o", label=name)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log", base=2)  # a noisy repetition can put one point far off; keep the rest readable
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label)
    axes[0].set_ylabel("throughput ratio (roadinterp mixed / peer)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Mixed-adapter serving, {result['model']} (prompt {result['prompt']}, {result['new']} new tokens, "
                 f"median of {result['reps']}, one thread)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # python -m roadinterp.bench.bench_batching_lm [--quick] [--reps N] [--sweep ...]
    import json
    import sys

    args = sys.argv[1:]
    torch.set_num_threads(1)
    n = int(args[args.index("--reps") + 1]) if "--reps" in args else None
    if "--sweep" in args:  # python -m roadinterp.bench.bench_batching_lm --sweep [--plot PNG] [--from JSON]
        if "--from" in args:
            with open(args[args.index("--from") + 1]) as f:
                res = json.load(f)
        else:
            res = sweep(quick="--quick" in args, **({} if n is None else {"reps": n}))
            print(json.dumps(res, indent=2))
        if "--plot" in args:
            plot_sweep(res, args[args.index("--plot") + 1])
    else:
        print(json.dumps(run_lm(quick="--quick" in args, reps=n), indent=2, default=str))
