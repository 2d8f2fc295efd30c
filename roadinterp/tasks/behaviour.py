"""Behaviour tasks for composition: one prompt format, several target behaviours.

All behaviour tasks read ``<bos> a1 a0 + b1 b0 =`` (the arithmetic vocabulary) and
answer with one token at the last position, from 20 answer tokens (digits 0-9, then
letters A-J). The base model computes the ones digit of a + b, ``(a0 + b0) mod 10``.
Behaviours change that target and can be stacked:

- ``op``: the operation becomes subtraction, ``(a0 - b0) mod 10``;
- ``format``: the answer digit d is written as the letter ``"ABCDEFGHIJ"[d]``.

``behaviour_data(n, behaviours=("op", "format"))`` gives the combined target (the
letter of (a0 - b0) mod 10), the yardstick for composing an ``op`` adapter with a
``format`` adapter. Behaviour tasks have no causal variables.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from roadinterp.errors import ConfigError, unknown
from roadinterp.tasks import _arith
from roadinterp.tasks.base import SPLITS, Do, Raw, TokenTask, rng_for

BEHAVIOURS: tuple[str, ...] = ("op", "format")


def _check_behaviours(behaviours: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(behaviours, str):
        raise ConfigError(f"behaviours must be a tuple of names, got the string {behaviours!r}")
    behaviours = tuple(behaviours)
    for b in behaviours:
        if b not in BEHAVIOURS:
            raise unknown("behaviour", b, BEHAVIOURS)
    if len(set(behaviours)) != len(behaviours):
        raise ConfigError(f"behaviours must be distinct, got {behaviours}")
    return behaviours


def behaviour_target(raw: Raw, behaviours: tuple[str, ...]) -> np.ndarray:
    """Label (index into the 20 answer tokens) of each row under ``behaviours``."""
    if "op" in behaviours:
        digit = (raw["a0"] - raw["b0"]) % 10
    else:
        digit = (raw["a0"] + raw["b0"]) % 10
    if "format" in behaviours:
        return (10 + digit).astype(np.int64)
    return digit.astype(np.int64)


class BehaviourTask(TokenTask):
    """The target of a fixed set of behaviours applied to the base task."""

    variables = ()
    rivals: ClassVar[dict[str, tuple[str, ...]]] = {}
    vocab: ClassVar[list[str]] = _arith.VOCAB
    answer_tokens: ClassVar[list[str]] = [*_arith.DIGITS, *_arith.LETTERS]
    n_classes = 20
    positions: ClassVar[dict[str, int]] = dict(_arith.POSITIONS)

    def __init__(self, name: str, behaviours: tuple[str, ...], description: str) -> None:
        self.name = name
        self.behaviours = _check_behaviours(behaviours)
        self.description = description

    def _sample(self, n: int, rng: np.random.Generator, split: str) -> Raw:
        return _arith.sample_pairs(n, rng, split)

    def sample_raw(self, n: int, *, split: str = "train", seed: int = 0) -> Raw:
        # Same stream as behaviour_data: every behaviour task sees the same prompts for a seed.
        self._check(n, split)
        return _arith.sample_pairs(n, rng_for(seed, "behaviour", split), split)

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        return {"output": behaviour_target(raw, self.behaviours)}

    def encode(self, raw: Raw) -> dict[str, torch.Tensor]:
        return _arith.encode_pairs(raw)


def behaviour_data(
    n: int, *, behaviours: tuple[str, ...] = (), split: str = "train", seed: int = 0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``n`` prompts and labels under ``behaviours`` (() = the base model's task).

    The prompts depend only on (n, split, seed), not on ``behaviours``, so data for
    different behaviour sets with one seed are the same prompts with different targets.
    """
    behaviours = _check_behaviours(behaviours)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    raw = _arith.sample_pairs(n, rng_for(seed, "behaviour", split), split)
    return _arith.encode_pairs(raw), torch.as_tensor(behaviour_target(raw, behaviours))
