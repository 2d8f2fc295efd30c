"""Interpretability-illusion toys (Makelov, Lange & Nanda 2023), with hand-built models.

The task is trivial on purpose: a bit ``a`` (the variable ``A``) and a distractor bit
``c``; the label is ``A``. Its two zoo models are one-block GPT-2s whose weights are
set by hand (:func:`build_illusion_gpt2`), so nothing is trained and the causal story
is known exactly. Width 8 residual, 8 MLP hidden units; the site of interest is the
MLP hidden layer, ``--component mlp_activation --layers 0``.

* ``illusion-toy`` (``zoo:illusion-toy-gpt2``): ``a`` sits on residual coordinates
  0/1, which the unembedding reads directly (the MLP is not needed). Hidden unit 0
  holds a *causally disconnected* copy of ``a`` (its output weights are zero); hidden
  unit 1 is *dormant* (always 0 on the data) but its output weights write onto ``a``'s
  residual coordinates. Patching a direction mixing units 0 and 1 flips the output
  to the source's ``a``: IIA 1.0 for an alignment the model never uses. Patching the
  whole hidden vector does nothing (unit 1 is 0 in base and source alike).
* ``illusion-toy-faithful`` (``zoo:illusion-toy-faithful-gpt2``): the same hidden
  layer, but ``a`` enters on residual coordinates 4/5, which the unembedding ignores;
  hidden unit 0 reads it and writes it onto coordinates 0/1. The variable really
  flows through the layer: the whole-site patch and the row-space part both work.

The warnings of :mod:`roadinterp.controls` fire on the first and not on the second.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from roadinterp.tasks.base import Do, Raw, Task, do

WIDTH = 8  # residual width; the MLP hidden layer is as wide
GAIN = 4.0  # output weight of the writing units: large enough to dominate the residual copy of a
BIAS = 2.0  # keeps hidden copies in ReLU's linear range (2 + sqrt(2) * (+-1) > 0)


class IllusionToy(Task):
    """Label = A = a; a distractor bit c rides along. ``faithful`` picks where ``a`` enters."""

    kind = "vector"
    n_classes = 2
    positions: ClassVar[dict[str, int]] = {"last": 0}
    variables = ("A",)

    def __init__(self, *, faithful: bool = False) -> None:
        self.faithful = faithful
        self.name = "illusion-toy-faithful" if faithful else "illusion-toy"
        where = "through the MLP hidden layer" if faithful else "on the residual (the MLP copy is an illusion)"
        self.description = f"bit a (variable A) and distractor c; label A; a flows {where}"
        self.rivals = {"distractor": ("C",)}

    def _sample(self, n: int, rng: np.random.Generator, split: str) -> Raw:
        # a finite input space: train and test draw from the same four inputs
        return {"a": rng.integers(0, 2, size=n), "c": rng.integers(0, 2, size=n)}

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        a = do(interventions, "A", raw["a"]).astype(np.int64)
        c = do(interventions, "C", raw["c"]).astype(np.int64)
        # the rival "distractor" claims the label follows c; under its own hypothesis it does
        out = c if hypothesis == "distractor" else a
        return {"A": a, "C": c, "output": out}

    def encode(self, raw: Raw) -> dict[str, torch.Tensor]:
        a = torch.as_tensor(raw["a"] * 2 - 1, dtype=torch.float32)  # +-1
        c = torch.as_tensor(raw["c"] * 2 - 1, dtype=torch.float32)
        x = torch.zeros(len(a), 1, WIDTH)
        i = 4 if self.faithful else 0
        # +-pairs keep every residual vector mean-zero, so GPT-2's LayerNorms only rescale
        x[:, 0, i], x[:, 0, i + 1] = a, -a
        x[:, 0, 2], x[:, 0, 3] = c, -c
        return {"inputs_embeds": x}


def gpt2_config(**kw) -> dict:
    """HF GPT2Config kwargs of the toy models."""
    cfg = {"vocab_size": 2, "n_positions": 1, "n_embd": WIDTH, "n_inner": WIDTH, "n_layer": 1, "n_head": 1,
           "activation_function": "relu", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
           "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}
    cfg.update(kw)
    return cfg


@torch.no_grad()
def build_illusion_gpt2(model, *, faithful: bool) -> None:
    """Set every weight of a one-block GPT-2 (:func:`gpt2_config`) to the toy's construction."""
    for p in model.parameters():
        p.zero_()
    for m in model.modules():  # LayerNorms: identity scale (inputs are mean-zero)
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.fill_(1.0)
    block = model.transformer.h[0]  # attention weights stay 0: it adds nothing
    fc, proj = block.mlp.c_fc, block.mlp.c_proj  # Conv1D: weight [in, out]
    i = 4 if faithful else 0
    fc.weight[i, 0], fc.bias[0] = 1.0, BIAS  # unit 0: a copy of a, 2 + sqrt(2) a
    fc.weight[2, 2], fc.bias[2] = 1.0, BIAS  # unit 2: a copy of the distractor c, never read
    # unit 1 is dormant (weight and bias 0: always 0) but writes onto a's output coordinates
    proj.weight[1, 0], proj.weight[1, 1] = GAIN, -GAIN
    if faithful:  # unit 0 writes (2 + sqrt(2) a - 2) * GAIN onto the output coordinates
        proj.weight[0, 0], proj.weight[0, 1] = GAIN, -GAIN
        proj.bias[0], proj.bias[1] = -GAIN * BIAS, GAIN * BIAS
    head = model.lm_head.weight  # [2, WIDTH]: class 1 = a is +1
    head[1, 0], head[1, 1], head[0, 0], head[0, 1] = 1.0, -1.0, -1.0, 1.0
