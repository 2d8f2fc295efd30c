"""Why a composition fails where it does: how far each adapter moves the other's readout.

For held-out prompts, :func:`readout_shift` reads the next-token distribution at the first
generated position (what decides the opening of the answer) under the base model, A alone,
B alone and A+B, and the residual stream at the last prompt position after every layer from
the site on. It reports, averaged over prompts:

- ``kl``: KL(base || condition) of the first-token distribution, per condition;
- ``cos``: cosine between the log-probability changes ``d_X = logp_X - logp_base``:
  ``AB~A``, ``AB~B`` (does the composition keep each effect?) and ``A~B`` (do the two
  adapters push the readout the same way?);
- ``additivity``: ``|d_AB - d_A - d_B| / (|d_A| + |d_B|)`` (0 = the effects simply add);
- ``top1``: how often A+B's most likely first token is A's, B's or the base's ("who wins the opening");
- ``layers``: per layer, the same cosine and additivity on hidden-state changes, and their norms,
  so one sees at which depth the two edits start to interact.

Site adapters and Linear-placement adapters (``placement="linear"``, rotating the outputs of
the projections inside the blocks) are both read; for the latter the residual stream is read
after every block from the first adapted one on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from roadinterp.adapters import tailcache as tc
from roadinterp.adapters import textdata as td
from roadinterp.errors import ConfigError

__all__ = ["readout_shift"]


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=1e-12).mean())


def _additivity(ab, a, b) -> float:
    num = (ab - a - b).norm(dim=-1)
    return float((num / (a.norm(dim=-1) + b.norm(dim=-1)).clamp(min=1e-12)).mean())


@torch.no_grad()
def readout_shift(model, tokenizer, prompts: Sequence[str], conds: Mapping[str, object], *,
                  layers_from: int | None = None, template: str = "chat") -> dict:
    """Measured interaction of adapters ``conds = {"A": .., "B": .., "A+B": ..}`` (see module docs)."""
    from roadinterp.adapters.behaviour import _first_logits, _site_apply

    from roadinterp.adapters.behaviour import _first_layer

    linear = {getattr(c, "placement", "site") == "linear" for c in conds.values()}
    if len(linear) != 1:
        raise ConfigError("readout_shift reads conditions of one placement: all site or all linear adapters")
    linear = linear.pop()
    keys = [k for c in conds.values() for k in c.targets]
    # a site at block L's output leaves block L's input untouched; a Linear inside block L does not
    sites = [(_first_layer(k) - 1, "all") if linear else tc.positions_of_key(k) for k in keys]
    first = min(layer for layer, _ in sites) if layers_from is None else min(layers_from, *(s[0] for s in sites))
    widest = max((p for _, p in sites), key=("last-prompt", "prompt", "all").index)
    rows = td.rows_from([{"prompt": p} for p in prompts], need_completion=False, what="prompts")
    batch = td.encode(tokenizer, rows, template=template, need_completion=False, what="prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data = tc.prepare(model, batch, start=first + 1, positions=widest, pad_id=pad)
    idx = torch.arange(len(data))
    col = int((data.q_cols == data.prompt_width - 1).nonzero()[0])
    logp, hidden = {}, {}
    for name, ad in {"base": None, **conds}.items():
        inner = _site_apply([] if ad is None or linear else [(ad, None)], data, idx)
        seen = {}

        def after(i, h, inner=inner, seen=seen):
            h = inner(i, h)
            seen[i] = h[:, col].float()
            return h

        handle = None
        if linear and ad is not None:
            from roadinterp.adapters.linear import apply_road

            handle = apply_road(model, ad)
        try:
            logp[name] = _first_logits(model, data, idx, after)
        finally:
            if handle is not None:
                handle.remove()
        hidden[name] = seen
    d = {n: logp[n] - logp["base"] for n in conds}
    a, b, ab = d["A"], d["B"], d["A+B"]
    top = {n: logp[n].argmax(-1) for n in logp}
    out = {
        "kl": {n: float((logp["base"].exp() * (logp["base"] - logp[n])).sum(-1).mean()) for n in conds},
        "cos": {"AB~A": _cos(ab, a), "AB~B": _cos(ab, b), "A~B": _cos(a, b)},
        "additivity": _additivity(ab, a, b),
        "top1": {f"AB=={n}": float((top["A+B"] == top[n]).float().mean()) for n in ("A", "B", "base")},
        "layers": [],
    }
    for i in sorted(hidden["base"]):
        if linear and i <= first:  # the input of the first adapted block: unchanged by construction
            continue
        h0 = hidden["base"][i]
        da, db, dab = hidden["A"][i] - h0, hidden["B"][i] - h0, hidden["A+B"][i] - h0
        out["layers"].append({"layer": i, "norm_A": float(da.norm(dim=-1).mean()), "norm_B": float(db.norm(dim=-1).mean()),
                              "norm_AB": float(dab.norm(dim=-1).mean()), "cos_A_B": _cos(da, db),
                              "additivity": _additivity(dab, da, db)})
    return out
