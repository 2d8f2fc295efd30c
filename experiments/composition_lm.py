"""Composing two behaviours on a real instruct LM (SmolLM2-135M-Instruct): RoAd vs LoReFT vs LoRA.

Behaviours (``roadinterp.chat_behaviours``) are rules applied to the base model's own
answers: ``upper`` (answer in upper case), ``frame`` (``Answer: <answer>.``) and
``french`` (numbers 1-10 as French words). A pair ``A+B`` is trained as two adapters,
never on combined targets, and scored on held-out prompts (disjoint slot values) for
A, B and both at once, plus ``neutral``: capital-city questions, where the capital must
still be named whatever the case or frame (what composition breaks).

Conditions per seed: base; A only; B only; A+B by
  RoAd, hidden-state sites (block_output, every position) and Linear outputs, each by
  (a) ``separate``: one adapter per behaviour on its own half of the 2D blocks, ``compose``;
  (b) ``joint``: the RoAd paper's protocol, one adapter over all blocks, every example
      routed to its behaviour's blocks, then both block sets applied;
  (c) LoReFT at the same sites, rank split between the behaviours, rows stacked;
  (d) LoRA (peft) on the same Linears, two adapters trained separately, deltas added.
Plus a lambda sweep of each RoAd component inside the composition (seed 0).

Compute (2 shared CPU cores): every adapter acts at layers >= ``--start``, so the
residual stream entering that layer is computed once and training runs only the last
layers (``chat_behaviours.tail_model``); targets are cut to their first
``--max-target`` tokens; generation is greedy and short.

    python experiments/composition_lm.py                                  # pair upper+frame, 3 seeds
    python experiments/composition_lm.py --pair french+frame --seeds 1 --placements site
    python experiments/composition_lm.py --quick --out-json /tmp/c.json --out-md /tmp/c.md --fig /tmp/c.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import roadinterp as ri  # noqa: E402
from roadinterp import chat_behaviours as cb  # noqa: E402
from roadinterp import io  # noqa: E402
from roadinterp.adapters.adapter import RoadAdapter  # noqa: E402
from roadinterp.adapters.compose import compose, split_blocks  # noqa: E402
from roadinterp.adapters.composition import train_composable  # noqa: E402
from roadinterp.adapters.linear import apply_road, linear_targets  # noqa: E402
from roadinterp.training import train_adapter  # noqa: E402
from roadinterp.interventions.loreft import LoreftAdapter, concat_loreft  # noqa: E402
from roadinterp.zoo import load_tokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_md import cell_text, finite_json, mean_std, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "zoo:smollm2-135m"
LINEAR_KINDS = ["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # outputs >= 576 wide
FAMILY = {"upper+frame": "general", "french+frame": "number"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", default="upper+frame", choices=sorted(FAMILY), help="the two behaviours A+B")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed-list", default=None, help="run only these seeds, e.g. 1 (default: 0..seeds-1)")
    p.add_argument("--partial", default=None,
                   help="write this process's raw per-seed results here (JSON) instead of the docs; see --merge")
    p.add_argument("--merge", nargs="+", default=None,
                   help="partial files of parallel runs (one seed each): merge them and write the docs")
    p.add_argument("--steps", type=int, default=8, help="Adam steps per adapter")
    p.add_argument("--batch", type=int, default=8, help="examples per step per behaviour")
    p.add_argument("--start", type=int, default=22, help="first adapted layer (the tail starts here)")
    p.add_argument("--site-layers", default="22,24,26,28", help="block_output sites (every position)")
    p.add_argument("--variant", default="road_4")
    p.add_argument("--road-lr", type=float, default=0.08)
    p.add_argument("--loreft-rank", type=int, default=4, help="LoReFT rank per behaviour (stacked: 2x)")
    p.add_argument("--loreft-lr", type=float, default=0.02)
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lora-lr", type=float, default=0.01)
    p.add_argument("--max-target", type=int, default=8, help="target tokens trained per example")
    p.add_argument("--n-prompts", type=int, default=48, help="template prompts per split (train, held-out pool)")
    p.add_argument("--n-test", type=int, default=24, help="held-out prompts scored (evenly spaced over the templates)")
    p.add_argument("--n-neutral", type=int, default=12, help="neutral capital questions scored")
    p.add_argument("--neutral-tokens", type=int, default=16, help="generated tokens per neutral prompt")
    p.add_argument("--new-tokens", type=int, default=8, help="generated tokens scored per behaviour prompt")
    p.add_argument("--placements", default="site,linear")
    p.add_argument("--baselines", default="loreft,lora")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 seed, 3 steps, 6 test prompts (tests)")
    p.add_argument("--out-json", default=str(ROOT / "docs" / "data" / "composition_lm.json"))
    p.add_argument("--out-md", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--fig", default=str(ROOT / "docs" / "img" / "composition_lm_lambda.png"))
    p.add_argument("--save-adapters", default=None, help="directory for seed 0's RoAd site adapters")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.steps = 1, 3
    a.A, a.B = a.pair.split("+")
    a.site_layers = [int(x) for x in a.site_layers.split(",")]
    a.seed_list = list(range(a.seeds)) if a.seed_list is None else [int(x) for x in a.seed_list.split(",")]
    a.placements = [x for x in a.placements.split(",") if x]
    a.baselines = [x for x in a.baselines.split(",") if x]
    return a


# ------------------------------------------------------------------ base answers
def base_answers(model, tok, questions, cache: Path) -> dict[str, str]:
    """The base model's greedy answers (cached as JSON: they cost a generation each)."""
    known = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [q for q in questions if q not in known]
    if todo:
        for q, t in zip(todo, cb.generate_texts(model, tok, todo, max_new_tokens=14)):
            known[q] = cb.clean_answer(t)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1))
    return {q: known[q] for q in questions}


# ------------------------------------------------------------------ training
def train_road_linear(model, tail, targets, owners, data, *, joint, a, seed):
    """RoAd on Linear outputs: per-behaviour adapters, or one routed bank (joint)."""
    names = list(owners)
    ads = {n: RoadAdapter(targets, variant=a.variant, group_size=64, blocks=owners[n], placement="linear",
                          seed=seed, meta={"behaviour": n, "joint": joint, "seed": seed}) for n in names}
    inputs, labels, rows = data
    banks = [ads] if joint else [{n: ads[n]} for n in names]
    for bank in banks:
        idx_of = torch.cat([rows[n] for n in bank])
        ids_all = torch.cat([torch.full((len(rows[n]),), i) for i, n in enumerate(bank)])
        with apply_road(model, bank) as handle:
            params = []
            for layer in handle.layers.values():
                layer.theta.requires_grad_(True)
                layer.alpha.requires_grad_(True)
                params += [layer.theta, layer.alpha]

            layers = list(handle.layers.values())

            def route(idx, layers=layers, ids_all=ids_all):
                for layer in layers:
                    layer.set_adapter_ids(ids_all[idx])

            sub = {k: v[idx_of] for k, v in inputs.items()}
            cb.fit(tail, params, sub, labels[idx_of], steps=a.steps, batch_size=a.batch * len(bank), lr=a.road_lr,
                   seed=seed, before_step=route)
            with torch.no_grad():
                for path, layer in handle.layers.items():
                    for i, n in enumerate(bank):
                        ads[n].rotation(path).theta.copy_(layer.theta[i])
                        ads[n].rotation(path).alpha.copy_(layer.alpha[i])
    return ads


def train_lora(model, tail, data, *, a, seed, names):
    """Two peft LoRA adapters on the tail's Linears, trained separately; returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    inputs, labels, rows = data
    regex = rf"model\.layers\.({'|'.join(str(i) for i in range(a.start, 30))})\.(self_attn|mlp)\.({'|'.join(LINEAR_KINDS)})"
    pm = None
    for i, n in enumerate(names):
        torch.manual_seed(seed * 100 + i)
        cfg = LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, target_modules=regex, lora_dropout=0.0)
        if pm is None:
            pm = get_peft_model(model, cfg, adapter_name=n)
        else:
            pm.add_adapter(n, cfg)
        pm.base_model.set_adapter(n)
        params = [p for name, p in model.named_parameters() if "lora_" in name and name.split(".")[-2] == n]
        for p in params:
            p.requires_grad_(True)
        sub = {k: v[rows[n]] for k, v in inputs.items()}
        cb.fit(tail, params, sub, labels[rows[n]], steps=a.steps, batch_size=a.batch, lr=a.lora_lr, seed=seed)
        for p in params:
            p.requires_grad_(False)
    return pm


def road_bank(sep, joint, A, B) -> dict:
    """The RoAd conditions of one placement: each adapter alone and composed, separate and joint."""
    return {f"{A} only": sep[A], f"{B} only": sep[B], "separate": compose(sep),
            f"{A} only (joint)": joint[A], f"{B} only (joint)": joint[B], "joint": compose(joint)}


def command(argv) -> str:
    """The command line that ran this process, as recorded in the outputs."""
    return ("python experiments/composition_lm.py " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()


# ------------------------------------------------------------------ scoring
def score_rows(texts, questions, answers, A, B):
    rows = []
    for t, q in zip(texts, questions):
        sa, sb = cb.score(t, A), cb.score(t, B)
        rows.append({"A": sa, "B": sb, "A+B": sa and sb, "content": cb.score(t, "content", base_answer=answers[q])})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def neutral_rate(texts):
    return float(np.mean([cb.score(t, "neutral", capital=cap) for t, (_, cap) in zip(texts, cb.NEUTRAL)]))


def run_conditions(model, tok, conds, test_q, neutral_q, answers, a, *, generate_with, neutral=None):
    """Score each condition: generate_with(condition_names, questions, new_tokens) -> texts.

    ``neutral``: the conditions also scored on the neutral prompts (default: all); the
    others get NaN there (to save generation on a shared CPU).
    """
    out = {}
    names = list(conds)
    neutral = names if neutral is None else [n for n in names if n in neutral]
    beh_q = [q for _ in names for q in test_q]
    texts = generate_with([n for n in names for _ in test_q], beh_q, a.new_tokens)
    neu_texts = generate_with([n for n in neutral for _ in neutral_q], [q for _ in neutral for q in neutral_q],
                             a.neutral_tokens) \
        if neutral else []
    for i, n in enumerate(names):
        r = score_rows(texts[i * len(test_q):(i + 1) * len(test_q)], test_q, answers, a.A, a.B)
        r["neutral"] = float("nan")
        if n in neutral:
            j = neutral.index(n)
            r["neutral"] = neutral_rate(neu_texts[j * len(neutral_q):(j + 1) * len(neutral_q)])
        r["examples"] = texts[i * len(test_q):i * len(test_q) + 3]
        out[n] = r
    return out


def bank_generator(model, tok, bank):
    """Mixed-batch generation through roadinterp.serve (one row per (condition, prompt))."""
    def gen(cond_names, questions, new_tokens):
        ids = [None if c == "base" else c for c in cond_names]
        return cb.generate_texts(model, tok, questions, adapters=bank, adapter_ids=ids, max_new_tokens=new_tokens)
    return gen


def grouped_generator(model, tok, setup):
    """Generation grouped by condition: ``setup(condition)`` is a context manager."""
    def gen(cond_names, questions, new_tokens):
        texts = [None] * len(questions)
        for c in dict.fromkeys(cond_names):
            idx = [i for i, n in enumerate(cond_names) if n == c]
            with setup(c):
                got = cb.generate_texts(model, tok, [questions[i] for i in idx], max_new_tokens=new_tokens)
            for i, t in zip(idx, got):
                texts[i] = t
        return texts
    return gen


def _lora_active(pm, active):
    """Condition name -> context manager that activates its LoRA adapter(s) (a list = deltas added)."""
    @contextlib.contextmanager
    def setup(c):
        pm.base_model.set_adapter(active[c])
        yield

    return setup


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    a = parse(argv)
    if a.merge:
        return merge(a, argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = ri.load_model(MODEL)
    tok = load_tokenizer(MODEL)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    A, B = a.A, a.B
    family = FAMILY[a.pair]
    # a prefix of the (interleaved, since grown to >= 1K) template prompts keeps this budget's size
    train_q, test_q = cb.prompts(family, "train")[:a.n_prompts], cb.prompts(family, "test")[:a.n_prompts]
    neutral_q = [q for q, _ in cb.NEUTRAL]
    cache = Path.home() / ".cache" / "roadinterp" / "composition_lm" / "base_answers.json"
    answers = base_answers(model, tok, train_q + test_q, cache)
    if "french" in (A, B):  # keep prompts whose base answer has a number to translate
        train_q = [q for q in train_q if cb.transform(answers[q], ("french",)) != answers[q]]
        test_q = [q for q in test_q if cb.transform(answers[q], ("french",)) != answers[q]]
    if a.quick:
        a.n_test, a.n_neutral = 6, 4
    test_q = [test_q[round(i * len(test_q) / min(a.n_test, len(test_q)))] for i in range(min(a.n_test, len(test_q)))]
    neutral_q = neutral_q[:a.n_neutral]
    print(f"{len(train_q)} training prompts, {len(test_q)} held-out, base answers ready at "
          f"{time.perf_counter() - t0:.0f}s", file=sys.stderr)

    # one teacher-forcing table: rows 0..n-1 = A targets, n..2n-1 = B targets (same prompts)
    n = len(train_q)
    enc = cb.encode_targets(tok, train_q * 2, [cb.transform(answers[q], (A,)) for q in train_q]
                            + [cb.transform(answers[q], (B,)) for q in train_q], max_target_tokens=a.max_target)
    inputs = cb.prefix_states(model, enc, a.start)
    rows = {A: torch.arange(n), B: torch.arange(n, 2 * n)}
    data = (inputs, enc.labels, rows)
    tail = cb.tail_model(model, a.start, enc.k)
    print(f"prefix states {tuple(inputs['inputs_embeds'].shape)} at {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    site_keys = [f"{layer}:block_output:all" for layer in a.site_layers]
    tail_sites = [ri.Site(layer - a.start, "block_output", "all") for layer in a.site_layers]
    site_targets = {k: model.config.hidden_size for k in site_keys}
    owners = split_blocks(model.config.hidden_size // 2, [A, B])
    lin_targets = {p: w for p, w in linear_targets(model, LINEAR_KINDS).items()
                   if int(p.split(".")[2]) >= a.start}
    shift = cb.shift_site_key(a.start)
    task = cb.TokenLoss()

    results: dict[str, list[dict]] = {}
    sweep_rows = []
    base_done = None
    for seed in a.seed_list:
        torch.manual_seed(seed)
        per: dict[str, dict] = {}
        banks: dict[str, dict] = {}
        if "site" in a.placements:
            tdata = {b: ({k: v[rows[b]] for k, v in inputs.items()}, enc.labels[rows[b]]) for b in (A, B)}
            sep = train_composable(tail, tdata, tail_sites, owners, joint=False, task=task, variant=a.variant,
                                   group_size=64, steps=a.steps, batch_size=a.batch, lr=a.road_lr, seed=seed)
            joint = train_composable(tail, tdata, tail_sites, owners, joint=True, task=task, variant=a.variant,
                                     group_size=64, steps=a.steps, batch_size=2 * a.batch, lr=a.road_lr, seed=seed)
            sep = {k: cb.map_keys(v, shift) for k, v in sep.items()}
            joint = {k: cb.map_keys(v, shift) for k, v in joint.items()}
            banks["site"] = road_bank(sep, joint, A, B)
            if seed == 0 and a.save_adapters:
                for b in (A, B):
                    io.save(sep[b], Path(a.save_adapters) / b)
            if seed == 0:
                lams = [0.0, 1.0] if a.quick else [0.0, 0.5, 1.5, 2.0]  # 1.0 = the composition itself
                sweep_bank = {f"{comp}={lam}": compose(sep, weights={comp: lam}) for comp in (A, B) for lam in lams}
                sw = run_conditions(model, tok, sweep_bank, test_q, neutral_q, answers, a, neutral=(),
                                    generate_with=bank_generator(model, tok, sweep_bank))
                for name, r in sw.items():
                    comp, lam = name.split("=")
                    sweep_rows.append({"component": comp, "lambda": float(lam), **{k: r[k] for k in ("A", "B", "A+B")}})
            print(f"seed {seed}: site adapters at {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        if "linear" in a.placements:
            sep = train_road_linear(model, tail, lin_targets, owners, data, joint=False, a=a, seed=seed)
            joint = train_road_linear(model, tail, lin_targets, owners, data, joint=True, a=a, seed=seed)
            banks["linear"] = road_bank(sep, joint, A, B)
            print(f"seed {seed}: linear adapters at {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        for placement, bank in banks.items():
            conds = {"base": None, **bank} if base_done is None else dict(bank)
            got = run_conditions(model, tok, conds, test_q, neutral_q, answers, a, neutral=("base", "separate", "joint"),
                                 generate_with=bank_generator(model, tok, bank))
            if "base" in got:
                base_done = got.pop("base")
            for c, r in got.items():
                per[f"road/{placement}/{c}"] = r
        if sweep_rows and not any(r["lambda"] == 1.0 for r in sweep_rows):  # lambda 1 is `separate`, scored above
            r = per["road/site/separate"]
            sweep_rows += [{"component": comp, "lambda": 1.0, **{k: r[k] for k in ("A", "B", "A+B")}} for comp in (A, B)]
        if "loreft" in a.baselines:
            lo = {}
            for i, b in enumerate((A, B)):
                ad = LoreftAdapter(site_targets, rank=a.loreft_rank, seed=seed * 10 + i, meta={"behaviour": b})
                x = {k: v[rows[b]] for k, v in inputs.items()}
                train_adapter(tail, tail_sites, [ad.intervention(k) for k in site_keys], x, enc.labels[rows[b]],
                              task=task, steps=a.steps, batch_size=a.batch, lr=a.loreft_lr, seed=seed)
                lo[b] = ad
            lo_conds = {f"{A} only": lo[A], f"{B} only": lo[B], "stacked": concat_loreft(lo)}
            got = run_conditions(model, tok, lo_conds, test_q, neutral_q, answers, a, neutral=("stacked",),
                                 generate_with=grouped_generator(
                model, tok, lambda c, conds=lo_conds: cb.loreft_hooks(model, conds[c])))
            per.update({f"loreft/site/{c}": r for c, r in got.items()})
            print(f"seed {seed}: loreft at {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        if "lora" in a.baselines:
            pm = train_lora(model, tail, data, a=a, seed=seed, names=(A, B))
            active = {f"{A} only": A, f"{B} only": B, "task arithmetic": [A, B]}

            got = run_conditions(model, tok, active, test_q, neutral_q, answers, a, neutral=("task arithmetic",),
                                 generate_with=grouped_generator(model, tok, _lora_active(pm, active)))
            per.update({f"lora/linear/{c}": r for c, r in got.items()})
            pm.unload()  # puts the original Linears back into `model`
            for p in model.parameters():
                p.requires_grad_(False)
            print(f"seed {seed}: lora at {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        for k, r in per.items():
            results.setdefault(k, []).append(r)
        # written after every seed, so a long run leaves its finished seeds behind
        counts = (len(train_q), len(test_q), len(neutral_q))
        if a.partial:
            Path(a.partial).write_text(json.dumps(finite_json({
                "command": command(argv), "results": results, "base": base_done, "sweep_rows": sweep_rows,
                "seconds": time.perf_counter() - t0, "counts": counts})))
        else:
            write_outputs(a, argv, results, base_done, sweep_rows, time.perf_counter() - t0, *counts,
                          seeds_done=len(next(iter(results.values()))))
    return 0


def merge(a, argv) -> int:
    """Merge the partial results of parallel single-seed runs, then write the docs as one run."""
    parts = [json.loads(Path(p).read_text()) for p in a.merge]
    results: dict[str, list] = {}
    for part in parts:
        for k, rs in part["results"].items():
            results.setdefault(k, []).extend(rs)
    base = next(p["base"] for p in parts if p["base"])
    sweep = [r for p in parts for r in p["sweep_rows"]]
    nan = float("nan")
    for rs in results.values():
        for r in rs:
            r.update({k: nan if v is None else v for k, v in r.items() if k != "examples"})
    a.commands = [p["command"] for p in parts]
    write_outputs(a, argv, results, base, sweep, max(p["seconds"] for p in parts), *parts[0]["counts"],
                  seeds_done=len(next(iter(results.values()))))
    return 0


# ------------------------------------------------------------------ outputs
def summarise(results, base, A, B):
    """Per-method numbers in the issue's form, RoAd's best protocol by A+B (both at once)."""
    def entry(prefix, combined, protocol):
        a_ = mean_std([r["A"] for r in results[f"{prefix}/{A} only{combined[1]}"]])
        b_ = mean_std([r["B"] for r in results[f"{prefix}/{B} only{combined[1]}"]])
        ab = mean_std([r["A+B"] for r in results[f"{prefix}/{combined[0]}"]])
        neu = mean_std([r["neutral"] for r in results[f"{prefix}/{combined[0]}"]])
        return {"A": a_[0], "B": b_[0], "A+B": ab[0], "neutral": neu[0], "A+B_std": ab[1],
                "base_neutral": base["neutral"], "protocol": protocol,
                "target_met": bool(ab[0] >= 0.8 * min(a_[0], b_[0]) and abs(neu[0] - base["neutral"]) <= 0.05)}

    out = {}
    road = []
    for placement in ("site", "linear"):
        for proto, suffix in (("separate", ""), ("joint", " (joint)")):
            if f"road/{placement}/{proto}" in results:
                road.append(entry(f"road/{placement}", (proto, suffix),
                                  f"RoAd, {'hidden-state sites' if placement == 'site' else 'Linear outputs'}, "
                                  f"{'separate training on disjoint blocks, compose' if proto == 'separate' else 'joint training with per-example routing to disjoint blocks (RoAd paper)'}"))
    if road:
        out["road"] = max(road, key=lambda e: e["A+B"])
        out["road_all"] = road
    if "loreft/site/stacked" in results:
        out["loreft"] = entry("loreft/site", ("stacked", ""), "LoReFT at the same sites, rank split, rows stacked")
    if "lora/linear/task arithmetic" in results:
        out["lora"] = entry("lora/linear", ("task arithmetic", ""),
                            "LoRA (peft) on the same Linears, trained separately, deltas added")
    return out


def table(results, base, A, B) -> str:
    head = ["method / placement", "condition", f"{A}", f"{B}", f"{A}+{B} (both)", "content kept", "neutral"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| base model | - | " + " | ".join(f"{base[k]:.3f}" for k in ("A", "B", "A+B", "content", "neutral")) + " |")
    for key, rs in results.items():
        method, placement, cond = key.split("/", 2)
        cells = [cell_text(*mean_std([r[k] for r in rs])) for k in ("A", "B", "A+B", "content", "neutral")]
        lines.append(f"| {method} / {placement} | {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows, path, A, B):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, comp, other in zip(axes, (A, B), (B, A)):
        rs = sorted((r for r in rows if r["component"] == comp), key=lambda r: r["lambda"])
        lam = [r["lambda"] for r in rs]
        for k, style in ((A, "-o"), (B, "-s"), ("A+B", "-^")):
            key = k if k == "A+B" else ("A" if k == A else "B")
            ax.plot(lam, [r[key] for r in rs], style, label=f"{A}+{B}" if k == "A+B" else k)
        ax.set_xlabel(f"lambda of {comp} ({other} at 1)")
        ax.set_title(f"compose(..., weights={{'{comp}': lambda}})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out rate")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(a, argv, results, base, sweep_rows, seconds, n_train, n_test, n_neutral, *, seeds_done):
    A, B = a.A, a.B
    cmd = command(argv)
    if getattr(a, "commands", None):  # merged from parallel runs: name every command
        cmd = " & ".join(a.commands) + "; then " + cmd
    summary = summarise(results, base, A, B)
    summary.update({"pair": a.pair, "A_name": A, "B_name": B, "command": cmd.strip(), "seeds": seeds_done,
                    "minutes": round(seconds / 60, 1), "base": {k: base[k] for k in ("A", "B", "A+B", "neutral")},
                    "conditions": {k: {m: mean_std([r[m] for r in rs]) for m in ("A", "B", "A+B", "content", "neutral")}
                                   for k, rs in results.items()},
                    "examples": {k: rs[0]["examples"] for k, rs in results.items()},
                    "lambda_sweep": sweep_rows})
    path = Path(a.out_json)
    doc = json.loads(path.read_text()) if path.exists() else {}
    if a.pair == "upper+frame":
        doc.update({k: v for k, v in summary.items()})
    else:
        doc["second_pair"] = summary
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite_json(doc), indent=1) + "\n")
    if sweep_rows:
        plot_sweep(sweep_rows, a.fig, A, B)
    rd = summary.get("road", {})
    body = f"""Command: `{cmd.strip()}` ({seeds_done} seed(s), {seconds / 60:.1f} min wall per process, {a.threads} thread each on a shared 2-core machine).
Model `{MODEL}` (SmolLM2-135M-Instruct). Behaviours: `{A}` and `{B}` (`roadinterp.chat_behaviours`), trained on
{n_train} template prompts with the base model's own answers transformed by rule (first {a.max_target} target
tokens, {a.steps} Adam steps of {a.batch} examples per behaviour); scored on {n_test} held-out prompts (slot values
never trained on, {a.new_tokens} greedy tokens) and {n_neutral} neutral capital questions ({a.neutral_tokens} tokens). Adapters act at
layers >= {a.start}: RoAd {a.variant} at block_output of layers {a.site_layers} (every position) or on the outputs
of {', '.join(LINEAR_KINDS)} there; each behaviour owns half of the 2D blocks. LoReFT rank {a.loreft_rank} per
behaviour at the same sites; LoRA r={a.lora_rank} on the same Linears. Mean ± std over seeds; "both" = both
properties in one answer; "content kept" = the answer's first word is the base answer's.

{table(results, base, A, B)}

Best RoAd protocol: {rd.get('protocol', 'n/a')}: A+B {rd.get('A+B', float('nan')):.3f} vs 0.8 x min(A alone, B alone) =
{0.8 * min(rd.get('A', float('nan')), rd.get('B', float('nan'))):.3f}; neutral {rd.get('neutral', float('nan')):.3f} vs
base {base['neutral']:.3f}; target met: {rd.get('target_met')}.
"""
    if sweep_rows:
        body += f"\nLambda sweep (seed 0, RoAd sites, separate): `{a.fig if not str(a.fig).startswith(str(ROOT)) else Path(a.fig).relative_to(ROOT)}`.\n"
    heading = f"## Composition on SmolLM2-135M-Instruct: {A} + {B}"
    write_section(Path(a.out_md), heading, body)
    print(body)


if __name__ == "__main__":
    raise SystemExit(main())
