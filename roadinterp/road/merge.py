"""Merging a RoAd map into a Linear layer and taking it out again.

RoAd on a Linear's output, ``y = R (W x + b)``, is the Linear ``W' = R W``,
``b' = R b`` (zero inference overhead once merged). Because alpha scales the
blocks, R is not orthogonal in general: unmerging multiplies by ``R^-1``, which
RoAd keeps in the same element-wise form (see ``inverse_coefficients``).
"""

from __future__ import annotations

import torch

from roadinterp.road.rotation import apply, inverse_coefficients


def _apply_rows(weight: torch.Tensor, c1, c2, group_size: int) -> torch.Tensor:
    # R W: R acts on the output dimension, i.e. on every column of W  # [out, in]
    return apply(weight.T, c1, c2, group_size).T


@torch.no_grad()
def merge_into_linear(linear: torch.nn.Linear, c1, c2, group_size: int) -> None:
    """In place: ``W <- R W``, ``b <- R b``."""
    linear.weight.copy_(_apply_rows(linear.weight.float(), c1, c2, group_size).to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_(apply(linear.bias.float(), c1, c2, group_size).to(linear.bias.dtype))


@torch.no_grad()
def unmerge_from_linear(linear: torch.nn.Linear, c1, c2, group_size: int) -> None:
    """In place: ``W <- R^-1 W``, ``b <- R^-1 b`` (undoes merge_into_linear)."""
    i1, i2 = inverse_coefficients(c1, c2, group_size)
    merge_into_linear(linear, i1, i2, group_size)
