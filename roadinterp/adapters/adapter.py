"""``RoadAdapter``: a named collection of RoAd maps, the unit you train, save and compose.

An adapter holds one :class:`~roadinterp.road.RoadRotation` per *target*. A target
is either a hidden-state site (``placement="site"``, key ``Site.key()`` such as
``"2:block_output:last"``) acted on through pyvene, or a Linear module path
(``placement="linear"``, e.g. ``"model.layers.0.self_attn.q_proj"``) whose output
is rotated PEFT-style. Every map of an adapter uses the same variant and the same
*subspace* (block indices), which is what :func:`roadinterp.compose` checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from roadinterp import io
from roadinterp.adapters.modules import PLACEMENTS
from roadinterp.errors import ConfigError, FileFormatError, ShapeError
from roadinterp.road import rotation as rot
from roadinterp.road.module import RoadRotation
from roadinterp.sites import module_key


@io.register_kind
class RoadAdapter(nn.Module):
    """RoAd maps on named targets. ``targets``: target key -> width."""

    KIND = "road_adapter"

    def __init__(
        self, targets: Mapping[str, int], *, variant: str = "road_1", group_size: int | None = 64,
        blocks: Sequence[int] | None = None, placement: str = "site", init: str = "identity",
        seed: int | None = None, meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if not targets:
            raise ConfigError("an adapter needs at least one target")
        self.placement, self.variant = placement, variant
        self.meta = dict(meta or {})
        self.targets = dict(targets)
        self.blocks = None if blocks is None else [int(b) for b in blocks]
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.rotations = nn.ModuleDict()
        for key, dim in self.targets.items():
            g = group_size if group_size is not None and dim % group_size == 0 else rot.largest_group_size(dim)
            if group_size is not None and group_size > dim:
                g = rot.largest_group_size(dim)
            self.rotations[module_key(key)] = RoadRotation(dim, variant, g, blocks=self.blocks, init=init, generator=gen)

    @property
    def group_sizes(self) -> dict[str, int]:
        """Pair layout of each target (derived from the maps, never stored twice)."""
        return {k: r.group_size for k, r in self.items()}

    def rotation(self, target: str) -> RoadRotation:
        if target not in self.targets:
            raise ConfigError(f"adapter has no target {target!r}; targets: {', '.join(self.targets)}")
        return self.rotations[module_key(target)]

    def items(self):
        return [(k, self.rotation(k)) for k in self.targets]

    def n_trainable(self) -> int:
        """Trainable entries actually used (inside the subspace)."""
        total = 0
        for _, r in self.items():
            n = rot.n_params(r.dim, r.variant)
            if self.blocks is not None:
                n = int(rot.block_param_mask(torch.tensor(self.blocks), r.dim, r.variant, r.group_size).sum())
            total += 2 * n
        return total

    def scaled(self, lam: float) -> RoadAdapter:
        """A copy with every angle multiplied by ``lam`` (alpha interpolated 1 -> alpha)."""
        new = RoadAdapter.from_state(*self.to_state())
        with torch.no_grad():
            for _, r in new.items():
                r.theta.mul_(lam)
                r.alpha.copy_(1 + lam * (r.alpha - 1))
        return new

    # ---------------------------------------------------------------- io
    def to_state(self):
        config = {
            "placement": self.placement, "variant": self.variant, "blocks": self.blocks,
            "targets": self.targets, "group_sizes": self.group_sizes, "meta": self.meta,
        }
        tensors = {}
        for key, r in self.items():
            tensors[f"{key}.theta"] = r.theta.detach()
            tensors[f"{key}.alpha"] = r.alpha.detach()
        return config, tensors

    @classmethod
    def from_state(cls, config, tensors):
        where = "road_adapter config"
        targets = io.expect(config, "targets", dict, where)
        variant = io.expect(config, "variant", str, where)
        for k, v in targets.items():
            io.check_width(v, f"{where}: width of target {k!r}")
            if variant in rot.VARIANTS:  # sizes against the file's tensors before anything is allocated
                for name in ("theta", "alpha"):
                    io.expect_shape(tensors, f"{k}.{name}", (rot.n_params(v, variant),),
                                    f"a {variant} map of width {v}")
        blocks = config.get("blocks")
        if blocks is not None and not (isinstance(blocks, list) and all(isinstance(b, int) for b in blocks)):
            raise FileFormatError(f"{where}: 'blocks' must be a list of ints or null, got {blocks!r}")
        gs = io.expect(config, "group_sizes", dict, where)
        new = cls(
            targets, variant=variant, group_size=None, blocks=blocks,
            placement=io.expect(config, "placement", str, where), meta=config.get("meta") or {},
        )
        for key, r in new.items():
            g = gs.get(key)
            if not isinstance(g, int) or g != r.group_size:
                new.rotations[module_key(key)] = RoadRotation(r.dim, r.variant, g if isinstance(g, int) else -1, blocks=blocks)
            r = new.rotation(key)
            for name in ("theta", "alpha"):
                t = tensors.get(f"{key}.{name}")
                if t is None:
                    raise FileFormatError(f"weights have no tensor {key}.{name}")
                want = getattr(r, name).shape
                if tuple(t.shape) != tuple(want):
                    raise ShapeError(
                        f"{key}.{name} has shape {tuple(t.shape)} but a {r.variant} map of width {r.dim} "
                        f"needs {tuple(want)} (was it saved for another model width?)"
                    )
                with torch.no_grad():
                    getattr(r, name).copy_(t)
        return new

    def extra_repr(self) -> str:
        nb = "all" if self.blocks is None else len(self.blocks)
        return f"placement={self.placement}, variant={self.variant}, targets={len(self.targets)}, blocks={nb}"


def as_bank(adapters) -> dict[str, RoadAdapter]:
    """A bank, name -> adapter in id order, from one adapter, a dict or a list."""
    if isinstance(adapters, RoadAdapter):
        return {"default": adapters}
    if isinstance(adapters, Mapping):
        bank = dict(adapters)
    elif isinstance(adapters, (list, tuple)):
        bank = {str(i): a for i, a in enumerate(adapters)}
    else:
        raise ConfigError(f"adapters must be a RoadAdapter, a dict name -> RoadAdapter or a list, got {type(adapters).__name__}")
    if not bank:
        raise ConfigError("the adapter bank is empty")
    for name, a in bank.items():
        if not isinstance(a, RoadAdapter):
            raise ConfigError(f"adapter {name!r} is a {type(a).__name__}, not a RoadAdapter")
    return bank


def stack_bank(bank: Mapping[str, RoadAdapter], target: str, width: int):
    """Stack the adapters of a bank at one target for a batched layer.

    Returns ``(variant, group_size, thetas [n, n_params], alphas [n, n_params],
    element_mask [n, d] or None)``; an adapter without this target contributes the
    identity. All adapters at a target must share width, variant and group size.
    """
    variant = group_size = None
    for name, a in bank.items():
        if target not in a.targets:
            continue
        r = a.rotation(target)
        if r.dim != width:
            raise ShapeError(f"adapter {name!r} is {r.dim} wide at {target!r} but the model is {width} wide there")
        if variant is None:
            variant, group_size = r.variant, r.group_size
        elif (r.variant, r.group_size) != (variant, group_size):
            raise ConfigError(
                f"adapters in one bank must share variant and group_size at {target!r}: "
                f"{name!r} has ({r.variant}, {r.group_size}), others ({variant}, {group_size})"
            )
    if variant is None:
        raise ConfigError(f"no adapter of the bank targets {target!r}")
    thetas, alphas, masks = [], [], []
    for a in bank.values():
        if target in a.targets:
            r = a.rotation(target)
            theta, alpha, mask = r.theta.detach(), r.alpha.detach(), r.spec.element_mask()
        else:
            (theta, alpha), mask = rot.identity_params(width, variant), None
        thetas.append(theta.float().cpu())
        alphas.append(alpha.float().cpu())
        masks.append(torch.ones(width, dtype=torch.bool) if mask is None else mask)
    mask = torch.stack(masks)
    return variant, group_size, torch.stack(thetas), torch.stack(alphas), None if bool(mask.all()) else mask
