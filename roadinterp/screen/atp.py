"""Attribution patching (AtP; Nanda 2023, Kramar et al. 2024): every cell's patch effect, linearised.

Patching the site vector ``h`` at one (layer, position) from ``h_base`` to ``h_src`` changes a
metric ``m`` by ``m(h_src) - m(h_base)``; to first order that is ``(h_src - h_base) . dm/dh``
at the base run. One forward and one backward of the base rows give ``dm/dh`` at *every* layer
and position at once, and one forward of the sources gives every ``h_src``: the whole grid for
about three forwards, against one (partial) forward per cell for the exact patch.

The metric is the logit difference toward the counterfactual label,
``m = z[y_counterfactual] - z[y_base]``, summed over the rows whose counterfactual label differs
from the base's (on the others it is zero whatever the patch does); the estimate of a cell is
its mean over those rows, in logits, comparable to the exact patch's mean change of the same
difference. The linearisation is the weak point: where the patch is large (the residual stream,
whose whole vector the patch replaces) the effect is far from linear and attention saturates
(AtP*'s observation), so the estimate's *ranking* is what the screen measures against the exact grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from roadinterp.screen._hooks import as3d, capturing
from roadinterp.screen.exact import model_kwargs
from roadinterp.screen.grid import GridPosition


@contextlib.contextmanager
def _grad_graph(model):
    """Build an autograd graph through ``model`` (its parameters' flags restored on exit).

    Only activation gradients are asked for (``torch.autograd.grad`` with the states as inputs),
    so no weight gradient is computed or stored.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def changing(batch) -> torch.Tensor:
    """Rows whose counterfactual label differs from the base label (where the metric can move).  # bool [n]"""
    return batch.labels != batch.base_labels


def atp_cells(model, task, batch, layers: Sequence[int], component: str, positions: Sequence[GridPosition],
              batch_size: int) -> Iterator[tuple[int, str, slice, torch.Tensor]]:
    """``(layer, label, rows, estimate)`` for every cell: the per-row AtP estimate ``[len(rows)]``
    of the change in ``z[y_cf] - z[y_base]`` (zero on rows where the two labels agree)."""
    base_all, src_all = batch.base, batch.sources[0]
    n, kw = len(batch.labels), model_kwargs(model)
    for r0 in range(0, n, batch_size):
        rows = slice(r0, min(n, r0 + batch_size))
        base = {k: v[rows] for k, v in base_all.items()}
        src = {k: v[rows] for k, v in src_all.items()}
        ar = torch.arange(rows.stop - rows.start)
        y, yb = batch.labels[rows], batch.base_labels[rows]
        with torch.no_grad(), capturing(model, component, layers) as got:
            model(**src, **kw)
        src_states = {l: as3d(t) for l, t in got.items()}
        with _grad_graph(model), capturing(model, component, layers) as states:
            z = task.logits(model(**base, **kw)).float()  # [b, n_classes]
            metric = ((z[ar, y] - z[ar, yb]) * changing(batch)[rows]).sum()
            grads = torch.autograd.grad(metric, [states[l] for l in layers])
        for layer, g in zip(layers, grads):
            g, h, s = as3d(g), as3d(states[layer]).detach(), src_states[layer]
            for pos in positions:
                bi, si = pos.base[rows], pos.source[rows]
                delta = s[ar, si] - h[ar, bi]  # [b, d]
                yield layer, pos.label, rows, (delta.float() * g[ar, bi].float()).sum(-1)
        del states, grads, src_states
