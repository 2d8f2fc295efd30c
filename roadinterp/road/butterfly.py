"""Butterfly RoAd: a product of RoAd layers with strides 1, 2, 4, ..., d/2.

One RoAd layer only rotates inside fixed pairs, so a single layer cannot move
information between pairs. Stacking layers whose pair strides double (layer ``l``
pairs ``j`` with ``j + s`` inside groups of ``2s``, i.e. peft's layout with
``group_size = 2s``) gives the FFT/butterfly pattern: with ``L = log2(d)`` layers
every coordinate can reach every other, at ``O(d log d)`` element-wise cost,
versus ``O(d^2)`` or worse for a dense orthogonal rotation.

Order matters for interchange interventions with contiguous variable masks: the
layer nearest the mask must have the widest stride. We apply strides
``1, 2, ..., d/2`` to ``h`` in that order, so the ``d/2`` layer sits last, next to M.
With all angles zero the product is the identity; with alpha = 1 it is orthogonal.
"""

from __future__ import annotations

import functools

import torch

from roadinterp.errors import ConfigError
from roadinterp.road.rotation import apply, element_block, inverse_coefficients, pair_index, rotate_half_grouped


def butterfly_strides(dim: int, n_layers: int | None = None, depth: int = 1) -> list[int]:
    """The widest ``n_layers`` strides, in application order (narrowest first).

    ``n_layers=None`` uses every power of two that ``dim`` allows (``log2`` of the
    largest power of two dividing ``dim``). ``depth`` stacks that many butterflies
    (BOFT's ``m`` factors): ``[1, 2, ..., d/2] * depth``, so the widest stride still
    sits last, next to the mask.
    """
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"butterfly depth must be a positive int, got {depth!r}")
    max_layers = 0
    while dim % (2 ** (max_layers + 1)) == 0:
        max_layers += 1
    if max_layers == 0:
        raise ConfigError(f"butterfly needs an even width, got {dim}")
    if n_layers is None:
        n_layers = max_layers
    if not isinstance(n_layers, int) or not 1 <= n_layers <= max_layers:
        raise ConfigError(
            f"butterfly n_layers must be between 1 and {max_layers} for width {dim}, got {n_layers!r}"
        )
    widest = dim // 2
    strides = [widest // (2 ** k) for k in range(n_layers)]  # d/2, d/4, ...
    return sorted(strides) * depth  # apply narrowest first so d/2 sits next to the mask


@functools.lru_cache(maxsize=64)
def _layer_index(dim: int, variant: str, strides: tuple[int, ...], device: torch.device):
    """Per layer: the parameter index of each element's cos and sin entry, and its partner.  # 3 x [L, d]"""
    i = torch.arange(dim, device=device)
    cos_idx, sin_idx, partner = [], [], []
    for s in strides:
        g = 2 * s
        if variant == "road_1":
            c = element_block(dim, g, device)  # one parameter per pair
            cos_idx.append(c), sin_idx.append(c)
        elif variant == "road_2":
            cos_idx.append(i), sin_idx.append(i)
        elif variant == "road_4":
            c = (i // g) * 2 * g + (i % g)  # per group: g cos entries, then g sin entries
            cos_idx.append(c), sin_idx.append(c + g)
        else:
            raise ConfigError(f"unknown variant {variant!r}")
        partner.append(pair_index(dim, g, device=device))
    return torch.stack(cos_idx), torch.stack(sin_idx), torch.stack(partner)


def layer_coefficients(
    thetas: torch.Tensor, alphas: torch.Tensor, strides: list[int], variant: str = "road_1",
    *, inverse: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Every layer's (c1, c2) at once, and with ``inverse`` the inverse's (i1, i2).  # [..., L, d] each

    Equal to :func:`coefficients` / :func:`inverse_coefficients` layer by layer, but a
    fixed handful of ops (gathers with precomputed indices) however many layers there
    are: a butterfly's coefficients cost ~8 autograd nodes instead of ~8 per layer.
    """
    n = thetas.shape[-1]
    dim = {"road_1": 2 * n, "road_2": n, "road_4": n // 2}[variant]
    ci, si, partner = _layer_index(dim, variant, tuple(strides), thetas.device)
    lead = (*thetas.shape[:-2], len(strides), dim)
    if variant == "road_1":  # cos and sin read the same parameters: gather once
        t = thetas.gather(-1, ci.expand(lead))
        a = alphas.gather(-1, ci.expand(lead))
        c1, c2 = a * t.cos(), a * t.sin()
    else:
        c1 = alphas.gather(-1, ci.expand(lead)) * thetas.gather(-1, ci.expand(lead)).cos()
        c2 = alphas.gather(-1, si.expand(lead)) * thetas.gather(-1, si.expand(lead)).sin()
    if not inverse:
        return c1, c2
    c1p, c2p = c1.gather(-1, partner.expand(lead)), c2.gather(-1, partner.expand(lead))
    det = c1 * c1p + c2 * c2p
    return c1, c2, c1p / det, -c2 / det


def butterfly_coefficients(
    thetas: torch.Tensor, alphas: torch.Tensor, strides: list[int], variant: str = "road_1"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(c1, c2) for each layer. ``thetas``/``alphas``: ``[..., L, n_params]``."""
    c1, c2 = layer_coefficients(thetas, alphas, strides, variant)
    return list(zip(c1.unbind(-2), c2.unbind(-2)))


def apply_layers(
    h: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, strides: list[int], *, reverse: bool = False,
    layer_dim: int = 0,
) -> torch.Tensor:
    """Every layer's ``h * c1 + rotate_half(h) * c2`` in stride order (``reverse``: last first).  # like h

    ``c1``/``c2`` are :func:`layer_coefficients` tables (layer ``l`` at index ``l`` of
    ``layer_dim``); pass the inverse's table with ``reverse=True`` for ``R^-1 h``.
    Computes in ``h``'s dtype: callers cast to fp32 first.
    """
    order = range(len(strides))
    for l in (reversed(order) if reverse else order):
        h = h * c1.select(layer_dim, l) + rotate_half_grouped(h, 2 * strides[l]) * c2.select(layer_dim, l)
    return h


def butterfly_apply(h: torch.Tensor, coefs, strides: list[int]) -> torch.Tensor:
    """``R_L ... R_2 R_1 h``.  # [..., d]"""
    for (c1, c2), s in zip(coefs, strides):
        h = apply(h, c1, c2, 2 * s)
    return h


def butterfly_inverse_apply(h: torch.Tensor, coefs, strides: list[int]) -> torch.Tensor:
    """``R_1^-1 ... R_L^-1 h``.  # [..., d]"""
    for (c1, c2), s in reversed(list(zip(coefs, strides))):
        i1, i2 = inverse_coefficients(c1, c2, 2 * s)
        h = apply(h, i1, i2, 2 * s)
    return h
