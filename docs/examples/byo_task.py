"""Bring your own task and model: a complete example (see docs/byo.md).

A task is a small causal model plus the data it generates. This one compares two pairs of
digits: the prompt is ``<bos> a b c d =`` and the answer is "yes" when (a > b) == (c > d).
Its causal story has two boolean variables, ``left`` = a > b and ``right`` = c > d; a rival
story says the model only tracks the digit ``a``. Train and test hold disjoint (a, b)
pairs, so held-out IIA is held out.

The file also registers a tiny GPT-2 for the task in the model zoo: ``roadinterp`` trains
it on first use (about half a minute on one CPU core) and caches it. Run an alignment
search on it with

    roadinterp align --task docs/examples/byo_task.py:TASK --layers 0,1 --family butterfly,das --size 2

``--task FILE.py:NAME`` imports this file (in every worker process too) and uses the
object called NAME: a Task instance, or a Task subclass built with no arguments.
"""

from typing import ClassVar

import numpy as np
import torch

from roadinterp.tasks import TokenTask, register_task
from roadinterp.tasks.base import do
from roadinterp.zoo import ZooEntry, register_zoo_model

DIGITS = [str(d) for d in range(10)]
PAIRS = np.random.default_rng(0).permutation(100)  # pair id = 10 * a + b
TEST_PAIRS, TRAIN_PAIRS = PAIRS[:20], PAIRS[20:]


class ComparePairs(TokenTask):
    name = "compare-pairs"
    description = "(a > b) == (c > d) for digits a, b, c, d; variables left, right (rival: a)"
    variables = ("left", "right")
    rivals: ClassVar[dict[str, tuple[str, ...]]] = {"a": ("a",)}
    vocab: ClassVar[list[str]] = ["<bos>", "=", "no", "yes", *DIGITS]
    answer_tokens: ClassVar[list[str]] = ["no", "yes"]
    n_classes = 2
    positions: ClassVar[dict[str, int]] = {"a": 1, "b": 2, "c": 3, "d": 4, "last": 5}

    def _sample(self, n, rng, split):
        """``n`` raw inputs of ``split``: integer arrays, one per input of the causal model."""
        pairs = rng.choice(TEST_PAIRS if split == "test" else TRAIN_PAIRS, size=(n, 2))
        return {"a": pairs[:, 0] // 10, "b": pairs[:, 0] % 10, "c": pairs[:, 1] // 10, "d": pairs[:, 1] % 10}

    def _evaluate(self, raw, hypothesis, interventions):
        """Every variable and the output; ``do`` applies a swap where it is asked for."""
        if hypothesis == "a":
            a = do(interventions, "a", raw["a"])
            return {"a": a, "output": ((a > raw["b"]) == (raw["c"] > raw["d"])).astype(np.int64)}
        left = do(interventions, "left", raw["a"] > raw["b"]).astype(bool)
        right = do(interventions, "right", raw["c"] > raw["d"]).astype(bool)
        return {"left": left, "right": right, "output": (left == right).astype(np.int64)}

    def encode(self, raw):
        """Raw inputs -> model kwargs: ``<bos> a b c d =`` as token ids."""
        n, zero = len(raw["a"]), self.token_id["0"]
        ids = np.stack([np.zeros(n, dtype=np.int64), zero + raw["a"], zero + raw["b"], zero + raw["c"],
                        zero + raw["d"], np.ones(n, dtype=np.int64)], axis=1)
        return {"input_ids": torch.as_tensor(ids)}


TASK = ComparePairs()
register_task(TASK, overwrite=True)  # by name too: the zoo entry below refers to it

register_zoo_model(ZooEntry(
    name="compare-pairs-gpt2", task=TASK.name, arch="gpt2",
    config={"vocab_size": len(TASK.vocab), "n_positions": 8, "n_embd": 32, "n_layer": 2, "n_head": 4,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 0, "eos_token_id": 0},
    steps=600, batch_size=128, lr=3e-3, train_size=8000, eval_size=1000,
    description="2-layer GPT-2 (d=32) for the bring-your-own-task example",
), overwrite=True)
