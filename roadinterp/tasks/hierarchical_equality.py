"""Hierarchical equality (Geiger et al., DAS): is (w == x) equal to (y == z)?

Four entities w, x, y, z are vectors in R^4 drawn from a *finite* pool, so equal pairs
are common and a source's w can coincide with the base's x. Train and test use
disjoint pools (entity ids ``0..P-1`` and ``P..2P-1``), so held-out accuracy and IIA
measure generalisation to unseen entities. The model input is the concatenation
``[w, x, y, z]`` as ``inputs_embeds`` of shape [n, 1, 16] (pyvene's MLP format).

Main hypothesis: V1 = (w == x), V2 = (y == z), output = (V1 == V2) (label 1 = equal).
Rival ``first-argument``: the variable is the identity of w (W); swapping it replaces
w by the source's w and recomputes everything downstream.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from roadinterp.errors import ConfigError
from roadinterp.tasks.base import Do, Raw, Task, do

ENTITY_DIM = 4


class HierarchicalEquality(Task):
    kind = "vector"
    n_classes = 2
    positions: ClassVar[dict[str, int]] = {"last": 0}

    def __init__(self, *, name: str = "hierarchical-equality", pool_size: int = 100, pool_seed: int = 0,
                 rival_match: float = 0.5):
        """``pool_size`` entities per split; ``rival_match``: for the W rival, the
        probability that a source's w is drawn equal to the base's x (so the rival's
        counterfactual labels are balanced rather than almost constant)."""
        if pool_size < 2:
            raise ConfigError(f"pool_size must be >= 2, got {pool_size}")
        if not 0.0 <= rival_match <= 1.0:
            raise ConfigError(f"rival_match must be in [0, 1], got {rival_match}")
        self.name = name
        self.description = "w,x,y,z in R^4 from finite disjoint pools; label (w==x) == (y==z)"
        self.variables = ("V1", "V2")
        self.rivals = {"first-argument": ("W",)}
        self.pool_size = pool_size
        self.rival_match = rival_match
        gen = torch.Generator().manual_seed(pool_seed)
        # [2 * pool_size, 4]: rows 0..P-1 train entities, P..2P-1 test entities.
        self.entities = torch.rand(2 * pool_size, ENTITY_DIM, generator=gen) * 2 - 1

    def pool(self, split: str) -> np.ndarray:
        """Global entity ids of ``split``."""
        start = 0 if split == "train" else self.pool_size
        return np.arange(start, start + self.pool_size)

    def _other(self, ids: np.ndarray, rng: np.random.Generator, split: str) -> np.ndarray:
        """A uniformly random entity of the split different from ``ids`` (row-wise)."""
        offset = self.pool(split)[0]
        r = rng.integers(0, self.pool_size - 1, size=len(ids))
        local = ids - offset
        return r + (r >= local) + offset

    def _sample(self, n: int, rng: np.random.Generator, split: str) -> Raw:
        # V1 and V2 are fair coins, so both classes and both equalities are balanced.
        pool = self.pool(split)
        v1 = rng.random(n) < 0.5
        v2 = rng.random(n) < 0.5
        w = rng.choice(pool, size=n)
        x = np.where(v1, w, self._other(w, rng, split))
        y = rng.choice(pool, size=n)
        z = np.where(v2, y, self._other(y, rng, split))
        return {"w": w, "x": x, "y": y, "z": z}

    def _sample_source(self, base: Raw, variable: str, rng: np.random.Generator, split: str) -> Raw:
        src = self._sample(len(base["w"]), rng, split)
        if variable == "W":
            match = rng.random(len(base["w"])) < self.rival_match
            src["w"] = np.where(match, base["x"], src["w"])
        return src

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        w_id = do(interventions, "W", raw["w"])
        v1 = do(interventions, "V1", w_id == raw["x"]).astype(bool)
        v2 = do(interventions, "V2", raw["y"] == raw["z"]).astype(bool)
        return {"W": w_id, "V1": v1, "V2": v2, "output": (v1 == v2).astype(np.int64)}

    def encode(self, raw: Raw) -> dict[str, torch.Tensor]:
        ids = np.stack([raw["w"], raw["x"], raw["y"], raw["z"]], axis=1)  # [n, 4]
        vecs = self.entities[torch.as_tensor(ids, dtype=torch.long)]  # [n, 4, 4]
        return {"inputs_embeds": vecs.reshape(len(ids), 1, 4 * ENTITY_DIM).clone()}
