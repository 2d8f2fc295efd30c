"""What every training loop in roadinterp shares, and adapter fitting.

Three loops train something here: DII (:mod:`roadinterp.dii.fit`, K candidates at
once), adapters (:func:`train_adapter`: sourceless interventions such as
``RoadIntervention`` sharing a ``RoadAdapter``'s rotations, or LoReFT, fitted with
cross-entropy on a task's own labels, the model frozen) and the zoo's small models
(:mod:`roadinterp.zoo`). They share :func:`accuracy` (argmax against labels, in chunks,
without gradients) and the scoped thread count of :mod:`roadinterp._scoped`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from roadinterp._scoped import torch_threads
from roadinterp.errors import ConfigError
from roadinterp.finite import check_step


@torch.no_grad()
def accuracy(predict: Callable[[slice], torch.Tensor], labels: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Share of rows whose argmax of ``predict(rows)`` (logits of the rows in a slice) equals the label."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        rows = slice(start, start + batch_size)
        correct += int((predict(rows).argmax(-1).to(labels.device) == labels[rows]).sum())
    return correct / max(len(labels), 1)



def train_adapter(
    model, sites, interventions, inputs, labels, *, task, routes=None, steps: int = 300,
    batch_size: int = 256, lr: float = 0.05, seed: int = 0, threads: int | None = None,
) -> list[float]:
    """Fit sourceless interventions (one per site) to a task's labels; return the losses.

    ``interventions`` are pyvene sourceless interventions (``RoadIntervention`` sharing a
    ``RoadAdapter``'s rotations, LoReFT, ...), ``sites`` the :class:`Site` of each.
    ``routes`` (optional, one block/row list per example) is passed as pyvene
    ``subspaces`` at every site, so each example only moves its own subspace: the
    joint training with per-example routing of the RoAd paper's composition experiment.
    The loss is cross-entropy of ``task.logits`` against ``labels``; the model's own
    weights are frozen. Deterministic for a seed (data order).
    """
    from roadinterp.interventions import attach_sourceless, run_sourceless
    from roadinterp.sites import sequence_length
    from roadinterp.tasks import get_task

    task = get_task(task) if isinstance(task, str) else task
    sites, interventions = list(sites), list(interventions)
    if len(sites) != len(interventions):
        raise ConfigError(f"{len(sites)} sites but {len(interventions)} interventions; give one per site")
    for name in ("steps", "batch_size"):
        v = locals()[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive int, got {v!r}")
    n = len(labels)
    if routes is not None and len(routes) != n:
        raise ConfigError(f"routes has {len(routes)} rows but there are {n} examples")
    seq = sequence_length(inputs)
    n_units = [len(s.position_indices(seq, task.positions)) for s in sites]
    with torch_threads(threads):
        pvm = attach_sourceless(model, sites, interventions, n_units=n_units)
        params = list({id(p): p for iv in interventions for p in iv.parameters() if p.requires_grad}.values())
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        order, pos, losses = torch.randperm(n, generator=gen), 0, []
        for iv in interventions:
            iv.train()
        for _ in range(steps):
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            batch = {k: v[idx] for k, v in inputs.items()}
            subspaces = None
            if routes is not None:
                rows = [list(routes[i]) for i in idx.tolist()]
                subspaces = [rows] * len(sites)
            out = run_sourceless(pvm, sites, batch, subspaces=subspaces, named_positions=task.positions)
            loss = torch.nn.functional.cross_entropy(task.logits(out).float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            losses.append(check_step(loss, params, what="adapter training", step=len(losses)))
            opt.step()
        for iv in interventions:
            iv.eval()
    return losses
