"""Interchanges that are not rotations: a learned neuron mask and a fixed projection.

* :class:`NeuronMaskInterchange` is the ``neuron`` family: desiderata-based masking
  (DBM; Davies et al., the neuron baseline of the MIB benchmark). Each variable owns
  a mask over the site's neurons, ``DII(b, s) = b + m * (s - b)``, with
  ``m = sigmoid(logits / T)`` while training. The temperature ``T`` anneals from
  1 to 0.01, so the soft mask ends close to 0/1, and a sparsity penalty
  ``lambda * sum(m)`` closes every neuron the counterfactual labels do not need. At
  evaluation the mask is hard: the neurons with ``logit > 0``, at most ``size`` of
  them (the largest logits), so a cell's ``size`` is the same budget of coordinates
  per variable as in the rotated families. It can find a variable on *any* neurons;
  it cannot find one spread over many neurons by a rotation (that is what the rotated
  families are for).
* :class:`ProjectionInterchange` swaps a fixed subspace, ``b + Q Q^T (s - b)`` for an
  orthonormal ``Q`` (``[d, k]``). With ``Q = I`` it patches the whole site vector.
  :mod:`roadinterp.controls` uses it for the site-patch and row-space controls.
"""

from __future__ import annotations

import torch
from torch import nn

from roadinterp._pyvene import pv
from roadinterp.errors import ConfigError, ShapeError

DBM_T_START, DBM_T_END = 1.0, 0.01  # mask temperature, annealed geometrically over training
DBM_SPARSITY = 1e-3  # lambda: penalty per open neuron (soft mask summed), added to the cross-entropy


class NeuronMaskInterchange(pv.TrainableIntervention, pv.DistributedRepresentationIntervention):
    """A learned sparse neuron mask for one variable (DBM). ``size``: most neurons kept at eval."""

    def __init__(self, embed_dim: int, *, size: int, seed: int | None = None, sparsity: float = DBM_SPARSITY,
                 **kwargs) -> None:
        kwargs.setdefault("keep_last_dim", True)
        super().__init__(embed_dim=embed_dim, **kwargs)
        if not 1 <= size <= embed_dim:
            raise ConfigError(f"neuron mask size must be in 1..{embed_dim}, got {size}")
        self.dim, self.size, self.sparsity = embed_dim, size, float(sparsity)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        # near 0: every neuron starts half open, so the first steps see every neuron's effect
        self.logits = nn.Parameter(0.01 * torch.randn(embed_dim, generator=gen))  # [d]
        self.temperature = DBM_T_START

    def anneal(self, frac: float) -> None:
        """Set the temperature for training progress ``frac`` in [0, 1] (called by the DII loop)."""
        self.temperature = DBM_T_START * (DBM_T_END / DBM_T_START) ** min(max(frac, 0.0), 1.0)

    def penalty(self) -> torch.Tensor:
        """Sparsity term added to the loss: ``lambda * sum(sigmoid(logits / T))``."""
        return self.sparsity * torch.sigmoid(self.logits / self.temperature).sum()

    def hard_mask(self) -> torch.Tensor:
        """The evaluation mask: neurons with a positive logit, at most ``size`` of them.  # [d] 0/1"""
        keep = torch.zeros(self.dim, dtype=torch.bool, device=self.logits.device)
        top = torch.topk(self.logits.detach(), self.size).indices
        keep[top] = self.logits.detach()[top] > 0
        return keep.float()

    def neurons(self) -> list[int]:
        """Indices the hard mask keeps."""
        return self.hard_mask().nonzero().flatten().tolist()

    def forward(self, base, source, subspaces=None, **kwargs):
        if base.shape[-1] != self.dim:
            raise ShapeError(f"neuron mask is {self.dim} wide but the site is {base.shape[-1]} wide")
        m = torch.sigmoid(self.logits / self.temperature) if self.training else self.hard_mask()
        return (base.float() + m * (source - base).float()).to(base.dtype)


class ProjectionInterchange(pv.Intervention, pv.DistributedRepresentationIntervention):
    """Swap the span of a fixed orthonormal ``Q`` (``[d, k]``): ``b + Q Q^T (s - b)``; ``subspaces`` are ignored."""

    def __init__(self, basis: torch.Tensor, **kwargs) -> None:
        kwargs.setdefault("keep_last_dim", True)
        basis = torch.as_tensor(basis, dtype=torch.float32)
        if basis.dim() != 2 or basis.shape[1] > basis.shape[0]:
            raise ConfigError(f"basis must be [d, k] with k <= d, got {list(basis.shape)}")
        super().__init__(embed_dim=basis.shape[0], **kwargs)
        self.register_buffer("basis", basis)  # [d, k]

    @classmethod
    def whole(cls, dim: int) -> ProjectionInterchange:
        """Patch every coordinate (the site-patch control)."""
        return cls(torch.eye(dim))

    def forward(self, base, source, subspaces=None, **kwargs):
        Q = self.basis
        if base.shape[-1] != Q.shape[0]:
            raise ShapeError(f"projection is {Q.shape[0]} wide but the site is {base.shape[-1]} wide")
        delta = ((source - base).float() @ Q) @ Q.T
        return (base.float() + delta).to(base.dtype)
