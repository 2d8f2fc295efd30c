"""Learned subspaces: what a DII basis swaps, and whether seeds learned the same one.

A DII cell swaps, for each causal variable, the rotated coordinates it owns:
``b + R^-1 M R (s - b)``. For a rotation that map is the orthogonal projector onto the
span of the *rows of R that M keeps*, so the thing a cell learned is that span (a
k-dimensional subspace of the d-wide site), not the rows themselves: two seeds whose
rows differ by a rotation inside the span do exactly the same interchange.

Two subspaces are compared by their **principal angles** (Bjorck and Golub 1973): with
orthonormal bases ``Q1 [d, k1]`` and ``Q2 [d, k2]``, the singular values of
``Q1^T Q2`` are the cosines of the angles, 1 for a shared direction and 0 for an
orthogonal one. **Seed agreement** of a cell is the mean of those cosines, averaged
over the cell's variables and over every pair of seeds: 1 when the seeds learned the
same subspaces. Random subspaces do not score 0 (``chance_agreement`` gives their
expected value, about ``sqrt(k/d)`` for small k), so read agreement against it.

:class:`SubspaceBasis` is how a search saves each cell's subspaces
(``run_dir/subspaces/<slug>/``, see :mod:`roadinterp.store`) for every rotated family,
pyvene's das and lowrank included, so reports read them back without the model.
Pure numpy apart from that class; no search, training or plotting imports.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadinterp import io
from roadinterp.errors import ConfigError, FileFormatError, ShapeError


# ------------------------------------------------------------------ principal angles
def orthonormal(basis: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning the columns of ``basis [d, k]`` (reduced QR).  # [d, k]"""
    a = np.asarray(basis, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[0] < a.shape[1]:
        raise ShapeError(f"a subspace basis must be [d, k] with 1 <= k <= d, got shape {a.shape}")
    q, r = np.linalg.qr(a)
    diag = np.abs(np.diag(r))
    if diag.min() <= 1e-10 * max(diag.max(), 1e-300):
        raise ShapeError(f"the {a.shape[1]} basis vectors are linearly dependent (rank < {a.shape[1]})")
    return q


def principal_angles(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of ``q1 [d, k1]`` and ``q2 [d, k2]``.

    ``min(k1, k2)`` angles: ``arccos`` of the singular values of ``Q1^T Q2`` after
    orthonormalising each basis. 0 = a shared direction, pi/2 = orthogonal.
    """
    a, b = orthonormal(q1), orthonormal(q2)
    if a.shape[0] != b.shape[0]:
        raise ShapeError(f"subspaces live in different widths: {a.shape[0]} vs {b.shape[0]}")
    s = np.linalg.svd(a.T @ b, compute_uv=False)  # cosines, descending
    return np.arccos(np.clip(s, 0.0, 1.0))


def mean_cosine(q1: np.ndarray, q2: np.ndarray) -> float:
    """Mean cosine of the principal angles: 1 = same subspace, 0 = orthogonal."""
    return float(np.cos(principal_angles(q1, q2)).mean())


def pair_angles(bases: Sequence[Sequence[np.ndarray]]) -> dict[tuple[int, int], list[np.ndarray]]:
    """Principal angles (radians) of every seed pair ``i < j``, one array per variable.

    ``bases[s][v]`` is seed s's ``[d, k_v]`` basis of variable v; every seed must list the
    same variables.
    """
    nv = {len(b) for b in bases}
    if len(nv) > 1:
        raise ShapeError(f"seeds have different numbers of variables: {sorted(nv)}")
    return {(i, j): [principal_angles(a, b) for a, b in zip(bases[i], bases[j])]
            for i, j in itertools.combinations(range(len(bases)), 2)}


def pairwise_agreement(bases: Sequence[Sequence[np.ndarray]],
                       angles: dict[tuple[int, int], list[np.ndarray]] | None = None) -> np.ndarray:
    """``[S, S]`` mean principal cosine between seeds, averaged over variables (diagonal 1).

    ``bases`` as in :func:`pair_angles`; pass ``angles`` (its result) when you already
    have them, so the SVDs are not done twice.
    """
    angles = pair_angles(bases) if angles is None else angles
    out = np.eye(len(bases))
    for (i, j), per_var in angles.items():
        out[i, j] = out[j, i] = float(np.mean([np.cos(a).mean() for a in per_var]))  # mean_cosine per variable
    return out


def seed_agreement(bases: Sequence[Sequence[np.ndarray]]) -> float:
    """Mean over seed pairs of :func:`pairwise_agreement`; NaN with fewer than two seeds."""
    n = len(bases)
    if n < 2:
        return float("nan")
    m = pairwise_agreement(bases)
    return float(m[np.triu_indices(n, 1)].mean())


@lru_cache(maxsize=256)
def random_angles(d: int, k: int, samples: int = 200, seed: int = 0) -> np.ndarray:
    """Principal angles (radians) of ``samples`` pairs of uniformly random k-dim subspaces of R^d.  # [samples, k]

    Monte Carlo with a fixed seed (deterministic); Gaussian matrices have uniformly
    distributed column spans. The reference a learned pair of subspaces is read against.
    """
    if not 1 <= k <= d:
        raise ConfigError(f"random subspaces need 1 <= k <= d, got k={k}, d={d}")
    rng = np.random.default_rng(seed)
    out = np.stack([principal_angles(rng.standard_normal((d, k)), rng.standard_normal((d, k)))
                    for _ in range(samples)])
    out.setflags(write=False)  # cached: callers share it
    return out


def chance_agreement(d: int, k: int, samples: int = 200, seed: int = 0) -> float:
    """Expected :func:`mean_cosine` of two uniformly random k-dimensional subspaces of R^d
    (1 when k = d: the whole space always agrees)."""
    return float(np.cos(random_angles(d, k, samples, seed)).mean())


# ------------------------------------------------------------------ saved subspaces
@io.register_kind
class SubspaceBasis:
    """The rotated directions each causal variable of a DII cell swaps, as rows.

    ``rows [sum(sizes), d]``: variable v owns rows ``offsets[v] : offsets[v] + sizes[v]``;
    ``family`` names the intervention family that learned them.
    """

    KIND = "subspace_basis"

    def __init__(self, rows: torch.Tensor, sizes: Sequence[int], *, family: str,
                 variables: Sequence[str] | None = None) -> None:
        rows = torch.as_tensor(rows).detach().float().cpu()
        sizes = [int(s) for s in sizes]
        if rows.dim() != 2 or rows.shape[0] != sum(sizes) or any(s < 1 for s in sizes):
            raise ShapeError(f"rows must be [sum(sizes), d]; got {tuple(rows.shape)} for sizes {sizes}")
        if variables is not None and len(variables) != len(sizes):
            raise ConfigError(f"{len(variables)} variable names for {len(sizes)} variables")
        self.rows, self.sizes, self.family = rows, sizes, str(family)
        self.variables = [str(v) for v in variables] if variables is not None else [f"v{i}" for i in range(len(sizes))]

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    def bases(self) -> list[np.ndarray]:
        """One ``[d, k_v]`` column basis per variable."""
        return [r.numpy().T.astype(np.float64) for r in self.rows.split(self.sizes)]

    def to_state(self):
        return ({"sizes": self.sizes, "family": self.family, "variables": self.variables},
                {"rows": self.rows.contiguous()})

    @classmethod
    def from_state(cls, config, tensors):
        where = "subspace_basis config"
        sizes = io.expect(config, "sizes", list, where)
        if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise FileFormatError(f"{where}: 'sizes' must be positive ints, got {sizes}")
        if "rows" not in tensors:
            raise FileFormatError("weights have no tensor 'rows'")
        return cls(tensors["rows"], sizes, family=io.expect(config, "family", str, where),
                   variables=io.expect(config, "variables", list, where))

    def __repr__(self) -> str:
        return f"SubspaceBasis(family={self.family}, dim={self.dim}, sizes={self.sizes})"


def learned_basis(intervention: Any, coords: Sequence[Sequence[int]], *, family: str,
                  variables: Sequence[str] | None = None) -> SubspaceBasis | None:
    """The subspace a trained DII intervention swaps for each variable; None for unrotated families.

    RoAd interchanges (road, butterfly): the rows of R each variable's mask keeps (from
    ``factors``). pyvene rotations (das ``RotatedSpaceIntervention``, lowrank): rotated
    coordinate j is ``h @ W[:, j]``, so the rows are ``W[:, coords].T``. Boundless (learned
    boundary) and neuron (fixed axes) have no learned subspace to compare.
    """
    from roadinterp.interventions import get_family

    read = get_family(family).basis
    if read is None:
        return None
    with torch.no_grad():
        rows, sizes = read(intervention, [list(c) for c in coords])
    return SubspaceBasis(rows, sizes, family=family, variables=variables)


def load_bases(paths: Sequence[str | os.PathLike]) -> list[SubspaceBasis]:
    """Every saved :class:`SubspaceBasis` among ``paths`` (missing directories are skipped)."""
    out = []
    for p in paths:
        if (Path(p) / io.CONFIG_NAME).is_file():
            obj = io.load(p)
            if not isinstance(obj, SubspaceBasis):
                raise FileFormatError(f"{p} holds a {type(obj).__name__}, not a subspace_basis")
            out.append(obj)
    return out


def agreement_of(bases: Sequence[SubspaceBasis], matrix: np.ndarray | None = None) -> tuple[float, float]:
    """(seed agreement, its chance level) of one cell's seeds; NaNs with fewer than two seeds.

    ``matrix``: the seeds' :func:`pairwise_agreement` when already computed.
    """
    if len(bases) < 2:
        return float("nan"), float("nan")
    b0 = bases[0]
    chance = float(np.mean([chance_agreement(b0.dim, k) for k in b0.sizes]))
    if matrix is None:
        return seed_agreement([b.bases() for b in bases]), chance
    return float(matrix[np.triu_indices(len(bases), 1)].mean()), chance


__all__ = [
    "SubspaceBasis", "agreement_of", "chance_agreement", "learned_basis", "load_bases", "mean_cosine",
    "orthonormal", "pair_angles", "pairwise_agreement", "principal_angles", "random_angles", "seed_agreement",
]
