"""Addition with a carry: predict the tens digit of a two-digit sum.

Prompt ``<bos> a1 a0 + b1 b0 =``; the answer (one digit token at the last position)
is the tens digit of a + b, i.e. ``(a1 + b1 + carry) mod 10``. Causal model:

    ones  = a0 + b0            (the ones-digit sum, 0..18)
    carry = ones >= 10
    tens  = a1 + b1            (0..18)
    output = (tens + carry) mod 10

Main hypothesis: variables (carry, tens). Rivals: ``ones`` — the model keeps the whole
ones-digit sum (swapping it changes carry downstream); ``tens-only`` — the model
ignores the carry (output = tens mod 10): a false hypothesis, a negative control.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from roadinterp.tasks import _arith
from roadinterp.tasks.base import Do, Raw, TokenTask, do


class AdditionCarry(TokenTask):
    name = "addition-carry"
    description = "tens digit of a two-digit sum; variables carry, tens (rivals: ones, tens-only)"
    variables = ("carry", "tens")
    rivals: ClassVar[dict[str, tuple[str, ...]]] = {"ones": ("ones",), "tens-only": ("tens",)}
    vocab: ClassVar[list[str]] = _arith.VOCAB
    answer_tokens: ClassVar[list[str]] = _arith.DIGITS
    n_classes = 10
    positions: ClassVar[dict[str, int]] = dict(_arith.POSITIONS)

    def _sample(self, n: int, rng: np.random.Generator, split: str) -> Raw:
        return _arith.sample_pairs(n, rng, split)

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        ones = do(interventions, "ones", raw["a0"] + raw["b0"])
        carry = do(interventions, "carry", ones >= 10).astype(bool)
        tens = do(interventions, "tens", raw["a1"] + raw["b1"])
        if hypothesis == "tens-only":
            output = tens % 10
        else:
            output = (tens + carry) % 10
        return {"ones": ones, "carry": carry, "tens": tens, "output": output.astype(np.int64)}

    def encode(self, raw: Raw) -> dict[str, torch.Tensor]:
        return _arith.encode_pairs(raw)
