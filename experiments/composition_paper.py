"""The RoAd paper's composition protocol on SmolLM2-135M-Instruct, our own protocols, and baselines.

Paper (arXiv 2409.00119, after pyreft's compositional notebook): RoAd_1 as an intervention on
one middle block's output (here layer 15 of 30) at the **last prompt token only**, the 2D
blocks split in halves, one behaviour per half, 5 epochs of ~1K rows per behaviour, lr 5e-3,
batch 8. Behaviours and data come from JSONL files (``python -m roadinterp.chat_behaviours
write``); training is :func:`roadinterp.adapters.behaviour.train_from_data`.

Protocols (``--protocols``; each gives adapters A, B and their combination A+B):

- ``joint``: the paper: one stream of both behaviours' rows, each routed to its half;
- ``separate``: each behaviour trained alone on its half, then ``compose``;
- ``preserve``: ``separate`` plus ``--preserve-weight`` x KL(base || adapted) on the next-token
  distribution of neutral *training* prompts (targets the neutral collapse);
- ``frozen``: A alone; then B trained with A attached and frozen, on the combined targets
  (targets "one behaviour wins the opening": B learns on top of A's edit);
- ``own_layers``: A at ``--layer``, B at ``--layer-b``, all blocks each, stacked (``combine``);
- ``loreft``: LoReFT (rank ``--loreft-rank`` each) at the same site, rows stacked;
- ``lora``: peft LoRA on the Linears after the site, trained separately, deltas added;
- ``linear``: ours, the PEFT usage of RoAd: RoAd_1 on the outputs of the projections
  (``--linear-modules``) of many blocks (``--linear-layers``), every position, each behaviour on
  its half of the 2D blocks of every projection, trained separately (``--dist-*``), then
  composed: many small per-layer rotations instead of one large push at one position;
- ``linear_preserve``: ``linear`` plus the KL-to-base term on neutral training prompts.

``--lambda-grid`` adds, for every RoAd protocol, a composition at scales (lambda_A, lambda_B)
chosen on a validation split (training-split prompts not trained on, and neutral training
prompts), scored on the test prompts as ``A+B_cal`` / ``content_cal`` / ``neutral_cal``.
Training stops at the epoch cap or when the train loss plateaus (``--plateau``, ``--max-minutes``);
each cell keeps the whole curve.

Evaluation per (pair, protocol, seed) cell: held-out prompts (disjoint slot values) scored for
A alone, B alone, both at once (A+B), content kept, and neutral capital questions; a measured
diagnosis of how the adapters move each other's readout (:mod:`roadinterp.adapters.diagnose`).
Each cell is one JSON file under ``--run-dir`` written as it finishes; a rerun skips done cells.

    python experiments/composition_paper.py --quick                       # ~2 min smoke run
    python experiments/composition_paper.py --pairs upper+frame --protocols joint --seeds 3
    python experiments/composition_paper.py --aggregate-only             # rewrite outputs from the cells
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_md import finite_json  # noqa: E402
MODEL = "zoo:smollm2-135m"
FAMILY = {"upper+frame": "general", "french+frame": "number"}
PROTOCOLS = ("joint", "separate", "preserve", "frozen", "own_layers", "loreft", "lora", "linear", "linear_preserve")
ROAD = ("joint", "separate", "preserve", "frozen", "own_layers", "linear", "linear_preserve")
METRICS = ("A", "B", "A+B", "A_in_AB", "B_in_AB", "content", "neutral", "neutral_A", "neutral_B")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default="upper+frame,french+frame")
    p.add_argument("--protocols", default=",".join(PROTOCOLS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed-list", default=None, help="only these seeds, e.g. 1,2")
    p.add_argument("--run-dir", default=str(ROOT / "runs" / "composition_paper"))
    p.add_argument("--data", default=None, help="JSONL directory (default RUN_DIR/data; written if missing)")
    p.add_argument("--layer", type=int, default=15, help="site: output of this block, last prompt token")
    p.add_argument("--layer-b", type=int, default=20, help="B's layer in the own_layers protocol")
    p.add_argument("--n-train", type=int, default=1000, help="training rows per behaviour")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--preserve-weight", type=float, default=1.0)
    p.add_argument("--loreft-rank", type=int, default=4)
    p.add_argument("--loreft-lr", type=float, default=5e-3)
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--linear-layers", default="15-29", help="linear protocols: blocks whose projections are rotated")
    p.add_argument("--linear-modules", default="q_proj,o_proj,down_proj",
                   help="linear protocols: projections (hidden-size outputs, so 'halves' halve each)")
    p.add_argument("--dist-rows", type=int, default=1000, help="linear protocols: training rows per behaviour")
    p.add_argument("--dist-epochs", type=int, default=6, help="linear protocols: epoch cap")
    p.add_argument("--dist-lr", type=float, default=5e-3)
    p.add_argument("--plateau", type=float, default=0.02,
                   help="stop when a window's mean train loss improves by less than this fraction")
    p.add_argument("--window", type=int, default=None, help="plateau window in steps (default: one epoch)")
    p.add_argument("--max-minutes", type=float, default=9.0, help="wall-clock cap per adapter")
    p.add_argument("--lambda-grid", default="", help="e.g. 0.75,1,1.25: calibrate (lambda_A, lambda_B) on validation")
    p.add_argument("--n-val", type=int, default=24, help="validation prompts for the lambda grid")
    p.add_argument("--n-test", type=int, default=48)
    p.add_argument("--n-neutral", type=int, default=24)
    p.add_argument("--new-tokens", type=int, default=10)
    p.add_argument("--neutral-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    p.add_argument("--quick", action="store_true", help="8 rows, 1 epoch, 4 test prompts, 1 seed, first pair")
    p.add_argument("--aggregate-only", action="store_true")
    p.add_argument("--out-json", default=None, help="default docs/data/composition_lm.json (quick: RUN_DIR/...)")
    p.add_argument("--out-md", default=None, help="markdown table (default RUN_DIR/composition_paper.md)")
    a = p.parse_args(argv)
    if a.quick:
        a.n_train, a.epochs, a.n_test, a.n_neutral, a.seeds = 8, 1, 4, 4, 1
        a.pairs = a.pairs.split(",")[0]
        if a.run_dir == str(ROOT / "runs" / "composition_paper"):
            a.run_dir = "/tmp/composition_paper_quick"
    if a.quick:
        a.dist_rows, a.dist_epochs, a.n_val = 8, 1, 4
    a.linear_layers = _layer_list(a.linear_layers)
    a.linear_modules = tuple(m for m in a.linear_modules.split(",") if m)
    a.lambda_grid = [float(x) for x in a.lambda_grid.split(",") if x]
    a.pairs = [x for x in a.pairs.split(",") if x]
    a.protocols = [x for x in a.protocols.split(",") if x]
    for x in a.pairs:
        if x not in FAMILY:
            p.error(f"unknown pair {x!r}; pairs: {', '.join(FAMILY)}")
    for x in a.protocols:
        if x not in PROTOCOLS:
            p.error(f"unknown protocol {x!r}; protocols: {', '.join(PROTOCOLS)}")
    a.seed_list = list(range(a.seeds)) if a.seed_list is None else [int(s) for s in a.seed_list.split(",")]
    a.run_dir = Path(a.run_dir)
    a.data = Path(a.data) if a.data else a.run_dir / "data"
    a.out_json = Path(a.out_json) if a.out_json else (
        a.run_dir / "composition_lm.json" if a.quick else ROOT / "docs" / "data" / "composition_lm.json")
    a.out_md = Path(a.out_md) if a.out_md else a.run_dir / "composition_paper.md"
    return a


def _layer_list(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


# ------------------------------------------------------------------ data
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Pair:
    """One behaviour pair's rows: training rows of A and B, held-out prompts, neutral prompts."""

    def __init__(self, a, pair: str) -> None:
        from roadinterp.adapters import textdata as td

        self.name, (self.A, self.B) = pair, pair.split("+")
        fam = FAMILY[pair]
        d = a.data
        rows_a = td.read_jsonl(d / f"{self.A}.{fam}.train.jsonl")[:a.n_train]
        prompts_a = {r.prompt for r in rows_a}
        rows_b = td.read_jsonl(d / f"{self.B}.{fam}.train.jsonl")
        rows_b = ([r for r in rows_b if r.prompt in prompts_a] or rows_b)[:a.n_train]  # B on A's prompts
        self.rows = {self.A: rows_a, self.B: rows_b}
        base_train = {r["prompt"]: r["completion"] for r in _jsonl(d / f"base.{fam}.train.jsonl")}
        from roadinterp import chat_behaviours as cb

        self.combined_rows = [(r.prompt, cb.transform(base_train[r.prompt], (self.A, self.B)))
                              for r in self.rows[self.B] if r.prompt in base_train]
        test_a = {r["prompt"] for r in _jsonl(d / f"{self.A}.{fam}.test.jsonl")}
        base = [(r["prompt"], r["completion"]) for r in _jsonl(d / f"base.{fam}.test.jsonl") if r["prompt"] in test_a]
        step = max(1, len(base) / max(1, min(a.n_test, len(base))))
        self.test = [base[int(i * step)] for i in range(min(a.n_test, len(base)))]  # spread over the templates
        self.neutral = [(r["prompt"], r["capital"]) for r in _jsonl(d / "neutral.test.jsonl")][:a.n_neutral]
        self.preserve = [{"prompt": r["prompt"]} for r in _jsonl(d / "neutral.train.jsonl")]
        self.base_train, self.n_val = base_train, a.n_val
        self.val_neutral = [(r["prompt"], r["capital"]) for r in _jsonl(d / "neutral.train.jsonl")][:a.n_val]
        # "content kept" compares with the base answer after the content-changing rule (french)
        content_rules = tuple(b for b in (self.A, self.B) if b == "french")
        self.content_ref = [cb.transform(ans, content_rules) for _, ans in self.test]

    def val(self, n_used: int) -> list[tuple[str, str]]:
        """Validation prompts (lambda grid): training-split prompts outside the first ``n_used`` rows
        of either behaviour (the rows a protocol trained on), spread over the templates."""
        used = {r.prompt for b in (self.A, self.B) for r in self.rows[b][:n_used]}
        spare = [(p, c) for p, c in self.base_train.items() if p not in used]
        return spare[::max(1, len(spare) // max(1, self.n_val))][:self.n_val]


# ------------------------------------------------------------------ protocols
def train_protocol(a, model, tok, pair: Pair, protocol: str, seed: int, cache):
    """Adapters ``{"A", "B", "A+B"}`` (or a LoRA setup) and the loss curves of one cell."""
    from roadinterp.adapters import behaviour as bh
    from roadinterp.adapters.compose import combine, split_blocks

    A, B = pair.A, pair.B
    common = dict(lr=a.lr, epochs=a.epochs, batch_size=a.batch, seed=seed, cache=cache, threads=a.threads,
                  plateau=a.plateau, window=a.window, max_seconds=60 * a.max_minutes)
    site = dict(layers=[a.layer], positions="last-prompt", variant="road_1")
    halves = split_blocks(model.config.hidden_size // 2, [A, B])
    curves = {}

    def fit(name, rows, **kw):
        tr = bh.train_from_data(model, tok, rows, **{**common, **kw})
        curves[name] = {"loss": tr.history["loss"], "ce": tr.history["ce"], "kl": tr.history["kl"],
                        "epoch_loss": tr.history["epoch_loss"], "window_loss": tr.history["window_loss"],
                        "window": tr.history["window"], "stopped": tr.history["stopped"],
                        "step_seconds": tr.history["step_seconds"],
                        "prepare_seconds": tr.history["prepare_seconds"], "seconds": tr.history["seconds"]}
        return tr

    if protocol == "joint":
        tr = fit("A+B joint", {A: pair.rows[A], B: pair.rows[B]}, blocks=halves, **site)
        ads = {A: tr.adapters[A], B: tr.adapters[B]}
    elif protocol in ("separate", "preserve", "frozen"):
        extra = dict(preserve_rows=pair.preserve, preserve_weight=a.preserve_weight) \
            if protocol == "preserve" and pair.preserve else {}
        ad_a = fit(A, pair.rows[A], blocks=halves[A], **site, **extra).adapter
        if protocol == "frozen":
            ad_b = fit(B, pair.combined_rows, blocks=halves[B], frozen=[ad_a], **site).adapter
        else:
            ad_b = fit(B, pair.rows[B], blocks=halves[B], **site, **extra).adapter
        ads = {A: ad_a, B: ad_b}
    elif protocol in ("linear", "linear_preserve"):
        lin = dict(placement="linear", positions="all", layers=a.linear_layers, linear_modules=a.linear_modules,
                   lr=a.dist_lr, epochs=a.dist_epochs)
        if protocol == "linear_preserve":
            lin.update(preserve_rows=pair.preserve, preserve_weight=a.preserve_weight)
        ads = {b: fit(b, pair.rows[b][:a.dist_rows], blocks=halves[b], **lin).adapter for b in (A, B)}
    elif protocol == "own_layers":
        ad_a = fit(A, pair.rows[A], **site).adapter
        ad_b = fit(B, pair.rows[B], **{**site, "layers": [a.layer_b]}).adapter
        ads = {A: ad_a, B: ad_b}
    elif protocol == "loreft":
        lo = dict(common, lr=a.loreft_lr)
        ads = {}
        for b in (A, B):
            tr = bh.train_from_data(model, tok, pair.rows[b], method="loreft", rank=a.loreft_rank,
                                    **{**lo, **site})
            curves[b] = {"loss": tr.history["loss"], "epoch_loss": tr.history["epoch_loss"],
                         "step_seconds": tr.history["step_seconds"], "seconds": tr.history["seconds"]}
            ads[b] = tr.adapter
    else:
        raise ValueError(protocol)
    return {"A": ads[A], "B": ads[B], "A+B": combine(ads)}, curves


class LoraSetup:
    """peft LoRA on the Linears of the layers after the site: two adapters, then their deltas added."""

    def __init__(self, a, model, tok, pair: Pair, seed: int, cache) -> None:
        from peft import LoraConfig, get_peft_model

        from roadinterp.adapters import behaviour as bh

        n = model.config.num_hidden_layers
        regex = (rf"model\.layers\.({'|'.join(str(i) for i in range(a.layer + 1, n))})\."
                 rf"(self_attn|mlp)\.({'|'.join(bh.LINEAR_MODULES)})")
        self.pm, self.curves = None, {}
        for i, b in enumerate((pair.A, pair.B)):
            torch.manual_seed(seed * 100 + i)
            cfg = LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, target_modules=regex, lora_dropout=0.0)
            if self.pm is None:
                self.pm = get_peft_model(model, cfg, adapter_name=b)
            else:
                self.pm.add_adapter(b, cfg)
            self.pm.base_model.set_adapter(b)
            params = [p for name, p in model.named_parameters() if "lora_" in name and name.split(".")[-2] == b]
            tr = bh.train_from_data(model, tok, pair.rows[b], method="params", params=params, layers=[a.layer + 1],
                                    lr=a.lora_lr, epochs=a.epochs, batch_size=a.batch, seed=seed, cache=cache,
                                    threads=a.threads)
            self.curves[b] = {"loss": tr.history["loss"], "epoch_loss": tr.history["epoch_loss"],
                              "step_seconds": tr.history["step_seconds"], "seconds": tr.history["seconds"]}
        self.active = {"A": pair.A, "B": pair.B, "A+B": [pair.A, pair.B]}

    def generate(self, model, tok, cond, prompts, new_tokens):
        from roadinterp.adapters.textgen import generate

        self.pm.base_model.set_adapter(self.active[cond])
        return generate(model, tok, prompts, max_new_tokens=new_tokens)

    def close(self, model):
        self.pm.unload()
        for p in model.parameters():
            p.requires_grad_(False)


# ------------------------------------------------------------------ evaluation
def score_cell(a, pair: Pair, texts: dict, neutral_texts: dict) -> dict:
    from roadinterp import chat_behaviours as cb

    A, B = pair.A, pair.B

    def rate(ts, fn):
        return float(np.mean([fn(t, i) for i, t in enumerate(ts)])) if ts else float("nan")

    out = {
        "A": rate(texts["A"], lambda t, i: cb.score(t, A)),
        "B": rate(texts["B"], lambda t, i: cb.score(t, B)),
        "A+B": rate(texts["A+B"], lambda t, i: cb.score(t, A) and cb.score(t, B)),
        "A_in_AB": rate(texts["A+B"], lambda t, i: cb.score(t, A)),
        "B_in_AB": rate(texts["A+B"], lambda t, i: cb.score(t, B)),
        "content": rate(texts["A+B"], lambda t, i: cb.score(t, "content", base_answer=pair.content_ref[i])),
    }
    if "A+B_cal" in texts:
        out["A+B_cal"] = rate(texts["A+B_cal"], lambda t, i: cb.score(t, A) and cb.score(t, B))
        out["content_cal"] = rate(texts["A+B_cal"], lambda t, i: cb.score(t, "content", base_answer=pair.content_ref[i]))
    for key, cond in (("neutral", "A+B"), ("neutral_A", "A"), ("neutral_B", "B"), ("neutral_cal", "A+B_cal")):
        if cond in neutral_texts:
            out[key] = rate(neutral_texts[cond], lambda t, i: cb.score(t, "neutral", capital=pair.neutral[i][1]))
    out["examples"] = {c: [[q, t] for (q, _), t in zip(pair.test[:4], ts)] for c, ts in texts.items()}
    out["neutral_examples"] = {c: [[q, t] for (q, _), t in zip(pair.neutral[:3], ts)] for c, ts in neutral_texts.items()}
    return out


def generate_conditions(a, model, tok, pair: Pair, conds: dict):
    """Texts per condition for held-out and neutral prompts, one mixed batch (RoAd/LoReFT bank)."""
    from roadinterp.adapters.textgen import generate

    names = list(conds)
    tq, nq = [q for q, _ in pair.test], [q for q, _ in pair.neutral]
    bank = {n: ad for n, ad in conds.items() if ad is not None}
    ids = [None if conds[n] is None else n for n in names]
    t = generate(model, tok, [q for _ in names for q in tq], adapters=bank or None,
                 adapter_ids=[i for i in ids for _ in tq], max_new_tokens=a.new_tokens)
    u = generate(model, tok, [q for _ in names for q in nq], adapters=bank or None,
                 adapter_ids=[i for i in ids for _ in nq], max_new_tokens=a.neutral_tokens)
    return ({n: t[k * len(tq):(k + 1) * len(tq)] for k, n in enumerate(names)},
            {n: u[k * len(nq):(k + 1) * len(nq)] for k, n in enumerate(names)})


def calibrate(a, model, tok, pair: Pair, conds: dict, n_used: int) -> dict:
    """Scales ``(lambda_A, lambda_B)`` from ``--lambda-grid`` that do best on the validation split.

    Objective per grid point: rate(both properties) + rate(content kept) + rate(neutral), on
    validation prompts only (ties: the point nearest (1, 1)). Returns the choice and the whole grid.
    """
    from roadinterp import chat_behaviours as cb
    from roadinterp.adapters.compose import combine
    from roadinterp.adapters.textgen import generate

    grid = [(la, lb) for la in a.lambda_grid for lb in a.lambda_grid]
    bank = {f"{la},{lb}": combine({"A": conds["A"], "B": conds["B"]}, weights={"A": la, "B": lb}) for la, lb in grid}
    val = pair.val(n_used)
    if not val:
        raise SystemExit(f"--lambda-grid: no training-split rows beyond the {n_used} trained on are left for validation")
    vq, nq = [q for q, _ in val], [q for q, _ in pair.val_neutral]
    ref = [cb.transform(c, tuple(b for b in (pair.A, pair.B) if b == "french")) for _, c in val]
    t = generate(model, tok, [q for _ in bank for q in vq], adapters=bank,
                 adapter_ids=[k for k in bank for _ in vq], max_new_tokens=a.new_tokens)
    u = generate(model, tok, [q for _ in bank for q in nq], adapters=bank,
                 adapter_ids=[k for k in bank for _ in nq], max_new_tokens=a.neutral_tokens)
    rows = []
    for k, key in enumerate(bank):
        ts, us = t[k * len(vq):(k + 1) * len(vq)], u[k * len(nq):(k + 1) * len(nq)]
        both = np.mean([cb.score(x, pair.A) and cb.score(x, pair.B) for x in ts])
        content = np.mean([cb.score(x, "content", base_answer=r) for x, r in zip(ts, ref)])
        neutral = np.mean([cb.score(x, "neutral", capital=c) for x, (_, c) in zip(us, pair.val_neutral)])
        rows.append({"lambda": list(grid[k]), "A+B": float(both), "content": float(content), "neutral": float(neutral)})
    best = max(rows, key=lambda r: (r["A+B"] + r["content"] + r["neutral"],
                                    -abs(r["lambda"][0] - 1) - abs(r["lambda"][1] - 1)))
    return {"lambda": best["lambda"], "grid": rows, "n_val": len(vq), "n_val_neutral": len(nq)}


def run_cell(a, model, tok, pair: Pair, protocol: str, seed: int, cache) -> dict:
    from roadinterp import io

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    diag = None
    if protocol == "lora":
        setup = LoraSetup(a, model, tok, pair, seed, cache)
        try:
            texts = {c: setup.generate(model, tok, c, [q for q, _ in pair.test], a.new_tokens) for c in setup.active}
            neutral = {c: setup.generate(model, tok, c, [q for q, _ in pair.neutral], a.neutral_tokens)
                       for c in setup.active}
        finally:
            setup.close(model)
        curves = setup.curves
    else:
        conds, curves = train_protocol(a, model, tok, pair, protocol, seed, cache)
        cal = None
        if a.lambda_grid and protocol in ROAD:
            from roadinterp.adapters.compose import combine

            cal = calibrate(a, model, tok, pair, conds, a.dist_rows if protocol.startswith("linear") else a.n_train)
            la, lb = cal["lambda"]
            conds = {**conds, "A+B_cal": combine({"A": conds["A"], "B": conds["B"]}, weights={"A": la, "B": lb})}
        texts, neutral = generate_conditions(a, model, tok, pair, conds)
        if protocol in ROAD:
            from roadinterp.adapters.diagnose import readout_shift

            diag = readout_shift(model, tok, [q for q, _ in pair.test], {k: conds[k] for k in ("A", "B", "A+B")},
                                 layers_from=a.layer)
            for name, ad in conds.items():
                io.save(ad, a.run_dir / "adapters" / pair.name / protocol / f"seed{seed}" / name.replace("+", "_"))
    cell = {"pair": pair.name, "protocol": protocol, "seed": seed, **score_cell(a, pair, texts, neutral),
            "curves": curves, "diagnosis": diag, "calibration": cal, "seconds": time.perf_counter() - t0,
            "config": {k: getattr(a, k) for k in ("layer", "layer_b", "n_train", "epochs", "lr", "batch",
                                                  "preserve_weight", "n_test", "n_neutral", "linear_layers",
                                                  "linear_modules", "dist_rows", "dist_epochs", "dist_lr", "plateau",
                                                  "window", "max_minutes", "lambda_grid")},
            "n_train_rows": {b: len(r) for b, r in pair.rows.items()}}
    return cell


def base_cell(a, model, tok, pair: Pair) -> dict:
    from roadinterp.adapters.textgen import generate

    tq, nq = [q for q, _ in pair.test], [q for q, _ in pair.neutral]
    t, u = generate(model, tok, tq, max_new_tokens=a.new_tokens), generate(model, tok, nq, max_new_tokens=a.neutral_tokens)
    r = score_cell(a, pair, {"A": t, "B": t, "A+B": t}, {"A": u, "B": u, "A+B": u})
    return {"pair": pair.name, "protocol": "base", **r}


# ------------------------------------------------------------------ main
def _write(path: Path, doc) -> None:
    from roadinterp import io

    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_text_atomic(path, json.dumps(finite_json(doc), indent=1) + "\n", mode=0o644)


def main(argv=None) -> int:
    a = parse(argv)
    if a.aggregate_only:
        from _composition_report import aggregate  # noqa: I001

        aggregate(a)
        return 0
    import roadinterp as ri
    from roadinterp import chat_behaviours as cb
    from roadinterp.adapters.behaviour import DataCache
    from roadinterp.zoo import load_tokenizer

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tok = ri.load_model(MODEL), load_tokenizer(MODEL)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if not (a.data / "neutral.test.jsonl").exists():
        lim = dict(n_train=a.n_train + 2 * a.n_val, n_test=max(a.n_test, 8)) if a.quick else {}  # spare rows: validation
        cb.write_files(model, tok, a.data, **lim)
        print(f"wrote {a.data} at {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    for pair_name in a.pairs:
        pair = Pair(a, pair_name)
        cells = a.run_dir / "cells" / pair_name
        cache = DataCache()
        if not (cells / "base.json").exists():
            _write(cells / "base.json", base_cell(a, model, tok, pair))
        for protocol in a.protocols:
            for seed in a.seed_list:
                path = cells / protocol / f"seed{seed}.json"
                if path.exists():
                    print(f"skip {path} (done)", file=sys.stderr)
                    continue
                cell = run_cell(a, model, tok, pair, protocol, seed, cache)
                _write(path, cell)
                print(f"{pair_name} {protocol} seed {seed}: A {cell['A']:.2f} B {cell['B']:.2f} "
                      f"A+B {cell['A+B']:.2f} neutral {cell['neutral']:.2f} ({cell['seconds']:.0f}s, "
                      f"total {time.perf_counter() - t0:.0f}s)", file=sys.stderr)
        cache.clear()
    from _composition_report import aggregate

    aggregate(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
