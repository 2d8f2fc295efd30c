"""Composition of separately trained RoAd adapters on Linear outputs (PEFT placement).

`experiments/composition.py` composes adapters at hidden-state sites, where single RoAd
adapters stayed weak on our small GPT-2. Here each behaviour gets its own interleaved half
of the 2D blocks (op: even blocks, format: odd blocks) of every `c_attn` and `c_fc` output
of `zoo:behaviour-base-gpt2`, the placement where road_4 learned `behaviour-op` best in
the fine-tuning comparison. The two adapters are trained separately, never together, then
composed exactly with `roadinterp.compose` and scored on every target.

    python experiments/composition_linear.py --out docs/results.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _results_md import write_section  # noqa: E402

import roadinterp as ri  # noqa: E402
from roadinterp.adapters.adapter import RoadAdapter  # noqa: E402
from roadinterp.adapters.linear import apply_road, linear_targets  # noqa: E402
from roadinterp.tasks import behaviour_data, get_task  # noqa: E402

HEADING = "## Composition on Linear outputs (RoAd, PEFT placement)"
MODEL = "zoo:behaviour-base-gpt2"
TARGETS = ["c_attn", "c_fc"]
TARGET_SETS = {"base": (), "op": ("op",), "format": ("format",), "op+format": ("op", "format")}


def owners(targets: dict[str, int]) -> dict[str, list[int]]:
    n = min(targets.values()) // 2  # blocks every target has
    return {"op": list(range(0, n, 2)), "format": list(range(1, n, 2))}


def train_one(model, targets, blocks, behaviour, *, variant, steps, batch, lr, seed, n_train):
    adapter = RoadAdapter(targets, variant=variant, group_size=64, blocks=blocks, placement="linear",
                          seed=seed, meta={"behaviour": behaviour})
    x, y = behaviour_data(n_train, behaviours=(behaviour,), split="train", seed=seed)
    answer = get_task("behaviour-base").answer_token_ids(y)
    with apply_road(model, adapter) as handle:
        params = []
        for layer in handle.layers.values():
            for p in (layer.theta, layer.alpha):
                p.requires_grad_(True)
                params.append(p)
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, len(y), (batch,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(input_ids=x["input_ids"][idx]).logits[:, -1, :],
                                                     answer[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():  # the trained bank row back into the adapter
            for path, layer in handle.layers.items():
                adapter.rotation(path).theta.copy_(layer.theta[0])
                adapter.rotation(path).alpha.copy_(layer.alpha[0])
    return adapter


@torch.no_grad()
def accuracy(model, adapter, behaviours, n, seed) -> float:
    task = get_task("behaviour-base")
    x, y = behaviour_data(n, behaviours=behaviours, split="test", seed=seed)
    if adapter is None:
        return float((task.logits(model(**x)).argmax(-1) == y).float().mean())
    with apply_road(model, adapter):
        return float((task.logits(model(**x)).argmax(-1) == y).float().mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--variant", default="road_4")
    ap.add_argument("--lr", type=float, default=5e-2)
    ap.add_argument("--quick", action="store_true", help="1 seed, 10 steps")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.steps = 1, 10
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = ri.load_model(MODEL)
    for p in model.parameters():
        p.requires_grad_(False)
    targets = linear_targets(model, TARGETS)
    own = owners(targets)
    n_eval = 200 if a.quick else 1000
    scores: dict[tuple[str, str], list[float]] = {}
    for seed in range(a.seeds):
        ads = {b: train_one(model, targets, own[b], b, variant=a.variant, steps=a.steps, batch=128, lr=a.lr,
                            seed=seed, n_train=8000) for b in ("op", "format")}
        conditions = {"base": None, "op only": ads["op"], "format only": ads["format"],
                      "op+format": ri.compose(ads)}
        for cond, ad in conditions.items():
            for tname, beh in TARGET_SETS.items():
                scores.setdefault((cond, tname), []).append(accuracy(model, ad, beh, n_eval, 1000 + seed))
    n_params = ads["op"].n_trainable()

    def cell(v):
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{statistics.mean(v):.3f} ± {sd:.3f}"

    rows = ["| condition | " + " | ".join(TARGET_SETS) + " |", "|---|" + "---|" * len(TARGET_SETS)]
    for cond in ("base", "op only", "format only", "op+format"):
        rows.append(f"| {cond} | " + " | ".join(cell(scores[(cond, t)]) for t in TARGET_SETS) + " |")
    cmd = f"python experiments/composition_linear.py --out {a.out}" + (" --quick" if a.quick else "")
    body = "\n".join([
        f"Command: `{cmd}` ({time.perf_counter() - t0:.0f} s, one thread). `{MODEL}`, RoAd {a.variant} on the "
        f"outputs of every `c_attn` and `c_fc`; `op` owns the even blocks and `format` the odd blocks "
        f"(block index < {min(targets.values()) // 2}, {n_params} trained entries per behaviour). Each adapter is "
        f"trained **separately** ({a.steps} Adam steps, batch 128, lr {a.lr}, 8000 training prompts), then "
        f"`roadinterp.compose` takes their exact union. Accuracy on {n_eval} held-out prompts per target, "
        f"mean ± std over {a.seeds} seeds; `op+format` = the letter of (a0 - b0) mod 10.",
        "",
        *rows,
    ])
    write_section(a.out, HEADING, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
