"""Interval membership (price-tagging style): is X <= Z <= Y?

Prompt ``<bos> X Y Z ?`` with numbers 0..19 as tokens; the answer token is ``yes`` or
``no`` (label 1 = yes). Causal model: left = X <= Z, right = Z <= Y, output = left and
right. Rival ``mid`` (the midpoint-distance story of Boundless DAS): mid = 2Z - X - Y,
output = |mid| <= Y - X — the same function on factual inputs, a different variable.
Train and test hold disjoint (X, Y) pairs (20% test); labels are balanced.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from roadinterp.tasks.base import Do, Raw, TokenTask, do

N_NUMBERS = 20
TEST_FRACTION = 0.2


class Interval(TokenTask):
    name = "interval"
    description = "is X <= Z <= Y for numbers 0..19; variables left, right (rival: mid)"
    variables = ("left", "right")
    rivals: ClassVar[dict[str, tuple[str, ...]]] = {"mid": ("mid",)}
    vocab: ClassVar[list[str]] = ["<bos>", "?", "no", "yes", *[str(i) for i in range(N_NUMBERS)]]
    answer_tokens: ClassVar[list[str]] = ["no", "yes"]
    n_classes = 2
    positions: ClassVar[dict[str, int]] = {"bos": 0, "x": 1, "y": 2, "z": 3, "last": 4}

    def __init__(self) -> None:
        perm = np.random.default_rng(7).permutation(N_NUMBERS * N_NUMBERS)
        n_test = int(len(perm) * TEST_FRACTION)
        pairs = {"test": perm[:n_test], "train": perm[n_test:]}  # pair id = N*X + Y
        self._space: dict[str, dict[bool, np.ndarray]] = {}
        for split, ids in pairs.items():
            xs = np.repeat(ids // N_NUMBERS, N_NUMBERS)
            ys = np.repeat(ids % N_NUMBERS, N_NUMBERS)
            zs = np.tile(np.arange(N_NUMBERS), len(ids))
            triples = np.stack([xs, ys, zs], axis=1)  # [m, 3]
            inside = (xs <= zs) & (zs <= ys)
            self._space[split] = {True: triples[inside], False: triples[~inside]}

    def _sample(self, n: int, rng: np.random.Generator, split: str) -> Raw:
        label = rng.random(n) < 0.5
        pos, neg = self._space[split][True], self._space[split][False]
        rows = np.where(label[:, None], pos[rng.integers(0, len(pos), n)], neg[rng.integers(0, len(neg), n)])
        return {"x": rows[:, 0], "y": rows[:, 1], "z": rows[:, 2]}

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        x, y, z = raw["x"], raw["y"], raw["z"]
        if hypothesis == "mid":
            mid = do(interventions, "mid", 2 * z - x - y)
            output = np.abs(mid) <= y - x
            return {"mid": mid, "output": output.astype(np.int64)}
        left = do(interventions, "left", x <= z).astype(bool)
        right = do(interventions, "right", z <= y).astype(bool)
        return {"left": left, "right": right, "mid": 2 * z - x - y, "output": (left & right).astype(np.int64)}

    def encode(self, raw: Raw) -> dict[str, torch.Tensor]:
        n = len(raw["x"])
        num = self.token_id["0"]
        ids = np.stack([np.full(n, 0), num + raw["x"], num + raw["y"], num + raw["z"], np.full(n, 1)], axis=1)
        return {"input_ids": torch.as_tensor(ids, dtype=torch.long)}  # [n, 5]
