"""Aggregate the cells of experiments/composition_paper.py: JSON summary, markdown table, loss-curve figure.

Reads ``RUN_DIR/cells/PAIR/base.json`` and ``RUN_DIR/cells/PAIR/PROTOCOL/seed*.json``; writes
``--out-json`` (keeping the other keys of an existing docs/data/composition_lm.json: ``"road"`` is
the best RoAd protocol of the first pair, ``"pairs"`` the same block for every pair), the markdown
table ``--out-md``, the loss curves ``RUN_DIR/curves.png`` and the diagnosis
``RUN_DIR/diagnosis.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _results_md import cell_text, mean_std

METRICS = ("A", "B", "A+B", "A_in_AB", "B_in_AB", "content", "neutral", "neutral_A", "neutral_B")
ROAD = ("joint", "separate", "preserve", "frozen", "own_layers", "linear", "linear_preserve")
CAL = "+cal"  # suffix of the rows composed at the validation-calibrated scales (lambda_A, lambda_B)
LABEL = {
    "joint": "RoAd_1, joint training with routing to halves (RoAd paper)",
    "separate": "RoAd_1, separate training on halves, compose",
    "preserve": "RoAd_1, separate + KL-to-base on neutral training prompts, compose",
    "frozen": "RoAd_1, A alone, then B trained with A attached and frozen (combined targets)",
    "own_layers": "RoAd_1, A and B each at its own layer (all blocks), stacked",
    "loreft": "LoReFT at the same site, rows stacked",
    "lora": "LoRA (peft) after the site, trained separately, deltas added",
    "linear": "RoAd_1 on the projections of many blocks (PEFT placement), halves, separate training, compose",
    "linear_preserve": "RoAd_1 on the projections of many blocks, halves, separate + KL-to-base, compose",
}


def _calibrated(cells: list) -> list:
    """The same cells read at their calibrated composition: A+B, content and neutral from the ``_cal`` scores."""
    out = []
    for c in cells:
        if "A+B_cal" not in c:
            return []
        out.append({**c, "A+B": c["A+B_cal"], "content": c["content_cal"], "neutral": c["neutral_cal"],
                    "A_in_AB": None, "B_in_AB": None})
    return out


def load_cells(run_dir: Path) -> dict:
    out = {}
    for pair_dir in sorted((run_dir / "cells").glob("*")):
        base = pair_dir / "base.json"
        entry = {"base": json.loads(base.read_text()) if base.exists() else None, "protocols": {}}
        for proto_dir in sorted(p for p in pair_dir.iterdir() if p.is_dir()):
            cells = [json.loads(f.read_text()) for f in sorted(proto_dir.glob("seed*.json"))]
            entry["protocols"][proto_dir.name] = cells
            if _calibrated(cells):
                entry["protocols"][proto_dir.name + CAL] = _calibrated(cells)
        out[pair_dir.name] = entry
    return out


def block(pair: str, protocol: str, cells: list, base: dict) -> dict:
    stats = {m: mean_std([c.get(m) for c in cells]) for m in METRICS}
    mean = {m: s[0] for m, s in stats.items()}
    ok = None not in (mean["A"], mean["B"], mean["A+B"], mean["neutral"])
    return {"A": mean["A"], "B": mean["B"], "A+B": mean["A+B"], "neutral": mean["neutral"],
            "base_neutral": base["neutral"] if base else None,
            "protocol": LABEL[protocol] if protocol in LABEL else (
                LABEL.get(protocol[:-len(CAL)], protocol) + ", at scales calibrated on validation"),
            "lambda": [c["calibration"]["lambda"] for c in cells] if protocol.endswith(CAL) else None,
            "protocol_key": protocol, "content": mean["content"], "seeds": len(cells),
            "std": {m: s[1] for m, s in stats.items()},
            "target_met": bool(ok and base and mean["A+B"] >= 0.8 * min(mean["A"], mean["B"])
                               and mean["neutral"] >= base["neutral"] - 0.05 and min(mean["A"], mean["B"]) >= 0.8
                               and (mean["content"] or 0) >= 0.8)}


def table(pair: str, entry: dict) -> str:
    A, B = pair.split("+")
    head = ["protocol", "seeds", f"{A} alone", f"{B} alone", "both (A+B)", "content kept", "neutral",
            "train min/adapter"]
    lines = [f"### {pair}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = entry["base"]
    if base:
        lines.append(f"| base model | - | {base['A']:.3f} | {base['B']:.3f} | {base['A+B']:.3f} | "
                     f"{base['content']:.3f} | {base['neutral']:.3f} | - |")
    for proto, cells in entry["protocols"].items():
        if not cells:
            continue
        secs = [c["seconds"] for cell in cells for c in cell["curves"].values() if "seconds" in c]
        cols = [cell_text(*mean_std([c.get(m) for c in cells])) for m in ("A", "B", "A+B", "content", "neutral")]
        lam = ""
        if proto.endswith(CAL):
            lam = " (lambda " + "; ".join(",".join(f"{x:g}" for x in c["calibration"]["lambda"]) for c in cells) + ")"
        lines.append(f"| {proto}{lam} | {len(cells)} | " + " | ".join(cols) + f" | {np.mean(secs) / 60:.1f} |")
    curves = [(proto, c["seed"], name, cv) for proto, cells in entry["protocols"].items() if not proto.endswith(CAL)
              for c in cells for name, cv in c["curves"].items() if cv.get("window_loss")]
    if curves:
        lines += ["", f"Convergence ({pair}): mean train loss per window of steps, and why training stopped", "",
                  "| protocol | seed | adapter | steps | window | stopped | window loss (first ... last 3) | s/step |",
                  "|---|---|---|---|---|---|---|---|"]
        for proto, seed, name, cv in curves:
            wl = cv["window_loss"]
            shown = " ".join(f"{x:.3f}" for x in wl) if len(wl) <= 4 else \
                f"{wl[0]:.3f} ... " + " ".join(f"{x:.3f}" for x in wl[-3:])
            lines.append(f"| {proto} | {seed} | {name} | {len(cv['loss'])} | {cv.get('window')} | {cv.get('stopped')} "
                         f"| {shown} | {cv['step_seconds']:.2f} |")
    return "\n".join(lines)


def plot_curves(loaded: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(pair, proto, cells[0]) for pair, e in loaded.items() for proto, cells in e["protocols"].items()
              if cells and not proto.endswith(CAL)]
    if not panels:
        return
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, (pair, proto, cell) in zip(axes.flat, panels):
        for name, c in cell["curves"].items():
            y = np.asarray(c.get("ce") or c["loss"], dtype=float)
            k = max(1, len(y) // 25)
            smooth = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(smooth)) + k - 1, smooth, label=name)
        ax.set_title(f"{pair} / {proto} (seed {cell['seed']})", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("train CE", fontsize=7)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def aggregate(a) -> dict:
    from composition_paper import _write

    loaded = load_cells(a.run_dir)
    pairs = {}
    for pair, entry in loaded.items():
        blocks = {p: block(pair, p, cells, entry["base"]) for p, cells in entry["protocols"].items() if cells}
        road = [b for p, b in blocks.items() if p.removesuffix(CAL) in ROAD and b["A+B"] is not None]
        best = max(road, key=lambda b: b["A+B"]) if road else None
        pairs[pair] = {**(best or {}), "protocols": blocks}
    doc = json.loads(a.out_json.read_text()) if a.out_json.exists() else {}
    order = [p for p in a.pairs if p in pairs] + [p for p in pairs if p not in a.pairs]
    if order and pairs[order[0]].get("A") is not None:
        first = pairs[order[0]]
        doc["road"] = {k: first[k] for k in ("A", "B", "A+B", "neutral", "base_neutral", "protocol", "content",
                                               "target_met", "std", "seeds")}
        for k in ("loreft", "lora"):
            if k in first["protocols"]:
                doc[k] = {kk: first["protocols"][k][kk] for kk in ("A", "B", "A+B", "neutral", "base_neutral", "protocol")}
    doc["pairs"] = {p: {k: v for k, v in pairs[p].items()} for p in order}
    doc["paper_protocol"] = {"command": "python experiments/composition_paper.py", "run_dir": str(a.run_dir),
                             "layer": a.layer, "epochs": a.epochs, "lr": a.lr, "batch": a.batch, "n_train": a.n_train}
    _write(a.out_json, doc)
    md = "\n\n".join(table(p, loaded[p]) for p in order)
    a.out_md.parent.mkdir(parents=True, exist_ok=True)
    a.out_md.write_text(md + "\n")
    plot_curves(loaded, a.run_dir / "curves.png")
    diag = {p: {proto: [c.get("diagnosis") for c in cells] for proto, cells in e["protocols"].items()
                if not proto.endswith(CAL)}
            for p, e in loaded.items()}
    _write(a.run_dir / "diagnosis.json", diag)
    print(md)
    return doc
