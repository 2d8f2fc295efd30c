"""Shared vocabulary and split for the two-digit arithmetic tasks.

``addition-carry`` and the behaviour tasks read the same 7-token prompt
``<bos> a1 a0 + b1 b0 =`` over one 23-token vocabulary, so one base model can serve
several tasks. Train and test hold disjoint sets of number pairs (a, b): 20% of the
10 000 pairs, chosen by a fixed permutation, are test-only.
"""

from __future__ import annotations

import numpy as np
import torch

from roadinterp.tasks.base import Raw

DIGITS = [str(d) for d in range(10)]
LETTERS = [chr(ord("A") + d) for d in range(10)]
VOCAB: list[str] = ["<bos>", *DIGITS, "+", "=", *LETTERS]
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
POSITIONS = {"bos": 0, "a_tens": 1, "a_ones": 2, "plus": 3, "b_tens": 4, "b_ones": 5, "last": 6}
SEQ_LEN = 7
TEST_FRACTION = 0.2

_perm = np.random.default_rng(20240601).permutation(100 * 100)
_n_test = int(len(_perm) * TEST_FRACTION)
SPLIT_PAIRS = {"test": np.sort(_perm[:_n_test]), "train": np.sort(_perm[_n_test:])}  # pair id = 100*a + b


def sample_pairs(n: int, rng: np.random.Generator, split: str) -> Raw:
    pair = rng.choice(SPLIT_PAIRS[split], size=n)
    a, b = pair // 100, pair % 100
    return {"a1": a // 10, "a0": a % 10, "b1": b // 10, "b0": b % 10}


def encode_pairs(raw: Raw) -> dict[str, torch.Tensor]:
    n = len(raw["a1"])
    digit = TOKEN_ID["0"]
    ids = np.stack([
        np.full(n, TOKEN_ID["<bos>"]), digit + raw["a1"], digit + raw["a0"], np.full(n, TOKEN_ID["+"]),
        digit + raw["b1"], digit + raw["b0"], np.full(n, TOKEN_ID["="]),
    ], axis=1)  # [n, 7]
    return {"input_ids": torch.as_tensor(ids, dtype=torch.long)}
