"""Intervention families for DII and how each assigns coordinates to variables.

A *family* turns ``(width, sizes, seed)`` into pyvene intervention objects and
the coordinates each causal variable owns in that family's basis:

* ``neuron``   a learned sparse neuron mask per variable (DBM, MIB's neuron baseline;
  :class:`~roadinterp.interventions.masks.NeuronMaskInterchange`): searches the neurons;
* ``neuron-fixed`` pyvene ``VanillaIntervention`` on the *first* ``size`` neurons, nothing
  learned: a cost baseline (the model's own forward and backward) and the batched-evaluation
  check, not an alignment method;
* ``road``     one RoAd layer (``RoadInterchange``), variables own one axis per pair;
* ``butterfly`` RoAd butterfly, log2(d) layers, widest stride next to the mask;
* ``das``      pyvene ``RotatedSpaceIntervention``: a full learned orthogonal matrix;
* ``lowrank``  pyvene ``LowRankRotatedSpaceIntervention``: a d x sum(sizes) orthonormal basis;
* ``boundless`` pyvene ``BoundlessRotatedSpaceIntervention``: learned boundary, one
  intervention per variable (pyvene's boundary mask always starts at coordinate 0).

``register_family`` adds your own (explicit registration, STYLE rule 4).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from roadinterp._pyvene import pv
from roadinterp._scoped import seeded
from roadinterp.interventions.masks import NeuronMaskInterchange
from roadinterp.errors import ConfigError
from roadinterp.interventions.road import RoadInterchange, assign_axes
from roadinterp.registry import Registry


@dataclass
class FamilyBuild:
    """What a family hands to the DII machinery."""

    interventions: list  # one per variable; the same object repeated when the basis is shared
    coords: list[list[int]]  # per variable: coordinates it swaps (in the intervention's basis)
    shared: bool  # True when all variables share one intervention (pyvene link key)


@dataclass
class Family:
    """Everything one DII method knows, in one object (like a peft tuner): how to build it, its
    training defaults, which sites it refuses, which candidates may share a step, its schedule and
    penalty, and how to read the subspace it learned. Nothing outside dispatches on a family's name."""

    name: str
    build: Callable[..., FamilyBuild]  # (dim, sizes, seed, **options) -> FamilyBuild
    description: str
    # True when roadinterp.dii.batched can train K candidates of this family in one step:
    # no parameters (neuron-fixed), or one RoadInterchange whose candidates stack along a K axis
    batched: bool = False
    lr: float = 0.01  # Adam's learning rate when DIIConfig.lr is unset
    depth: int | None = None  # default DIIConfig.depth (butterfly factors); None: the family has none
    # (site) -> None, raising ConfigError for a site the family cannot work on
    check_site: Callable[[Any], None] | None = None
    # (config, width, n_vars) -> what candidates must share to be trained in one step (batched families)
    batch_key: Callable[[Any, int, int], tuple] | None = None
    anneal: Callable[[Any, float], None] | None = None  # (intervention, fraction of training done)
    penalty: Callable[[Any], Any] | None = None  # (intervention) -> a loss term
    # (intervention, coords) -> (rows [k, d], sizes): the directions each variable swaps; None: no subspace
    basis: Callable[[Any, Sequence[Sequence[int]]], Any] | None = None
    saves_state: bool = False  # its intervention is saved with the run (cells/<slug>, the angle figures)

    def default_depth(self, depth: int | None) -> int | None:
        return self.depth if depth is None else depth


_FAMILIES: Registry[Family] = Registry("family")


def register_family(family: Family, *, overwrite: bool = False) -> None:
    _FAMILIES.register(family.name, family, overwrite=overwrite)


def get_family(name: str) -> Family:
    return _FAMILIES.get(name)


def list_families() -> list[str]:
    return _FAMILIES.names()


def _contiguous(sizes: Sequence[int], dim: int) -> list[list[int]]:
    return assign_axes(dim, sizes, dim)


# pyvene interventions get keep_last_dim=True like ours: a multi-position site then arrives as
# [batch, positions, d]; without it pyvene flattens positions into the width, so a d x d rotation
# fails on (positions x d) and neuron coordinates would only ever touch the first position.
# Boundless's mask is [batch, d] and cannot take a positions axis: single-position sites only.
def _neuron_fixed(dim, sizes, seed=None, **_):
    iv = pv.VanillaIntervention(embed_dim=dim, keep_last_dim=True)
    return FamilyBuild([iv] * len(sizes), _contiguous(sizes, dim), True)


def _neuron_mask(dim, sizes, seed=None, **_):
    # one mask per variable (each picks its own neurons); the coordinates are the whole
    # width because the mask, not pyvene's subspaces, decides what is swapped
    ivs = [NeuronMaskInterchange(dim, size=s, seed=None if seed is None else seed * 1000 + i)
           for i, s in enumerate(sizes)]
    return FamilyBuild(ivs, [list(range(dim)) for _ in sizes], False)


def _road_like(family, default_depth):
    def build(dim, sizes, seed=None, variant="road_1", init="random", n_layers=None, depth=None, **_):
        depth = default_depth if depth is None else depth
        iv = RoadInterchange(dim, family=family, variant=variant, init=init, seed=seed, n_layers=n_layers,
                             depth=depth)
        return FamilyBuild([iv] * len(sizes), assign_axes(dim, sizes, iv.group_size), True)

    return build


def _das(dim, sizes, seed=None, **_):
    with seeded(seed):  # pyvene's init draws from torch's global generator
        iv = pv.RotatedSpaceIntervention(embed_dim=dim, keep_last_dim=True)
    return FamilyBuild([iv] * len(sizes), _contiguous(sizes, dim), True)


def _lowrank(dim, sizes, seed=None, **_):
    rank = sum(sizes)
    with seeded(seed):
        iv = pv.LowRankRotatedSpaceIntervention(embed_dim=dim, low_rank_dimension=rank, keep_last_dim=True)
    return FamilyBuild([iv] * len(sizes), _contiguous(sizes, rank), True)


def _boundless(dim, sizes, seed=None, **_):
    ivs = []
    with seeded(seed):
        for s in sizes:
            iv = pv.BoundlessRotatedSpaceIntervention(embed_dim=dim)  # [batch, d] only: see check_cell
            iv.set_intervention_boundaries(float(s) / dim)  # start at the requested size
            ivs.append(iv)
    return FamilyBuild(ivs, [list(range(dim)) for _ in sizes], False)


# ---------------------------------------------------------------- what families know
def _one_position(site) -> None:
    p = site.positions
    if p == "all" or (isinstance(p, tuple) and len(p) > 1):
        raise ConfigError(
            f"family boundless works on one position at a time (pyvene's boundary mask is [batch, d]), "
            f"got positions {p!r}; use a single position or another family"
        )


_FREE_FIELDS = {"seed", "family", "depth"}  # may differ between candidates of one batch (see batch keys)


def _fixed_key(config, width: int, n_vars: int) -> tuple:
    """No parameters: candidates share everything but the seed (only the evaluation is batched)."""
    return ("neuron-fixed", tuple(sorted((k, v) for k, v in asdict(config).items() if k not in _FREE_FIELDS)))


def _road_key(config, width: int, n_vars: int) -> tuple:
    """Road-like families batch with each other when their layers have the same strides."""
    rest = {k: v for k, v in asdict(config).items() if k not in _FREE_FIELDS}
    rest["lr"] = config.learning_rate
    fam = get_family(config.family)
    return ("road", _strides(config.family, width, config.size, n_vars, config.variant,
                             fam.default_depth(config.depth)), tuple(sorted(rest.items())))


@functools.lru_cache(maxsize=256)
def _strides(family: str, width: int, size: int, n_vars: int, variant: str, depth: int) -> tuple[int, ...]:
    """The layer strides a family builds at this width (built once per distinct config)."""
    iv = get_family(family).build(width, [size] * n_vars, seed=0, variant=variant, depth=depth).interventions[0]
    return tuple(iv.strides)


def _mask_anneal(iv, frac: float) -> None:
    iv.anneal(frac)


def _mask_penalty(iv):
    return iv.penalty()


def _boundless_anneal(iv, frac: float) -> None:
    iv.set_temperature(torch.tensor(50.0 * (0.1 / 50.0) ** frac))


def _boundless_penalty(iv):
    return 1e-3 * iv.get_boundary_parameters().sum()


def _road_basis(iv, coords):
    """RoAd interchanges: the rows of R each variable's mask keeps (from ``factors``)."""
    masks = []
    for c in coords:
        m = torch.zeros(iv.dim, dtype=torch.bool)
        m[list(c)] = True
        masks.append(m)
    _, rows = iv.factors(masks)
    return rows, [int(m.sum()) for m in masks]


def _rotation_basis(iv, coords):
    """pyvene rotations (das, lowrank): rotated coordinate j is ``h @ W[:, j]``, so rows are ``W[:, coords].T``."""
    w = iv.rotate_layer.weight.detach().float()  # [d, d] or [d, rank]
    return torch.cat([w[:, list(c)].T for c in coords]), [len(c) for c in coords]


_ROAD = {"batched": True, "lr": 0.05, "batch_key": _road_key, "basis": _road_basis, "saves_state": True}
for _f in (
    Family("neuron", _neuron_mask, "learned sparse neuron mask (DBM): at most size neurons per variable",
           lr=0.05, anneal=_mask_anneal, penalty=_mask_penalty),
    Family("neuron-fixed", _neuron_fixed, "the first size neurons, nothing learned (a cost baseline)",
           batched=True, lr=0.0, batch_key=_fixed_key),
    Family("road", _road_like("road", 1), "one RoAd layer, one rotated axis per pair per variable", depth=1, **_ROAD),
    Family("butterfly", _road_like("butterfly", 2), "RoAd butterfly: 2 factors of log2(d) layers, strides 1..d/2",
           depth=2, **_ROAD),  # two factors: best mean IIA in experiments/butterfly_depth.py
    Family("das", _das, "full orthogonal rotation (pyvene RotatedSpaceIntervention)", basis=_rotation_basis),
    Family("lowrank", _lowrank, "low-rank orthonormal basis (pyvene LowRankRotatedSpaceIntervention)",
           basis=_rotation_basis),
    Family("boundless", _boundless, "learned boundary (pyvene BoundlessRotatedSpaceIntervention)",
           check_site=_one_position, anneal=_boundless_anneal, penalty=_boundless_penalty),
):
    register_family(_f)
