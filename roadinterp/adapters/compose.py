"""Multi-task composition by subspace: one task, one set of 2D blocks.

A RoAd map is block-diagonal in 2x2 blocks, and a block outside an adapter's
subspace is exactly the identity. Two adapters trained on *disjoint* block sets
therefore commute, and applying both is the single map that uses A's parameters on
A's blocks and B's on B's: ``R_{A u B} = R_A (+) R_B`` (:func:`compose`, exact).

:func:`split_blocks` hands out disjoint block sets, :func:`restrict` confines an
adapter to its blocks, :func:`compose` takes the union. Training adapters for
composition and measuring what it does to behaviour is
:mod:`roadinterp.adapters.composition`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.errors import ConfigError, OverlapError, ShapeError
from roadinterp.road import rotation as rot

Resolve = Literal["error", "first", "mean"]

__all__ = ["combine", "compose", "owned_blocks", "restrict", "split_blocks"]


# --------------------------------------------------------------------- blocks
def split_blocks(n_blocks: int, names: Sequence[str], fractions: Sequence[float] | None = None) -> dict[str, list[int]]:
    """Disjoint, contiguous block sets ``{name: [blocks]}`` covering ``0..n_blocks-1``.

    ``fractions`` (default: equal) give each name's share; they must be positive and
    sum to at most 1 (leftover blocks stay unowned, i.e. identity).
    """
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"names must be distinct and non-empty, got {names}")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < len(names):
        raise ConfigError(f"n_blocks must be an int >= {len(names)} (one block per name), got {n_blocks!r}")
    if fractions is None:
        fractions = [1 / len(names)] * len(names)
    fractions = [float(f) for f in fractions]
    if len(fractions) != len(names) or any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ConfigError(f"fractions must be {len(names)} positive numbers summing to <= 1, got {fractions}")
    out, start = {}, 0
    for name, f in zip(names, fractions):
        k = max(1, int(round(f * n_blocks)))
        k = min(k, n_blocks - start)
        if k < 1:
            raise ConfigError(f"no blocks left for {name!r}: {n_blocks} blocks, fractions {fractions}")
        out[name] = list(range(start, start + k))
        start += k
    return out


def owned_blocks(adapter: RoadAdapter, target: str) -> list[int]:
    """The blocks an adapter acts on at ``target`` (all of them when ``blocks`` is None)."""
    r = adapter.rotation(target)
    return list(range(r.dim // 2)) if adapter.blocks is None else list(adapter.blocks)


def restrict(adapter: RoadAdapter, blocks: Sequence[int], *, meta: Mapping | None = None) -> RoadAdapter:
    """A copy of ``adapter`` acting only on ``blocks`` (parameters elsewhere reset to identity)."""
    config, tensors = adapter.to_state()
    config = {**config, "blocks": sorted(int(b) for b in blocks), "meta": dict(meta or adapter.meta)}
    tensors = dict(tensors)
    for key, r in adapter.items():
        keep = rot.block_param_mask(torch.tensor(config["blocks"], dtype=torch.long), r.dim, r.variant, r.group_size)
        tensors[f"{key}.theta"] = torch.where(keep, r.theta.detach(), torch.zeros_like(r.theta))
        tensors[f"{key}.alpha"] = torch.where(keep, r.alpha.detach(), torch.ones_like(r.alpha))
    return RoadAdapter.from_state(config, tensors)


# -------------------------------------------------------------------- compose
def _check_compatible(adapters: Mapping[str, RoadAdapter]) -> None:
    names = list(adapters)
    first = adapters[names[0]]
    for n in names:
        a = adapters[n]
        if not isinstance(a, RoadAdapter):
            raise ConfigError(f"compose takes RoadAdapters, got {type(a).__name__} for {n!r}")
        if a.placement != first.placement:
            raise ConfigError(f"adapters {names[0]!r} and {n!r} have different placements: "
                              f"{first.placement!r} vs {a.placement!r}")
        if a.variant != first.variant:
            raise ConfigError(f"adapters {names[0]!r} and {n!r} have different variants: "
                              f"{first.variant!r} vs {a.variant!r}; compose needs one variant")
        if a.targets != first.targets:
            raise ShapeError(f"adapters {names[0]!r} and {n!r} act on different targets or widths: "
                             f"{first.targets} vs {a.targets}")
        if a.group_sizes != first.group_sizes:
            raise ShapeError(f"adapters {names[0]!r} and {n!r} use different group sizes: "
                             f"{first.group_sizes} vs {a.group_sizes}")


def compose(
    adapters: Mapping[str, RoadAdapter], *, weights: Mapping[str, float] | None = None, resolve: Resolve = "error",
) -> RoadAdapter:
    """One adapter acting on the union of the components' block sets.

    On disjoint blocks the result equals applying every component (they commute; each
    is the identity outside its blocks). ``weights`` scales a component first
    (angles x lambda, alpha 1 -> alpha; see :meth:`RoadAdapter.scaled`): lambda 0 removes
    it, 1 keeps it. Overlapping blocks raise :class:`OverlapError` unless ``resolve`` is
    ``"first"`` (a shared block keeps the parameters of the first adapter, in mapping
    order, that owns it) or ``"mean"`` (theta and alpha averaged over the owners).
    The result's ``meta["owners"]`` is ``{name: blocks}``.
    """
    if not adapters:
        raise ConfigError("compose needs at least one adapter")
    if resolve not in ("error", "first", "mean"):
        raise ConfigError(f"resolve must be 'error', 'first' or 'mean', got {resolve!r}")
    from roadinterp.bounds import finite_float

    weights = {k: finite_float(f"weight of {k!r}", v) for k, v in (weights or {}).items()}
    unknown_w = sorted(set(weights) - set(adapters))
    if unknown_w:
        raise ConfigError(f"weights name adapters that are not composed: {unknown_w}; adapters: {list(adapters)}")
    _check_compatible(adapters)
    names = list(adapters)
    first = adapters[names[0]]
    key0 = next(iter(first.targets))
    owners = {n: owned_blocks(adapters[n], key0) for n in names}

    if resolve == "error":
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = sorted(set(owners[a]) & set(owners[b]))
                if shared:
                    head = ", ".join(map(str, shared[:8])) + (", ..." if len(shared) > 8 else "")
                    raise OverlapError(
                        f"adapters {a!r} and {b!r} both own {len(shared)} block(s): {head}; train them on "
                        "disjoint blocks (roadinterp.adapters.split_blocks) or pass resolve='first' or 'mean'"
                    )

    parts = {n: (adapters[n].scaled(weights[n]) if n in weights else adapters[n]) for n in names}
    union = sorted(set().union(*map(set, owners.values())))
    config, _ = first.to_state()
    config = {**config, "blocks": union, "meta": {"owners": owners, "weights": weights, "resolve": resolve}}
    tensors = {}
    for key, r0 in first.items():
        theta = torch.zeros_like(r0.theta)
        alpha = torch.ones_like(r0.alpha)
        tsum, asum = torch.zeros_like(theta), torch.zeros_like(alpha)
        count = torch.zeros_like(theta)
        taken = torch.zeros(theta.shape, dtype=torch.bool)
        for n in names:
            r = parts[n].rotation(key)
            mask = rot.block_param_mask(torch.tensor(owners[n], dtype=torch.long), r.dim, r.variant, r.group_size)
            if resolve == "mean":
                tsum += torch.where(mask, r.theta.detach(), 0.0)
                asum += torch.where(mask, r.alpha.detach(), 0.0)
                count += mask.to(count.dtype)
            else:
                new = mask & ~taken
                theta = torch.where(new, r.theta.detach(), theta)
                alpha = torch.where(new, r.alpha.detach(), alpha)
                taken |= mask
        if resolve == "mean":
            has = count > 0
            theta = torch.where(has, tsum / count.clamp(min=1), theta)
            alpha = torch.where(has, asum / count.clamp(min=1), alpha)
        tensors[f"{key}.theta"], tensors[f"{key}.alpha"] = theta, alpha
    return RoadAdapter.from_state(config, tensors)


# -------------------------------------------------------------------- combine
def combine(adapters: Mapping[str, RoadAdapter], *, weights: Mapping[str, float] | None = None) -> RoadAdapter:
    """Apply several adapters as one: :func:`compose` when they share targets, else a stack.

    A stack puts each adapter's maps at its own targets (adapters at different layers,
    "each behaviour at its own layer"); adapters sharing a target must own disjoint blocks
    there (OverlapError otherwise). ``weights`` scales a component first (``scaled``).
    """
    if not adapters:
        raise ConfigError("combine needs at least one adapter")
    if not all(isinstance(a, RoadAdapter) for a in adapters.values()):
        from roadinterp.interventions.loreft import concat_loreft

        return concat_loreft(adapters)  # LoReFT: rows stacked (the pyreft way)
    parts = {n: (a.scaled(weights[n]) if weights and n in weights else a) for n, a in adapters.items()}
    first = next(iter(parts.values()))
    if all(a.targets == first.targets for a in parts.values()):
        return compose(adapters, weights=weights)
    for n, a in parts.items():
        if (a.placement, a.variant) != (first.placement, first.variant):
            raise ConfigError(f"adapters to combine must share placement and variant; {n!r} has "
                              f"({a.placement}, {a.variant}), others ({first.placement}, {first.variant})")
    targets, gsizes, tensors, owners = {}, {}, {}, {}
    for n, a in parts.items():
        for key, r in a.items():
            if key in targets and (targets[key], gsizes[key]) != (r.dim, r.group_size):
                raise ShapeError(f"adapter {n!r} is {r.dim} wide (group {r.group_size}) at {key!r}, others differ")
            targets[key], gsizes[key] = r.dim, r.group_size
            blocks = owned_blocks(a, key)
            mask = rot.block_param_mask(torch.tensor(blocks, dtype=torch.long), r.dim, r.variant, r.group_size)
            theta, alpha = tensors.get(key, rot.identity_params(r.dim, r.variant))
            if key in owners and set(owners[key][1]) & set(blocks):
                raise OverlapError(f"adapters {owners[key][0]!r} and {n!r} both own blocks at {key!r}")
            owners[key] = (n, blocks)
            tensors[key] = (torch.where(mask, r.theta.detach(), theta), torch.where(mask, r.alpha.detach(), alpha))
    config = {"placement": first.placement, "variant": first.variant, "blocks": None, "targets": targets,
              "group_sizes": gsizes, "meta": {"stacked": {n: list(a.targets) for n, a in parts.items()}}}
    flat = {f"{k}.{f}": t for k, (th, al) in tensors.items() for f, t in (("theta", th), ("alpha", al))}
    return RoadAdapter.from_state(config, flat)
