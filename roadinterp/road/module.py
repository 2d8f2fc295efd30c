"""``RoadRotation``: trainable RoAd parameters as an ``nn.Module``.

Holds theta and alpha in peft's layout (fp32 whatever the model's dtype) and an
optional *subspace*: the set of 2D blocks it acts on. Blocks outside the subspace
are the identity (theta=0, alpha=1 behaviour), and gradients never reach their
parameters, which is what makes adapters on disjoint block sets compose exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from roadinterp.errors import ConfigError
from roadinterp.road import rotation as rot


@dataclass
class RoadSpec:
    """Shape of a RoAd map. Saved beside the weights as JSON."""

    dim: int  # width of the rotated vector
    variant: str = "road_1"  # road_1 | road_2 | road_4
    group_size: int = 64  # even, divides dim; pairs are (j, j + group_size/2)
    blocks: list[int] | None = field(default=None)  # subspace; None = all blocks

    def __post_init__(self) -> None:
        if isinstance(self.group_size, int) and self.group_size > self.dim and self.dim % 2 == 0:
            raise ConfigError(
                f"group_size must be even and divide {self.dim}, got {self.group_size} "
                f"(try {rot.largest_group_size(self.dim)})"
            )
        rot.check_layout(self.dim, self.group_size, self.variant)
        if self.blocks is not None:
            self.blocks = rot.check_blocks(self.blocks, self.dim).tolist()

    @property
    def n_blocks(self) -> int:
        return self.dim // 2

    def element_mask(self) -> torch.Tensor | None:
        """``[d]`` bool: elements inside the subspace (None when it is everything)."""
        if self.blocks is None:
            return None
        keep = torch.zeros(self.n_blocks, dtype=torch.bool)
        keep[self.blocks] = True
        return keep[rot.element_block(self.dim, self.group_size)]


class RoadRotation(nn.Module):
    """A trainable RoAd map ``h -> R h`` on the last dimension.

    >>> r = RoadRotation(8, variant="road_1", group_size=4)
    >>> torch.allclose(r(torch.ones(2, 8)), torch.ones(2, 8))   # identity at init
    True
    """

    def __init__(
        self, dim: int, variant: str = "road_1", group_size: int = 64, *,
        blocks=None, init: str = "identity", generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = RoadSpec(dim, variant, group_size, None if blocks is None else list(blocks))
        theta, alpha = rot.init_params(dim, variant, init=init, generator=generator)
        self.theta = nn.Parameter(theta)  # [n_params] fp32
        self.alpha = nn.Parameter(alpha)  # [n_params] fp32
        mask = self.spec.element_mask()
        self.register_buffer("_element_mask", mask, persistent=False)

    # convenience accessors
    dim = property(lambda self: self.spec.dim)
    variant = property(lambda self: self.spec.variant)
    group_size = property(lambda self: self.spec.group_size)

    def coefficients(self, element_mask: torch.Tensor | None = None):
        """(c1, c2) ``[d]`` (or ``[batch, d]`` with a per-example ``element_mask``)."""
        c1, c2 = rot.coefficients(self.theta, self.alpha, self.variant, self.group_size)
        mask = self._element_mask
        if element_mask is not None:
            mask = element_mask if mask is None else (element_mask & mask)
        if mask is not None:
            c1, c2 = rot.masked_coefficients(c1, c2, mask)
        return c1, c2

    def forward(self, h: torch.Tensor, element_mask: torch.Tensor | None = None) -> torch.Tensor:
        c1, c2 = self.coefficients(element_mask)
        if c1.dim() == 2 and h.dim() > 2:  # per-example coefficients over [batch, pos, d]
            c1, c2 = c1[:, None, :], c2[:, None, :]
        return rot.apply(h, c1, c2, self.group_size)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        i1, i2 = rot.inverse_coefficients(*self.coefficients(), self.group_size)
        return rot.apply(h, i1, i2, self.group_size)

    def matrix(self) -> torch.Tensor:
        """Dense ``[d, d]`` matrix (for tests and figures)."""
        return rot.dense_matrix(*self.coefficients(), self.group_size)

    def extra_repr(self) -> str:
        nb = "all" if self.spec.blocks is None else len(self.spec.blocks)
        return f"dim={self.dim}, variant={self.variant}, group_size={self.group_size}, blocks={nb}"
