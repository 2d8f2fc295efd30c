"""``roadinterp bench dii``: cost of one DII training step per family and width.

Two measurements, each a forward + backward at batch 32:

* **alone**: the interchange by itself on ``[32, d]`` hidden states, two causal
  variables of ``d/16`` coordinates each, called once per variable as pyvene does
  for a shared basis; the loss reaches the intervention's parameters and the inputs;
* **model**: the interchange attached through pyvene at block 0 (last position) of a
  small random GPT-2 (2 layers, sequence 8, vocab 1000, ``n_embd = d``); the inputs
  are embeddings that require grad, so every family (even ``neuron``, which has no
  parameters) pays the same backward through the model and the difference between
  families is the interchange alone.

Families: ``neuron`` (pyvene VanillaIntervention), ``road`` (1 RoAd layer),
``butterfly`` (2 factors of strides 1..d/2), ``das`` (pyvene RotatedSpaceIntervention,
a full orthogonal matrix re-parametrised on every weight access) and ``lowrank``
(pyvene LowRankRotatedSpaceIntervention, rank d/8). A configuration whose step is
estimated (power law through the two previous widths of the same family, cubic when
there is only one) or measured to exceed ``bound_s`` is skipped and reported with
its estimate. Conditions of one width are interleaved (roadinterp.bench.common).

Runs with one torch thread (``threads``): on this shared 2-core machine, a parallel
reduction with 2 threads (the ``sum`` in every broadcasting multiply's backward)
measured ~24 ms instead of ~7 us whenever the other core was busy, which swamps the
element-wise families; ``train_dii`` also trains with one thread by default.
"""

from __future__ import annotations

import math
import time

import torch

from roadinterp.bench.common import interleaved, machine, main, ratio, summary
from roadinterp.interventions import attach_dii, get_family, run_dii
from roadinterp.sites import Site

FAMILIES = ("neuron", "road", "butterfly", "das", "lowrank")
FULL = dict(widths=[256, 1024, 4096], model_widths=[256, 1024], batch=32, seq=8, layers=2, vocab=1000,
            reps=5, warmup=1, bound_s=20.0, target_s=0.3, threads=1)
QUICK = dict(widths=[16, 32], model_widths=[16], batch=4, seq=4, layers=1, vocab=50, reps=1, warmup=0,
             bound_s=20.0, target_s=0.0, threads=1)


def _build(family: str, d: int):
    built = get_family(family).build(d, [max(d // 16, 1)] * 2, seed=0)
    return built


def _alone_step(family: str, d: int, batch: int):
    """A closure running one fwd+bwd of the interchange alone."""
    built = _build(family, d)
    iv = built.interventions[0]
    g = torch.Generator().manual_seed(0)
    base = torch.randn(batch, d, generator=g).requires_grad_(True)
    srcs = [torch.randn(batch, d, generator=g) for _ in built.coords]
    subspaces = [[list(c)] * batch for c in built.coords]
    params = [p for p in iv.parameters() if p.requires_grad]

    def step():
        h = base.clone()  # a non-leaf, as inside a model (pyvene's swap writes in place)
        for s, sub in zip(srcs, subspaces):  # one call per variable, like pyvene with a shared basis
            h = iv(h, s, subspaces=sub)
        h.square().mean().backward()
        base.grad = None
        for p in params:
            p.grad = None

    return step


def _gpt2(d: int, cfg: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    heads = max(d // 64, 1)
    conf = GPT2Config(n_embd=d, n_layer=cfg["layers"], n_head=heads, vocab_size=cfg["vocab"], n_positions=64,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(conf).eval()


def _model_step(family: str, model, d: int, cfg: dict):
    built = _build(family, d)
    site = Site(0, "block_output", "last")
    pvm = attach_dii(model, site, built.interventions, shared=built.shared)
    g = torch.Generator().manual_seed(1)
    b, seq = cfg["batch"], cfg["seq"]
    base = {"inputs_embeds": torch.randn(b, seq, d, generator=g).requires_grad_(True)}
    srcs = [{"inputs_embeds": torch.randn(b, seq, d, generator=g)} for _ in built.coords]
    params = [p for iv in {id(i): i for i in built.interventions}.values() for p in iv.parameters() if p.requires_grad]

    def step():
        out = run_dii(pvm, site, base, srcs, built.coords)
        out.logits[:, -1].logsumexp(-1).mean().backward()
        base["inputs_embeds"].grad = None
        for p in params:
            p.grad = None

    return step


def _estimate(history: list[tuple[int, float]], d: int) -> float | None:
    """Power-law extrapolation of step time to width d from (width, seconds) so far."""
    if not history:
        return None
    if len(history) == 1:
        (w, t), p = history[0], 3.0
    else:
        (w0, t0), (w, t) = history[-2], history[-1]
        p = max(math.log(t / t0) / math.log(w / w0), 1.0) if t0 > 0 and t > 0 else 3.0
    return t * (d / w) ** p


def _inner(fn, target_s: float) -> int:
    """Repetitions per timed call so that one call lasts about target_s (one calibration run)."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return max(1, int(target_s / dt)) if dt > 0 and target_s > 0 else 1


def _time_width(makers: dict, cfg: dict, history: dict, label: str, d: int) -> tuple[dict, dict]:
    """Interleaved per-step seconds of the families at one width; skipped ones with reasons."""
    fns, skipped, inner = {}, {}, {}
    for fam, make in makers.items():
        est = _estimate(history[fam], d)
        if est is not None and est > cfg["bound_s"]:
            skipped[fam] = {"reason": f"estimated {est:.3g} s per step > bound {cfg['bound_s']} s",
                            "estimated_s": est}
            continue
        fn = make()
        t0 = time.perf_counter()
        fn()  # first call: also a warm-up and a guard against estimates that were too optimistic
        dt = time.perf_counter() - t0
        if dt > cfg["bound_s"]:
            skipped[fam] = {"reason": f"measured {dt:.3g} s per step > bound {cfg['bound_s']} s", "estimated_s": dt}
            continue
        n = _inner(fn, cfg["target_s"])
        inner[fam] = n
        fns[fam] = (lambda f=fn, k=n: [f() for _ in range(k)])
    times = interleaved(fns, reps=cfg["reps"], warmup=cfg["warmup"]) if fns else {}
    per_step = {f: [t / inner[f] for t in ts] for f, ts in times.items()}
    timed = summary(per_step)
    for fam, s in timed.items():
        history[fam].append((d, s["median_s"]))
    return timed, skipped


def run(quick: bool = False, families=FAMILIES) -> dict:
    """Per-step seconds (median) per family and width, alone and in a model; ratios; skips."""
    cfg = QUICK if quick else FULL
    old = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])  # see the module docstring: 2 threads stall on a loaded box
    try:
        return _run(cfg, quick, families)
    finally:
        torch.set_num_threads(old)


def _run(cfg: dict, quick: bool, families) -> dict:
    alone: dict[str, dict] = {}
    model: dict[str, dict] = {}
    skipped: dict[str, dict] = {}
    hist_a = {f: [] for f in families}
    hist_m = {f: [] for f in families}
    for d in cfg["widths"]:
        makers = {f: (lambda f=f: _alone_step(f, d, cfg["batch"])) for f in families}
        timed, skip = _time_width(makers, cfg, hist_a, "alone", d)
        alone[str(d)] = {f: s["median_s"] for f, s in timed.items()}
        for f, why in skip.items():
            skipped[f"alone/{f}/{d}"] = why
    for d in cfg["widths"]:
        if d not in cfg["model_widths"]:
            skipped[f"model/*/{d}"] = {"reason": f"a {cfg['layers']}-layer GPT-2 at n_embd={d} does not fit the "
                                                 "time bound on this machine (dense layers grow as d^2)"}
            continue
        gpt = _gpt2(d, cfg)
        makers = {f: (lambda f=f, gpt=gpt: _model_step(f, gpt, d, cfg)) for f in families}
        timed, skip = _time_width(makers, cfg, hist_m, "model", d)
        model[str(d)] = {f: s["median_s"] for f, s in timed.items()}
        for f, why in skip.items():
            skipped[f"model/{f}/{d}"] = why
        del gpt
    ref = "1024" if not quick else str(cfg["widths"][-1])

    def _r(table, a, b):
        t = table.get(ref, {})
        return ratio(t[a], t[b]) if a in t and b in t else None

    ratios = {
        f"das_vs_butterfly_{ref}": _r(alone, "das", "butterfly"),
        f"lowrank_vs_butterfly_{ref}": _r(alone, "lowrank", "butterfly"),
        f"butterfly_vs_neuron_{ref}": _r(alone, "butterfly", "neuron"),
    }
    mref = "1024" if not quick else str(cfg["model_widths"][-1])
    m = model.get(mref, {})
    ratios[f"butterfly_vs_neuron_model_{mref}"] = ratio(m["butterfly"], m["neuron"]) if {"butterfly", "neuron"} <= set(m) else None
    ratios[f"road_vs_neuron_model_{mref}"] = ratio(m["road"], m["neuron"]) if {"road", "neuron"} <= set(m) else None
    return {
        "benchmark": "dii", "quick": quick, "config": dict(cfg), "families": list(families),
        "alone_s": alone, "model_s": model, "skipped": skipped, "ratios": ratios,
        "targets": {"das_vs_butterfly_1024": ">= 100", "butterfly_vs_neuron_model_1024": "<= 1.3"},
        "machine": machine(),
    }


def plot(result: dict, path: str) -> None:
    """Log-log step time against width per family (alone: solid, in GPT-2: dashed).

    Skipped configurations are drawn as hollow markers at their estimate.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, fam in enumerate(result["families"]):
        color = f"C{i}"
        for table, style, tag in ((result["alone_s"], "-", "alone"), (result["model_s"], "--", "GPT-2")):
            pts = sorted((int(w), t[fam]) for w, t in table.items() if fam in t)
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=color, label=f"{fam} ({tag})")
        est = sorted((int(k.split("/")[2]), v["estimated_s"]) for k, v in result["skipped"].items()
                     if k.startswith(f"alone/{fam}/") and v.get("estimated_s"))
        if est:
            ax.plot(*zip(*est), linestyle="none", marker="o", mfc="none", color=color)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width d")
    ax.set_ylabel("seconds per fwd+bwd step (batch %d)" % result["config"]["batch"])
    ax.set_title("DII step cost by width (hollow: estimated, skipped)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # python -m roadinterp.bench.bench_dii [--quick] [--plot PNG] [--from JSON]
    main(run, plot)
