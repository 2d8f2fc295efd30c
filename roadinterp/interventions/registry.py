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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from roadinterp._pyvene import pv
from roadinterp._scoped import seeded
from roadinterp.interventions.masks import NeuronMaskInterchange
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
    name: str
    build: Callable[..., FamilyBuild]  # (dim, sizes, seed, **options) -> FamilyBuild
    description: str
    # True when roadinterp.dii.batched can train K candidates of this family in one step:
    # no parameters (neuron-fixed), or one RoadInterchange whose candidates stack along a K axis
    batched: bool = False


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


def _road_like(family):
    def build(dim, sizes, seed=None, variant="road_1", init="random", n_layers=None, depth=None, **_):
        if depth is None:  # two factors: best mean IIA in experiments/butterfly_depth.py
            depth = 2 if family == "butterfly" else 1
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


for _f in (
    Family("neuron", _neuron_mask, "learned sparse neuron mask (DBM): at most size neurons per variable"),
    Family("neuron-fixed", _neuron_fixed, "the first size neurons, nothing learned (a cost baseline)",
           batched=True),
    Family("road", _road_like("road"), "one RoAd layer, one rotated axis per pair per variable", batched=True),
    Family("butterfly", _road_like("butterfly"), "RoAd butterfly: 2 factors of log2(d) layers, strides 1..d/2",
           batched=True),
    Family("das", _das, "full orthogonal rotation (pyvene RotatedSpaceIntervention)"),
    Family("lowrank", _lowrank, "low-rank orthonormal basis (pyvene LowRankRotatedSpaceIntervention)"),
    Family("boundless", _boundless, "learned boundary (pyvene BoundlessRotatedSpaceIntervention)"),
):
    register_family(_f)
