"""Two-digit addition on a pretrained LM (MIB's arithmetic task, ones carry).

Prompt: two worked examples, then "a+b=" (digits are single tokens in SmolLM2's and most
BPE tokenizers); the answer is the first digit the model writes, the tens digit of the
sum (sums are kept below 100, so it is the whole tens place). Causal model as
``addition-carry``:

    carry  = a0 + b0 >= 10
    tens   = a1 + b1
    output = tens + carry      (its first digit, "1", when a swap makes the sum >= 100)

Main hypothesis: (carry, tens). Rivals: ``ones`` (the whole ones-digit sum; the carry is
recomputed from it) and ``tens-only`` (output = tens, ignoring the carry: a false
hypothesis). Train and test hold disjoint (a, b) pairs; every prompt has the same
length, so the inputs carry no padding. Named positions: a_tens, a_ones, b_tens, b_ones.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from roadinterp.tasks.addition_carry import carry_model
from roadinterp.tasks.base import Do, Raw, rng_for
from roadinterp.tasks.prompt import Piece, PromptTask, held_out

SHOTS = "10+21=31\n32+14=46\n"  # two worked examples (no carry, so they do not give the answer away)
TEST_FRACTION = 0.2


class Arithmetic(PromptTask):
    name = "arithmetic"
    description = ("tens digit of a two-digit sum on a pretrained LM's tokenizer; variables carry, tens "
                   "(rivals: ones, tens-only)")
    variables = ("carry", "tens")
    rivals: ClassVar[dict[str, tuple[str, ...]]] = {"ones": ("ones",), "tens-only": ("tens",)}
    answer_tokens: ClassVar[list[str]] = [str(d) for d in range(10)]
    n_classes = 10
    row_positions: ClassVar[tuple[str, ...]] = ("a_tens", "a_ones", "b_tens", "b_ones")
    single_token_pieces: ClassVar[tuple[str, ...]] = ("a_tens", "a_ones", "b_tens", "b_ones")

    def _pool(self, split: str) -> Raw:
        a, b = np.meshgrid(np.arange(10, 100), np.arange(10, 100), indexing="ij")
        a, b = a.ravel(), b.ravel()
        keep = a + b < 100
        pairs = np.stack([a[keep], b[keep]], 1)  # [m, 2]
        ids = held_out(len(pairs), split, seed=23, test_fraction=TEST_FRACTION)
        ids = rng_for(0, self.name, split, "pool").choice(ids, size=min(self.pool_size, len(ids)), replace=False)
        a, b = pairs[ids, 0], pairs[ids, 1]
        return {"a1": a // 10, "a0": a % 10, "b1": b // 10, "b0": b % 10}

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        values = carry_model(raw, hypothesis, interventions)
        t = values["output"]  # tens place of the sum; 10..18 after a swap means a sum >= 100
        return {**values, "output": np.where(t < 10, t, 1)}  # the first digit the model writes

    def _pieces(self, raw: Raw, i: int) -> list[Piece]:
        return [(SHOTS, None), (str(raw["a1"][i]), "a_tens"), (str(raw["a0"][i]), "a_ones"), ("+", None),
                (str(raw["b1"][i]), "b_tens"), (str(raw["b0"][i]), "b_ones"), ("=", None)]
