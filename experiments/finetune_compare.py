"""Fine-tuning comparison: RoAd (road_1/2/4), PEDRO, LoRA and (IA)^3 on a new behaviour.

The base model is ``zoo:behaviour-base-gpt2`` (a 2-layer GPT-2, d=64, trained on
``behaviour-base``: the ones digit of a + b). Each method fine-tunes it, with the
base weights frozen, on ``behaviour-op`` (the ones digit of a - b), a behaviour it
was never trained on. All methods act on the same modules (attention ``c_attn`` and
FFN-up ``c_fc``; PEDRO on query, value and FFN-up, as in the paper; (IA)^3 on peft's
GPT-2 default, ``c_attn`` and ``mlp.c_proj``) with a few hundred to a few thousand
trainable parameters.

Reported per method: accuracy on held-out pairs (test split) and on pairs of the
base model's training split (mean ± std over seeds), trainable parameters, training
seconds per run, and mixed-batch throughput: one forward over a batch whose samples
pick one of 4 adapters or none (RoAd and PEDRO through ``roadinterp.adapters.serve``; LoRA
through peft's ``adapter_names``; (IA)^3 has no mixed-batch path in peft, so the batch
is split by adapter and run group by group).

    python experiments/finetune_compare.py --out docs/results.md          # full, ~5 min
    python experiments/finetune_compare.py --quick --out /tmp/results.md  # smoke test, ~30 s

The table replaces this experiment's section of ``--out`` (between marker comments)
and leaves every other section alone.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from roadinterp.adapters import serve  # noqa: E402
from roadinterp.adapters.adapter import RoadAdapter  # noqa: E402
from roadinterp.adapters.linear import apply_road, linear_targets  # noqa: E402
from roadinterp.adapters.pedro import PedroAdapter  # noqa: E402
from roadinterp.adapters.pedro_linear import apply_pedro  # noqa: E402
from roadinterp.interventions.pedro import PedroConfig  # noqa: E402
from roadinterp.tasks import behaviour_data, get_task  # noqa: E402

BEGIN, END = "<!-- finetune_compare:begin -->", "<!-- finetune_compare:end -->"
MODEL = "zoo:behaviour-base-gpt2"
TARGETS = ["c_attn", "c_fc"]
METHODS = ("road_1", "road_2", "road_4", "pedro", "lora", "ia3")
LR = {"road_1": 2e-2, "road_2": 2e-2, "road_4": 2e-2, "pedro": 1e-2, "lora": 1e-2, "ia3": 2e-2}
N_BANK = 4  # adapters in the mixed-batch throughput bank


# ------------------------------------------------------------------ model & data
def base_model(quick: bool):
    from roadinterp import zoo

    name = MODEL.split(":", 1)[1]
    if quick and not zoo.is_cached(name):
        # smoke test on a cold cache: an untrained model of the same shape (accuracies meaningless)
        torch.manual_seed(0)
        return zoo.build_model(zoo.get_zoo_entry(name)).eval(), "untrained (cold cache, --quick)"
    model = zoo.load_model(MODEL)
    meta = zoo.zoo_meta(name)
    return model.eval(), f"{MODEL} (base-task test accuracy {meta.get('accuracy', float('nan')):.3f})"


def freeze(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# -------------------------------------------------------------------- methods
def prepare(method: str, model, seed: int):
    """Put ``method`` on ``model`` (a private copy); return (model, trainable params, n_trainable)."""
    if method.startswith("road_"):
        adapter = RoadAdapter(linear_targets(model, TARGETS), variant=method, group_size=64, placement="linear", seed=seed)
        handle = apply_road(model, adapter)
        params = []
        for layer in handle.layers.values():
            for p in (layer.theta, layer.alpha):
                p.requires_grad_(True)
                params.append(p)
        return model, params, adapter.n_trainable()
    if method == "pedro":
        handle = apply_pedro(model, PedroConfig(model.config.n_embd, bottleneck=2), seed=seed)
        return model, handle.parameters(), handle.adapters[0].n_trainable()
    import peft

    torch.manual_seed(seed)
    if method == "lora":
        cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS, fan_in_fan_out=True, lora_dropout=0.0)
    elif method == "ia3":
        cfg = peft.IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                             fan_in_fan_out=True)
    else:
        raise ValueError(method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(model, cfg)
    params = [p for p in pm.parameters() if p.requires_grad]
    return pm, params, sum(p.numel() for p in params)


def train(model, params, inputs, labels, *, steps: int, batch: int, lr: float, seed: int, task) -> float:
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    answer = task.answer_token_ids(labels)
    n = len(labels)
    t0 = time.process_time()
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        logits = model(input_ids=inputs["input_ids"][idx]).logits[:, -1, :]
        loss = torch.nn.functional.cross_entropy(logits, answer[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.process_time() - t0  # CPU seconds (one thread)


@torch.no_grad()
def accuracy(model, inputs, labels, task) -> float:
    pred = task.logits(model(input_ids=inputs["input_ids"])).argmax(-1)
    return float((pred == labels).float().mean())


# ------------------------------------------------------------------ throughput
def _time(fn, reps: int) -> float:
    """Median CPU seconds per call (one thread: robust to other processes sharing the machine)."""
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


@torch.no_grad()
def throughput(method: str, base, x: torch.Tensor, ids: torch.Tensor, reps: int) -> tuple[float, str]:
    """Samples/s of one mixed forward (bank of N_BANK adapters, ids -1..N_BANK-1)."""
    model = copy.deepcopy(base)
    if method == "base":
        return x.shape[0] / _time(lambda: model(input_ids=x), reps), "no adapter"
    if method.startswith("road_"):
        bank = {f"a{i}": RoadAdapter(linear_targets(model, TARGETS), variant=method, group_size=64,
                                     placement="linear", init="random", seed=i) for i in range(N_BANK)}
        with apply_road(model, bank):
            return x.shape[0] / _time(lambda: serve.forward(model, x, ids), reps), "serve.forward"
    if method == "pedro":
        cfg = PedroConfig(model.config.n_embd, bottleneck=2)
        bank = [PedroAdapter.for_model(model, cfg, seed=i) for i in range(N_BANK)]
        with apply_pedro(model, bank):
            return x.shape[0] / _time(lambda: serve.forward(model, x, ids), reps), "serve.forward"
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "lora":
            mk = lambda: peft.LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS, fan_in_fan_out=True,  # noqa: E731
                                         init_lora_weights=False)
        else:
            mk = lambda: peft.IA3Config(target_modules=["c_attn", "mlp.c_proj"],  # noqa: E731
                                        feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True)
        pm = peft.get_peft_model(model, mk(), adapter_name="a0")
        for i in range(1, N_BANK):
            pm.add_adapter(f"a{i}", mk())
    pm.eval()
    if method == "lora":
        names = ["__base__" if i < 0 else f"a{i}" for i in ids.tolist()]
        return x.shape[0] / _time(lambda: pm(input_ids=x, adapter_names=names), reps), "peft adapter_names"

    groups = {i: (ids == i).nonzero().squeeze(1) for i in ids.unique().tolist()}

    def grouped():
        for i, rows in groups.items():
            if i < 0:
                with pm.disable_adapter():
                    pm(input_ids=x[rows])
            else:
                pm.set_adapter(f"a{i}")
                pm(input_ids=x[rows])

    return x.shape[0] / _time(grouped, reps), "grouped by adapter (peft has no mixed batch)"


# ------------------------------------------------------------------------ main
def run(quick: bool, seeds: int | None = None) -> tuple[list[dict], dict]:
    torch.set_num_threads(1)  # CPU-time measurements below assume one thread
    task = get_task("behaviour-op")
    base, base_note = base_model(quick)
    freeze(base)
    n_seeds = seeds or (1 if quick else 3)
    steps, batch = (10, 32) if quick else (400, 128)
    n_eval = 128 if quick else 2000
    tr_x, tr_y = behaviour_data(500 if quick else 8000, behaviours=("op",), split="train", seed=0)
    te_x, te_y = behaviour_data(n_eval, behaviours=("op",), split="test", seed=1)
    seen_x, seen_y = behaviour_data(n_eval, behaviours=("op",), split="train", seed=2)
    base_acc = (accuracy(base, te_x, te_y, task), accuracy(base, seen_x, seen_y, task))
    rows = []
    mix_n = 64 if quick else 256
    mix_x = behaviour_data(mix_n, split="test", seed=3)[0]["input_ids"]
    mix_ids = torch.randint(-1, N_BANK, (mix_n,), generator=torch.Generator().manual_seed(0))
    reps = 2 if quick else 20
    base_tp, _ = throughput("base", base, mix_x, mix_ids, reps)
    for method in METHODS:
        accs, seen, secs, n_params = [], [], [], 0
        for seed in range(n_seeds):
            model, params, n_params = prepare(method, copy.deepcopy(base), seed)
            secs.append(train(model, params, tr_x, tr_y, steps=steps, batch=batch, lr=LR[method], seed=seed, task=task))
            model.eval()
            accs.append(accuracy(model, te_x, te_y, task))
            seen.append(accuracy(model, seen_x, seen_y, task))
        tp, how = throughput(method, base, mix_x, mix_ids, reps)
        rows.append(dict(method=method, acc=accs, seen=seen, params=n_params, secs=secs, tp=tp, how=how))
        print(f"{method:7s} acc {statistics.mean(accs):.3f} seen {statistics.mean(seen):.3f} "
              f"params {n_params} train {statistics.mean(secs):.1f}s  {tp:,.0f} samples/s ({how})", flush=True)
    info = dict(base_note=base_note, base_acc=base_acc, seeds=n_seeds, steps=steps, batch=batch, n_eval=n_eval,
                mix_n=mix_n, base_tp=base_tp, quick=quick, threads=torch.get_num_threads(),
                n_train=len(tr_y))
    return rows, info


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def render(rows: list[dict], info: dict, command: str) -> str:
    lines = [
        BEGIN,
        "## PEDRO vs RoAd vs LoRA vs (IA)^3: fine-tuning a new behaviour",
        "",
        f"Written by `{command}`" + (" (**--quick smoke run: numbers are not meaningful**)" if info["quick"] else "") + ".",
        "",
        f"Base model: {info['base_note']}. Task: `behaviour-op` (ones digit of a - b), which the base "
        f"model was never trained on; its accuracy before fine-tuning is {info['base_acc'][0]:.3f} "
        f"(held-out pairs) / {info['base_acc'][1]:.3f} (training-split pairs). Every method trains only its "
        f"own parameters (base frozen) for {info['steps']} Adam steps of batch {info['batch']} on "
        f"{info['n_train']} training-split prompts; accuracy over {info['seeds']} seed(s) "
        f"(mean ± std), evaluated on {info['n_eval']} prompts of each split. Targets: `c_attn` + `c_fc` "
        "(RoAd, LoRA r=2), q/v thirds of `c_attn` + `c_fc` (PEDRO, bottleneck 2, last-token pooling), "
        "`c_attn` + `mlp.c_proj` input ((IA)^3, peft's GPT-2 default). "
        f"Throughput: one forward over {info['mix_n']} prompts, each routed to one of {N_BANK} adapters or "
        f"none. Times are CPU seconds on {info['threads']} thread (the machine was shared with other jobs, "
        f"so wall-clock would be noise); the base model alone runs {info['base_tp']:,.0f} samples per CPU-second.",
        "",
        "| method | accuracy, held-out pairs | accuracy, training-split pairs | trainable params "
        "| train CPU s / run | mixed-batch samples / CPU s | mixed batch via |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_ms(r['acc'])} | {_ms(r['seen'])} | {r['params']:,} | "
            f"{statistics.mean(r['secs']):.1f} | {r['tp']:,.0f} | {r['how']} |"
        )
    lines += [
        "",
        "PEDRO's generator runs once per prompt (at prefill) and its vectors are reused at every "
        "decoding step, so its serving cost over RoAd is one small MLP per block per prompt; in a mixed "
        "batch the generator weights of all adapters are stacked into banks and evaluated with one "
        "batched matmul per block.",
        END,
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Results\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results.md", help="markdown file whose section this writes")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (1 seed, 10 steps)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3, --quick 1)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows, info = run(args.quick, args.seeds)
    command = "python experiments/finetune_compare.py" + (" --quick" if args.quick else "") + f" --out {args.out}"
    write_section(Path(args.out), render(rows, info, command))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
