"""Butterfly RoAd: a product of RoAd layers with strides 1, 2, 4, ..., d/2.

One RoAd layer only rotates inside fixed pairs, so a single layer cannot move
information between pairs. Stacking layers whose pair strides double (layer ``l``
pairs ``j`` with ``j + s`` inside groups of ``2s``, i.e. peft's layout with
``group_size = 2s``) gives the FFT/butterfly pattern: with ``L = log2(d)`` layers
every coordinate can reach every other, at ``O(d log d)`` element-wise cost,
versus ``O(d^2)`` or worse for a dense orthogonal rotation.

Widths that are not powers of two. With ``d = 2^k m`` (m odd; 576 = 2^6 x 9) the strides
run ``m, 2m, ..., d/2`` and only ever pair coordinates that agree modulo ``m``: one
factor splits the width into ``m`` orbits of ``2^k`` coordinates that never mix. So
between consecutive factors (``depth >= 2``) we insert a fixed *skew permutation*: write
``j = a q + r`` (q the factor's narrowest stride, ``0 <= r < q``) and send it to
``a q + (r + a) mod q``. The ``d/q`` members of an orbit land in ``d/q`` different
residues, so when ``d/q >= q`` (true for 576, 768, 960 and every power of two) two
factors reach every coordinate from every coordinate. At power-of-two widths
``q = 1`` and the permutation is the identity.

Order matters for interchange interventions with contiguous variable masks: the
layer nearest the mask must have the widest stride. We apply strides
``1, 2, ..., d/2`` to ``h`` in that order, so the ``d/2`` layer sits last, next to M.
With all angles zero the product is the identity; with alpha = 1 it is orthogonal.
"""

from __future__ import annotations

import functools

import torch

from roadinterp.errors import ConfigError
from roadinterp.road.rotation import element_block, pair_index, rotate_half_grouped


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

    Equal to ``rotation.coefficients`` / ``rotation.inverse_coefficients`` layer by layer, but a
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


def apply_layers(
    h: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, strides: list[int], *, reverse: bool = False,
    layer_dim: int = 0,
) -> torch.Tensor:
    """Every layer's ``h * c1 + rotate_half(h) * c2`` in stride order (``reverse``: last first).  # like h

    ``c1``/``c2`` are :func:`layer_coefficients` tables (layer ``l`` at index ``l`` of
    ``layer_dim``); pass the inverse's table with ``reverse=True`` for ``R^-1 h``.
    Computes in ``h``'s dtype: callers cast to fp32 first.
    """
    starts = factor_starts(strides)
    perm = skew_permutation(h.shape[-1], min(strides), h.device) if starts else None
    if reverse:
        for l in reversed(range(len(strides))):
            h = h * c1.select(layer_dim, l) + rotate_half_grouped(h, 2 * strides[l]) * c2.select(layer_dim, l)
            if perm is not None and l in starts:
                h = h[..., perm[1]]  # undo the permutation that came before this factor
        return h
    for l in range(len(strides)):
        if perm is not None and l in starts:
            h = h[..., perm[0]]  # mix the previous factor's orbits
        h = h * c1.select(layer_dim, l) + rotate_half_grouped(h, 2 * strides[l]) * c2.select(layer_dim, l)
    return h


def factor_starts(strides: list[int]) -> set[int]:
    """Layers that begin a new butterfly factor (after the first): where the stride stops growing."""
    return {l for l in range(1, len(strides)) if strides[l] <= strides[l - 1]}


@functools.lru_cache(maxsize=64)
def skew_permutation(dim: int, q: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Gather indices ``(forward, inverse)`` of the skew permutation ``a q + r -> a q + (r + a) mod q``;
    ``None`` when it is the identity (``q == 1``: power-of-two widths).  # 2 x [d]

    ``h[..., forward]`` moves coordinate ``j`` to its image; ``h[..., inverse]`` moves it back.
    """
    if q <= 1 or dim % q:
        return None
    j = torch.arange(dim, device=device)
    a, r = j // q, j % q
    image = a * q + (r + a) % q  # where coordinate j goes
    forward = torch.empty_like(image)
    forward[image] = j  # out[image[j]] = h[j]
    return forward, image
