"""``roadinterp bench batching``: throughput of mixed-adapter batches.

A small Llama-like model with random weights (hidden 512, intermediate 1408, 4
layers, 8 heads, vocab 1000) gets RoAd on every Linear of its blocks. A batch of
16 prompts of 32 tokens generates 64 greedy tokens under four conditions: no
adapter (ids all -1), one shared adapter, 16 distinct adapters, and one call per
adapter with batch 1 (sequential). Peers, in the same run and interleaved: the
plain model (no RoAd layers), peft's RoAd and peft's LoRA (r=8) with 16 adapters
and ``adapter_names`` mixed batches. Prefill: one 16x32 forward, plain vs distinct.
"""

from __future__ import annotations

import copy

import torch

from roadinterp.bench.common import interleaved, machine, peft_lora_adapters, ratio, summary
from roadinterp.adapters import serve
from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.linear import apply_road, linear_targets
from roadinterp.adapters.peft_interop import to_peft

FULL = dict(hidden=512, intermediate=1408, layers=4, heads=8, vocab=1000, batch=16, prompt=32, new=64,
            group_size=64, reps=5, warmup=1, lora_r=8)
QUICK = dict(hidden=64, intermediate=128, layers=2, heads=4, vocab=100, batch=4, prompt=8, new=4,
             group_size=32, reps=1, warmup=0, lora_r=4)


def _model(cfg: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"], num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"], vocab_size=cfg["vocab"],
        max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None  # always generate exactly `new` tokens
    model.generation_config.pad_token_id = 0
    return model


def run(quick: bool = False, threads: int | None = 1, model: str | None = None, reps: int | None = None) -> dict:
    """Run the benchmark; return throughputs (tokens/s), ratios and the setup.

    ``model`` (e.g. ``"zoo:smollm2-135m"``): the real-LM setting
    (:mod:`roadinterp.bench.bench_batching_lm`); otherwise the toy Llama (``quick``: tiny).
    ``threads=1`` (default): on a shared 2-core machine two torch threads stall in
    small reductions (see bench_dii), which swamps the per-op costs measured here.
    """
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if model is not None:
            from roadinterp.bench.bench_batching_lm import run_lm

            return run_lm(model, quick=quick, reps=reps)
        return _run(quick)
    finally:
        torch.set_num_threads(old)


def _run(quick: bool) -> dict:
    cfg = QUICK if quick else FULL
    batch, prompt, new = cfg["batch"], cfg["prompt"], cfg["new"]
    base = _model(cfg)
    targets = {k: v for k, v in linear_targets(base, "all-linear").items() if ".layers." in k}
    names = [f"task{i}" for i in range(batch)]
    bank = {
        n: RoadAdapter(targets, variant="road_1", group_size=cfg["group_size"], placement="linear",
                       init="random", seed=i)
        for i, n in enumerate(names)
    }
    road_model = copy.deepcopy(base)
    apply_road(road_model, bank)
    peft_road = to_peft(bank, copy.deepcopy(base))
    peft_lora = peft_lora_adapters(copy.deepcopy(base), names, targets, cfg["lora_r"])

    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, cfg["vocab"], (batch, prompt), generator=g)
    mask = torch.ones_like(input_ids)
    gen_kw = dict(max_new_tokens=new, do_sample=False, pad_token_id=0)
    distinct = torch.arange(batch)

    def plain():
        return base.generate(input_ids=input_ids, attention_mask=mask, **gen_kw)

    def road(ids):
        return lambda: serve.generate(road_model, input_ids, adapter_ids=ids, attention_mask=mask, **gen_kw)

    def sequential():
        return [serve.generate(road_model, input_ids[i:i + 1], adapter_ids=[i], attention_mask=mask[i:i + 1],
                               **gen_kw) for i in range(batch)]

    def peer(pm):
        return lambda: pm.generate(input_ids=input_ids, attention_mask=mask, adapter_names=names, **gen_kw)

    @torch.no_grad()
    def prefill_plain():
        return base(input_ids=input_ids, attention_mask=mask)

    def prefill_distinct():
        return serve.forward(road_model, {"input_ids": input_ids, "attention_mask": mask}, distinct)

    # the mixed batch must produce what peft's RoAd produces (same maths, same layout)
    with torch.no_grad():
        ours = road(distinct)()
        theirs = peer(peft_road)()
        agree = bool(torch.equal(ours, theirs))
        single = sequential()
        agree_seq = all(torch.equal(ours[i], single[i][0]) for i in range(batch))

    gen_fns = {
        "base": plain, "no_adapter": road(torch.full((batch,), -1)), "shared": road(torch.zeros(batch, dtype=torch.long)),
        "distinct": road(distinct), "sequential": sequential, "peft_road": peer(peft_road),
        "peft_lora": peer(peft_lora),
    }
    gen_times = interleaved(gen_fns, reps=cfg["reps"], warmup=cfg["warmup"])
    pre_times = interleaved({"base_prefill": prefill_plain, "distinct_prefill": prefill_distinct},
                            reps=max(cfg["reps"] * 4, 3), warmup=cfg["warmup"] + 1)
    gen = summary(gen_times, batch * new)
    pre = summary(pre_times, batch * prompt)
    tps = {k: v["per_s"] for k, v in {**gen, **pre}.items()}
    ratios = {
        "distinct_vs_shared": ratio(tps["distinct"], tps["shared"]),
        "distinct_vs_base": ratio(tps["distinct"], tps["base"]),
        "distinct_vs_peft_road": ratio(tps["distinct"], tps["peft_road"]),
        "distinct_vs_peft_lora": ratio(tps["distinct"], tps["peft_lora"]),
        "distinct_vs_sequential": ratio(tps["distinct"], tps["sequential"]),
        "distinct_vs_base_prefill": ratio(tps["distinct_prefill"], tps["base_prefill"]),
    }
    return {
        "benchmark": "batching", "quick": quick, "config": dict(cfg), "n_road_layers": len(targets),
        "tokens_per_s": tps, "ratios": ratios, "timings": {**gen, **pre},
        "checks": {"distinct_equals_peft_road": agree, "distinct_equals_sequential": agree_seq},
        "machine": machine(),
    }


if __name__ == "__main__":  # python -m roadinterp.bench.bench_batching [--quick]
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
