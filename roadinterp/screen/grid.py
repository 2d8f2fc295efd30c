"""The position axis of a screen: which token each grid row patches, per counterfactual row.

Prompts of a task may differ in length (IOI's six templates); roadinterp left-pads them, so
the last real token of every row sits in the last column. The grid therefore counts
positions **from the end**: row ``-k`` patches the ``k``-th token from the end in base and
source alike, the same index :class:`roadinterp.sites.Site` resolves ``positions=-k`` to (so
``align --positions -3`` trains exactly the screen's ``-3``). Offsets run from ``-1`` (labelled
``last``) back to ``-K``, where ``K`` is the shortest real prompt among the bases and sources:
further back, some row would patch padding. A task position fixed for every row (interval's
``z``) labels its offset (``-2 z``); a named position that differs per row (IOI's ``io``,
``s1``, ``s2``) is a grid row of its own, resolved per row, in base and source separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from roadinterp.sites import sequence_length


@dataclass(frozen=True)
class GridPosition:
    """One grid row: its label, and the index it patches in each base and each source row."""

    label: str  # "io", "-3", "-1 last", "-2 z"
    base: torch.Tensor  # long [n]: the patched index in each base row
    source: torch.Tensor  # long [n]: the index read in each source row
    offset: int | None = None  # -k for an offset row; None for a per-row named position
    name: str | None = None  # the task position it is (None: an unnamed offset)

    @property
    def named(self) -> bool:
        return self.name is not None


def real_lengths(inputs) -> torch.Tensor:
    """Real (unpadded) tokens of every row.  # long [n]"""
    seq = sequence_length(inputs)
    mask = inputs.get("attention_mask")
    n = next(iter(inputs.values())).shape[0]
    return mask.sum(1).long() if mask is not None else torch.full((n,), seq, dtype=torch.long)


def grid_positions(task, batch) -> list[GridPosition]:
    """Every grid row of ``batch`` (a one-source counterfactual batch), per-row names first."""
    base, src = batch.base, batch.sources[0]
    seq = sequence_length(base)
    n = next(iter(base.values())).shape[0]
    k_max = int(torch.minimum(real_lengths(base), real_lengths(src)).min())
    per_row = batch.positions or {}  # name -> [n, 2]: base, source
    fixed = {}
    for name, idx in getattr(task, "positions", {}).items():
        if idx is not None and name not in per_row:
            fixed.setdefault((idx + seq) % seq - seq, []).append(name)  # as an offset from the end
    out = [GridPosition(name, p[:, 0].long(), p[:, 1].long(), None, name) for name, p in per_row.items()]
    for k in range(k_max, 0, -1):
        names = fixed.get(-k, [])
        label = " ".join([str(-k), *names])
        idx = torch.full((n,), seq - k, dtype=torch.long)
        out.append(GridPosition(label, idx, idx, -k, names[0] if names else None))
    return out
