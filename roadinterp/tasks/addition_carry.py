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
        values = carry_model(raw, hypothesis, interventions)
        return {**values, "output": values["output"] % 10}

    def encode(self, raw: Raw) -> dict[str, torch.Tensor]:
        return _arith.encode_pairs(raw)


def carry_model(raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
    """ones, carry, tens and ``output`` = tens + carry (tens alone for ``tens-only``), not reduced:
    each task maps it to its answer (the tens digit mod 10, or the first digit written)."""
    ones = do(interventions, "ones", raw["a0"] + raw["b0"])
    carry = do(interventions, "carry", ones >= 10).astype(bool)
    tens = do(interventions, "tens", raw["a1"] + raw["b1"])
    output = tens if hypothesis == "tens-only" else tens + carry
    return {"ones": ones, "carry": carry, "tens": tens, "output": output.astype(np.int64)}
