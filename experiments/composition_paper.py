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
- ``lora``: peft LoRA on the Linears after the site, trained separately, deltas added.

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
PROTOCOLS = ("joint", "separate", "preserve", "frozen", "own_layers", "loreft", "lora")
ROAD = ("joint", "separate", "preserve", "frozen", "own_layers")
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
        # "content kept" compares with the base answer after the content-changing rule (french)
        content_rules = tuple(b for b in (self.A, self.B) if b == "french")
        self.content_ref = [cb.transform(ans, content_rules) for _, ans in self.test]


# ------------------------------------------------------------------ protocols
def train_protocol(a, model, tok, pair: Pair, protocol: str, seed: int, cache):
    """Adapters ``{"A", "B", "A+B"}`` (or a LoRA setup) and the loss curves of one cell."""
    from roadinterp.adapters import behaviour as bh
    from roadinterp.adapters.compose import combine, split_blocks

    A, B = pair.A, pair.B
    common = dict(lr=a.lr, epochs=a.epochs, batch_size=a.batch, seed=seed, cache=cache, threads=a.threads)
    site = dict(layers=[a.layer], positions="last-prompt", variant="road_1")
    halves = split_blocks(model.config.hidden_size // 2, [A, B])
    curves = {}

    def fit(name, rows, **kw):
        tr = bh.train_from_data(model, tok, rows, **{**common, **kw})
        curves[name] = {"loss": tr.history["loss"], "ce": tr.history["ce"], "kl": tr.history["kl"],
                        "epoch_loss": tr.history["epoch_loss"], "step_seconds": tr.history["step_seconds"],
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
    for key, cond in (("neutral", "A+B"), ("neutral_A", "A"), ("neutral_B", "B")):
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
        texts, neutral = generate_conditions(a, model, tok, pair, conds)
        if protocol in ROAD:
            from roadinterp.adapters.diagnose import readout_shift

            diag = readout_shift(model, tok, [q for q, _ in pair.test], conds, layers_from=a.layer)
            for name, ad in conds.items():
                io.save(ad, a.run_dir / "adapters" / pair.name / protocol / f"seed{seed}" / name.replace("+", "_"))
    cell = {"pair": pair.name, "protocol": protocol, "seed": seed, **score_cell(a, pair, texts, neutral),
            "curves": curves, "diagnosis": diag, "seconds": time.perf_counter() - t0,
            "config": {k: getattr(a, k) for k in ("layer", "layer_b", "n_train", "epochs", "lr", "batch",
                                                  "preserve_weight", "n_test", "n_neutral")},
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
        lim = dict(n_train=a.n_train, n_test=max(a.n_test, 8)) if a.quick else {}
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
