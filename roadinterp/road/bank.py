"""An adapter bank: many RoAd adapters applied to one mixed batch.

Each adapter is a row of a ``[n_adapters, d]`` coefficient table (c1, c2). A batch
names an adapter per sample with an index tensor; ``-1`` means "no adapter". The
bank appends an identity row and gathers ``c1[idx]``, ``c2[idx]`` once, so a batch
with 16 different adapters costs the same element-wise multiply as one shared
adapter: no Python loop over adapters, no per-adapter matmul.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from roadinterp.errors import ConfigError, ShapeError
from roadinterp.road.rotation import apply, coefficients, masked_coefficients


def bank_tables(
    thetas: torch.Tensor, alphas: torch.Tensor, variant: str, group_size: int,
    element_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficient tables with an identity row appended at the end.

    ``thetas``/``alphas``: ``[n_adapters, n_params]`` -> ``c1``, ``c2``: ``[n_adapters + 1, d]``.
    Index ``-1`` therefore selects the identity row. ``element_mask`` (``[n_adapters, d]``
    bool) makes each adapter the identity outside its subspace.
    """
    c1, c2 = coefficients(thetas, alphas, variant, group_size)
    if element_mask is not None:
        c1, c2 = masked_coefficients(c1, c2, element_mask)
    ones = torch.ones_like(c1[:1])
    return torch.cat([c1, ones]), torch.cat([c2, torch.zeros_like(ones)])


def check_adapter_ids(ids, n_adapters: int | None, device=None) -> torch.Tensor:
    """Validate per-sample adapter ids (``-1`` = no adapter); return a LongTensor ``[batch]``.

    ``n_adapters=None`` checks only the shape and the lower bound (the layers that
    hold the bank check the upper one).
    """
    ids = torch.as_tensor(ids, dtype=torch.long, device=device)
    if ids.dim() != 1:
        raise ShapeError(f"adapter_ids must be 1-D [batch], got shape {tuple(ids.shape)}")
    if ids.numel() and n_adapters is not None and (int(ids.min()) < -1 or int(ids.max()) >= n_adapters):
        raise ConfigError(f"adapter_ids must be in -1..{n_adapters - 1} (-1 = no adapter), got {ids.tolist()}")
    if ids.numel() and n_adapters is None and int(ids.min()) < -1:
        raise ConfigError(f"adapter_ids must be >= -1 (-1 = no adapter), got {ids.tolist()}")
    return ids


def adapter_index(name: str, names: Sequence[str]) -> int:
    """Position of adapter ``name`` in a bank (its id)."""
    names = list(names)
    if name not in names:
        raise ConfigError(f"unknown adapter {name!r}; the bank holds {', '.join(map(str, names)) or 'nothing'}")
    return names.index(name)


def resolve_adapter_ids(adapter_ids, names: Sequence[str] | None = None, device=None) -> torch.Tensor:
    """Per-sample adapters as names, ints or ``None`` (= none) -> validated ids ``[batch]``.

    ``names``: the bank's adapter names in id order (``None``: ints only, upper bound
    left to the layers).
    """
    if not isinstance(adapter_ids, torch.Tensor):
        if names is None and any(isinstance(a, str) for a in adapter_ids):
            bad = next(a for a in adapter_ids if isinstance(a, str))
            raise ConfigError(f"unknown adapter {bad!r}: name adapters only with a bank (pass adapters=...)")
        adapter_ids = [-1 if a is None else adapter_index(a, names) if isinstance(a, str) else int(a)
                       for a in adapter_ids]
    ids = torch.as_tensor(adapter_ids).long().reshape(-1)
    return check_adapter_ids(ids, None if names is None else len(names), device)


def expand_ids(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """Ids for a batch of ``batch`` rows when each sample became ``batch // len(ids)`` consecutive
    rows (``num_return_sequences``, beams): each id repeated that many times."""
    if batch == ids.shape[0]:
        return ids
    if ids.shape[0] == 0 or batch % ids.shape[0]:
        raise ShapeError(f"batch of {batch} but {ids.shape[0]} adapter ids were set")
    return ids.repeat_interleave(batch // ids.shape[0])


def gather_coefficients(
    thetas: torch.Tensor, alphas: torch.Tensor, ids: torch.Tensor, variant: str, group_size: int,
    element_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's coefficients ``c1, c2: [batch, d]`` from its own parameter rows (``-1`` = identity).

    Only the batch's adapters are turned into coefficients (``thetas[ids]`` ->
    ``[batch, d]``): a bank of 1,000 adapters keeps its parameters and never builds
    :func:`bank_tables`' ``[1001, d]``. Same numbers as gathering rows of those tables.
    """
    idx = ids.clamp_min(0)
    c1, c2 = coefficients(thetas[idx], alphas[idx], variant, group_size)  # [batch, d]
    if element_mask is not None:
        c1, c2 = masked_coefficients(c1, c2, element_mask[idx])
    none = (ids < 0).unsqueeze(1)  # [batch, 1]
    return torch.where(none, 1.0, c1), torch.where(none, 0.0, c2)


def gather_rows(c1: torch.Tensor, c2: torch.Tensor, adapter_ids: torch.Tensor):
    """Per-sample coefficients ``[batch, d]`` for ``adapter_ids`` (``-1`` = identity row)."""
    ids = check_adapter_ids(adapter_ids, c1.shape[0] - 1, c1.device)
    return c1[ids], c2[ids]


def apply_bank(
    h: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, adapter_ids: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Apply each sample's adapter to ``h: [batch, ..., d]``."""
    r1, r2 = gather_rows(c1, c2, adapter_ids)  # [batch, d]
    view = (h.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
    return apply(h, r1.reshape(view), r2.reshape(view), group_size)
