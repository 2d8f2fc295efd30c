"""RoAd: 2D rotary adaptation as pure tensor functions.

A vector ``h`` of width ``d`` is split into groups of ``group_size`` elements; inside
a group, element ``j`` pairs with ``p = j + group_size/2`` (peft's layout; with
``group_size=2`` pairs are adjacent). Each pair is multiplied by a 2x2 block

    [y_j]   [a1 cos t1   -a2 sin t2] [h_j]
    [y_p] = [a3 sin t3    a4 cos t4] [h_p]

which is computed element-wise as ``y = h * c1 + rotate_half(h) * c2`` with
``rotate_half(h)_j = -h_p`` and ``rotate_half(h)_p = h_j``. The per-element
coefficient vectors ``c1``, ``c2`` come from (theta, alpha):

* ``road_1``: one (alpha, theta) per pair, ``d/2`` each (a scaled rotation);
* ``road_2``: one (alpha, theta) per output element, ``d`` each;
* ``road_4``: separate (alpha, theta) for the cos and sin entries, ``2d`` each.

Parameter layouts match ``peft.RoadConfig`` exactly, so adapters move between
the two without permutation. The inverse, the dense matrix and Linear merging all
stay in the same (c1, c2) form, which is why everything here is element-wise.
Nothing in this package imports pyvene.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from roadinterp.errors import ConfigError, ShapeError

Variant = Literal["road_1", "road_2", "road_4"]
VARIANTS: tuple[str, ...] = ("road_1", "road_2", "road_4")


# --------------------------------------------------------------------------- layout
def check_layout(dim: int, group_size: int, variant: str = "road_1") -> None:
    """Validate (dim, group_size, variant); raise ConfigError naming the bad value."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if not isinstance(dim, int) or dim < 2:
        raise ConfigError(f"dim must be an integer >= 2, got {dim!r}")
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2 or dim % group_size:
        raise ConfigError(
            f"group_size must be even and divide {dim}, got {group_size!r} "
            f"(try {largest_group_size(dim)} or 2)"
        )


def largest_group_size(dim: int, limit: int = 64) -> int:
    """The largest even group size <= limit that divides dim (peft's default is 64)."""
    for g in range(min(limit, dim), 1, -1):
        if g % 2 == 0 and dim % g == 0:
            return g
    raise ConfigError(f"width {dim} is odd: RoAd needs an even width")


def n_params(dim: int, variant: str) -> int:
    """Length of the theta (and alpha) vector for a variant: d/2, d or 2d."""
    return {"road_1": dim // 2, "road_2": dim, "road_4": 2 * dim}[variant]


def pair_index(dim: int, group_size: int, device=None) -> torch.Tensor:
    """``partner[i]``: the element that ``i`` is paired with.  # [d]"""
    i = torch.arange(dim, device=device)
    half = group_size // 2
    in_first = (i % group_size) < half
    return torch.where(in_first, i + half, i - half)


def block_elements(dim: int, group_size: int, device=None) -> torch.Tensor:
    """Element indices (j, p) of every 2D block, in block order.  # [d/2, 2]

    Block ``b`` is the pair whose road_1 parameter index is ``b``: group
    ``b // (g/2)``, offset ``b % (g/2)``.
    """
    half = group_size // 2
    b = torch.arange(dim // 2, device=device)
    j = (b // half) * group_size + (b % half)
    return torch.stack([j, j + half], dim=-1)


def element_block(dim: int, group_size: int, device=None) -> torch.Tensor:
    """Which block each element belongs to.  # [d]"""
    i = torch.arange(dim, device=device)
    half = group_size // 2
    return (i // group_size) * half + (i % half)


def rotate_half_grouped(h: torch.Tensor, group_size: int) -> torch.Tensor:
    """``r_j = -h_p``, ``r_p = h_j`` inside each group of the last dim.  # [..., d]"""
    shape = h.shape
    x = h.reshape(*shape[:-1], -1, 2, group_size // 2)  # [..., groups, 2, g/2]
    x1, x2 = x[..., 0, :], x[..., 1, :]
    return torch.stack((-x2, x1), dim=-2).reshape(shape)


# ------------------------------------------------------------------- coefficients
def coefficients(
    theta: torch.Tensor, alpha: torch.Tensor, variant: str, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element (c1, c2) from peft-layout parameters.

    ``theta``/``alpha``: ``[..., n_params(d, variant)]`` (leading dims allowed, e.g.
    an adapter bank). Returns ``c1``, ``c2`` of shape ``[..., d]`` in the parameters'
    dtype (keep them fp32).
    """
    lead = theta.shape[:-1]
    half = group_size // 2
    if variant == "road_1":
        # each group has g/2 parameters, shared by the pair's two elements
        t = theta.reshape(*lead, -1, 1, half).expand(*lead, -1, 2, half).reshape(*lead, -1)
        a = alpha.reshape(*lead, -1, 1, half).expand(*lead, -1, 2, half).reshape(*lead, -1)
        return a * t.cos(), a * t.sin()
    if variant == "road_2":
        return alpha * theta.cos(), alpha * theta.sin()
    if variant == "road_4":
        # per group: first g entries for the cos column, next g for the sin column
        t = theta.reshape(*lead, -1, 2, group_size)
        a = alpha.reshape(*lead, -1, 2, group_size)
        c1 = (a[..., 0, :] * t[..., 0, :].cos()).reshape(*lead, -1)
        c2 = (a[..., 1, :] * t[..., 1, :].sin()).reshape(*lead, -1)
        return c1, c2
    raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def apply(h: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, group_size: int) -> torch.Tensor:
    """``y = h * c1 + rotate_half(h) * c2``; c1/c2 broadcast against h.  # [..., d]

    Computed in the coefficients' dtype (fp32) and cast back to h's dtype.
    """
    x = h.to(c1.dtype)
    return (x * c1 + rotate_half_grouped(x, group_size) * c2).to(h.dtype)


def inverse_coefficients(
    c1: torch.Tensor, c2: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c1', c2') of the inverse map, in the same element-wise form.

    With block ``[[A, -B], [C, D]]`` (A=c1_j, B=c2_j, C=c2_p, D=c1_p) the inverse is
    ``[[D, B], [-C, A]] / (AD + BC)``: swap the c1 entries and negate the c2 entries.
    """
    d = c1.shape[-1]
    partner = pair_index(d, group_size, device=c1.device)
    c1_partner = c1[..., partner]
    c2_partner = c2[..., partner]
    det = c1 * c1_partner + c2 * c2_partner  # AD + BC, the same for j and p
    return c1_partner / det, -c2 / det


def dense_matrix(c1: torch.Tensor, c2: torch.Tensor, group_size: int) -> torch.Tensor:
    """The full ``[d, d]`` matrix R with ``y = R h`` (a reference, O(d^2))."""
    d = c1.shape[-1]
    eye = torch.eye(d, dtype=c1.dtype, device=c1.device)
    # column k of R is R e_k: apply to each basis vector (rows of eye), then transpose
    return apply(eye, c1, c2, group_size).T


def identity_params(dim: int, variant: str, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """theta = 0, alpha = 1: the identity map."""
    n = n_params(dim, variant)
    return torch.zeros(n, dtype=dtype), torch.ones(n, dtype=dtype)


# ------------------------------------------------------------------------ blocks
def block_param_mask(blocks: torch.Tensor, dim: int, variant: str, group_size: int) -> torch.Tensor:
    """Boolean ``[n_params]`` mask of the parameters that belong to the given blocks."""
    owner = param_block(dim, variant, group_size)
    keep = torch.zeros(dim // 2, dtype=torch.bool)
    keep[blocks] = True
    return keep[owner]


def param_block(dim: int, variant: str, group_size: int) -> torch.Tensor:
    """Which 2D block each parameter entry belongs to.  # [n_params]"""
    if variant == "road_1":
        return torch.arange(dim // 2)
    eb = element_block(dim, group_size)
    if variant == "road_2":
        return eb
    # road_4: per group, [cos entries for g elements, sin entries for g elements]
    per_group = eb.reshape(-1, 1, group_size).expand(-1, 2, group_size)
    return per_group.reshape(-1)


def check_blocks(blocks, dim: int) -> torch.Tensor:
    """Validate a collection of block indices; return a sorted unique LongTensor."""
    t = torch.as_tensor(list(blocks) if not isinstance(blocks, torch.Tensor) else blocks)
    t = t.long().reshape(-1)
    n = dim // 2
    if t.numel() and (t.min() < 0 or t.max() >= n):
        bad = t[(t < 0) | (t >= n)][0].item()
        raise ConfigError(f"block {bad} is out of range: width {dim} has blocks 0..{n - 1}")
    return torch.unique(t)


def masked_coefficients(
    c1: torch.Tensor, c2: torch.Tensor, element_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity (c1=1, c2=0) wherever ``element_mask`` is False.  # [..., d]"""
    m = element_mask.to(c1.dtype)
    return c1 * m + (1 - m), c2 * m


def init_params(
    dim: int, variant: str, *, init: Literal["identity", "random"] = "identity",
    generator: torch.Generator | None = None, scale: float = math.pi,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh fp32 (theta, alpha). ``random`` draws theta ~ U(-scale, scale), alpha=1."""
    theta, alpha = identity_params(dim, variant)
    if init == "random":
        theta = (torch.rand(theta.shape, generator=generator) * 2 - 1) * scale
    elif init != "identity":
        raise ConfigError(f"init must be 'identity' or 'random', got {init!r}")
    return theta, alpha


def check_param_shapes(theta: torch.Tensor, alpha: torch.Tensor, dim: int, variant: str) -> None:
    n = n_params(dim, variant)
    for name, t in (("theta", theta), ("alpha", alpha)):
        if t.shape[-1] != n:
            raise ShapeError(
                f"{name} has {t.shape[-1]} entries but {variant} at width {dim} needs {n}"
            )
