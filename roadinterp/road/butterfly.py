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

import torch

from roadinterp.errors import ConfigError
from roadinterp.road.rotation import apply, coefficients, inverse_coefficients


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


def butterfly_coefficients(
    thetas: torch.Tensor, alphas: torch.Tensor, strides: list[int], variant: str = "road_1"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(c1, c2) for each layer. ``thetas``/``alphas``: ``[..., L, n_params]``."""
    return [
        coefficients(thetas[..., i, :], alphas[..., i, :], variant, 2 * s)
        for i, s in enumerate(strides)
    ]


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
