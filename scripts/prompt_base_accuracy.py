"""Base accuracy of every built-in prompt task on the pretrained zoo models, raw and chat form.

One forward per candidate prompt (256 per split), top-1 over the full vocabulary and among the
task's answers; the kept fraction is what alignment runs on. Prints one JSON line per
(model, task, template) and, with ``--md FILE``, writes the table docs/tasks.md quotes.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/prompt_base_accuracy.py --md /tmp/base.md
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from roadinterp import zoo
from roadinterp.errors import ConfigError
from roadinterp.tasks import get_task

MODELS = ("zoo:smollm2-135m", "zoo:gemma3-270m")
TASKS = ("ioi", "mcqa", "arithmetic", "ravel-city")


def measure(spec: str, tasks=TASKS) -> list[dict]:
    model, tok = zoo.load_model(spec, device="cpu"), zoo.load_tokenizer(spec)
    rows = []
    forms = ("raw", "chat") if getattr(tok, "chat_template", None) else ("raw",)
    for name in tasks:
        for form in forms:
            task = get_task(name).bind(tokenizer=tok, template=form)
            start = time.perf_counter()
            refused = None
            try:
                with torch.inference_mode():
                    task._filter(model)
            except ConfigError as err:  # too few kept prompts: the stats of the splits measured so far stay
                refused = str(err)
            row = {"model": spec, "task": name, "template": form, "seq_len": task.seq_len,
                   "seconds": round(time.perf_counter() - start, 1), "refused": refused}
            for split, st in task.stats.items():
                row.update({f"{split}_{k}": v for k, v in st.items()})
            print(json.dumps(row), flush=True)
            rows.append(row)
    del model
    gc.collect()
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| model | task | form | tokens | base accuracy (vocab) train / test | among answers train / test "
           "| kept train / test |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        def pair(key):
            a, b = r.get(f"train_{key}"), r.get(f"test_{key}")
            return " / ".join("-" if v is None else f"{v:.3f}" for v in (a, b))
        kept = " / ".join(f"{r[f'{s}_kept']}/{r[f'{s}_n']}" if f"{s}_kept" in r else "-" for s in ("train", "test"))
        out.append(f"| {r['model'].removeprefix('zoo:')} | {r['task']} | {r['template']} | {r['seq_len']} "
                   f"| {pair('base_accuracy')} | {pair('base_accuracy_answers')} | {kept} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--md", default=None, help="write the markdown table here")
    ap.add_argument("--from-jsonl", default=None, help="only format the rows an earlier run printed")
    args = ap.parse_args()
    rows = []
    if args.from_jsonl:
        with open(args.from_jsonl) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        print(markdown(rows))
        return
    for spec in args.models.split(","):
        rows += measure(spec, args.tasks.split(","))
    if args.md:
        with open(args.md, "w") as f:
            f.write(markdown(rows))


if __name__ == "__main__":
    main()
