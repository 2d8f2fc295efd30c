"""An adapter bank: many RoAd adapters applied to one mixed batch.

Each adapter is a row of a ``[n_adapters, d]`` coefficient table (c1, c2). A batch
names an adapter per sample with an index tensor; ``-1`` means "no adapter". The
bank appends an identity row and gathers ``c1[idx]``, ``c2[idx]`` once, so a batch
with 16 different adapters costs the same element-wise multiply as one shared
adapter: no Python loop over adapters, no per-adapter matmul.
"""

from __future__ import annotations

import torch

from roadinterp.errors import ConfigError, ShapeError
from roadinterp.road.rotation import apply, coefficients


def bank_tables(
    thetas: torch.Tensor, alphas: torch.Tensor, variant: str, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficient tables with an identity row appended at the end.

    ``thetas``/``alphas``: ``[n_adapters, n_params]`` -> ``c1``, ``c2``: ``[n_adapters + 1, d]``.
    Index ``-1`` therefore selects the identity row.
    """
    c1, c2 = coefficients(thetas, alphas, variant, group_size)
    ones = torch.ones_like(c1[:1])
    return torch.cat([c1, ones]), torch.cat([c2, torch.zeros_like(ones)])


def gather_rows(c1: torch.Tensor, c2: torch.Tensor, adapter_ids: torch.Tensor):
    """Per-sample coefficients ``[batch, d]`` for ``adapter_ids`` (``-1`` = identity row)."""
    n = c1.shape[0] - 1
    ids = torch.as_tensor(adapter_ids, device=c1.device).long()
    if ids.dim() != 1:
        raise ShapeError(f"adapter_ids must be a 1-D list of ints, got shape {tuple(ids.shape)}")
    if ids.numel() and (ids.min() < -1 or ids.max() >= n):
        raise ConfigError(f"adapter_ids must be in -1..{n - 1} (-1 = no adapter), got {ids.tolist()}")
    return c1[ids], c2[ids]


def apply_bank(
    h: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, adapter_ids: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Apply each sample's adapter to ``h: [batch, ..., d]``."""
    r1, r2 = gather_rows(c1, c2, adapter_ids)  # [batch, d]
    view = (h.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
    return apply(h, r1.reshape(view), r2.reshape(view), group_size)
