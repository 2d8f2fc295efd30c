"""PEDRO's maths and its pyvene intervention: ``h' = l(h) * h``.

PEDRO (prompt-dependent representation modification, Xie et al., 2024): a
*generator* pools the prompt's hidden states into one vector per sample (``last``
token, ``mean`` over tokens, or learned ``attention`` pooling), maps it through a
bottleneck MLP (down, activation, up) to a vector ``l`` and scales a representation
element-wise, ``h' = l * h``. The up-projection starts at weight 0, bias 1, so
``l == 1`` and the model is *exactly* unchanged at init. The vectors are computed
once per prompt (at prefill) and reused at every decoding step, so PEDRO batches
like RoAd: one ``[batch, d]`` vector per sample and target.

This module holds the pure maths (:func:`pool`, :func:`bottleneck_mlp`,
:func:`scale`), the trainable :class:`PedroGenerator` and
:class:`PedroIntervention`, which is sourceless and trainable: pyvene hands it the
site's positions (``[batch, n_positions, d]``); its generator pools them, maps the
pooled vector to ``l: [batch, d]`` and scales every given position by ``l``. With
positions ``"all"`` this is the paper's prompt-dependent scaling of the whole
prompt; with ``"last"`` it pools and scales the last token. pyvene passes no
padding mask: use unpadded or left-padded batches with ``last`` pooling. The
adapter that holds generators per site or per decoder block, and the Linear
placement, live in :mod:`roadinterp.adapters.pedro`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from roadinterp._pyvene import pv
from roadinterp.errors import ConfigError, ShapeError

Pooling = Literal["last", "mean", "attention"]
Activation = Literal["relu", "gelu", "tanh"]
POOLINGS: tuple[str, ...] = ("last", "mean", "attention")
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "tanh")


# ---------------------------------------------------------------------- config
@dataclass
class PedroConfig:
    """Shape of a PEDRO generator. Saved beside the weights as JSON."""

    dim: int  # width of the pooled hidden state (the model's hidden size for placement "linear")
    bottleneck: int = 8  # width of the generator's hidden layer (r in the paper)
    pooling: Pooling = "last"  # "last" token | "mean" over tokens | learned "attention" pooling
    activation: str = "relu"  # generator non-linearity: "relu" | "gelu" | "tanh"
    init_std: float | None = None  # std of the down-projection init; None = 1/sqrt(dim)

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"dim must be a positive int, got {self.dim!r}")
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ConfigError(f"bottleneck must be an int >= 1, got {self.bottleneck!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}")
        if self.init_std is not None and not (isinstance(self.init_std, (int, float)) and self.init_std >= 0):
            raise ConfigError(f"init_std must be a non-negative number or None, got {self.init_std!r}")

    def n_params(self, out_dim: int) -> int:
        """Trainable parameters of one generator producing ``out_dim`` scales."""
        n = self.dim * self.bottleneck + self.bottleneck + self.bottleneck * out_dim + out_dim
        return n + (self.dim if self.pooling == "attention" else 0)


# ------------------------------------------------------------------------ maths
def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row of a ``[batch, seq]`` 0/1 mask (left or right padding)."""
    seq = mask.shape[1]
    flipped = mask.flip(1).to(torch.long)  # first 1 of the flipped mask = last real token
    return seq - 1 - flipped.argmax(dim=1)  # [batch]


def pool(h: torch.Tensor, pooling: str, mask: torch.Tensor | None = None, attn: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``h: [batch, seq, d]`` over tokens into ``[batch, d]``.

    ``mask``: ``[batch, seq]`` (1 = real token) or None (every token is real).
    ``attn``: attention-pooling query, ``[d]`` or one per sample ``[batch, d]``;
    scores are ``h . attn / sqrt(d)`` with a masked softmax (zero query = mean pooling).
    """
    if pooling == "last":
        if mask is None:
            return h[:, -1]
        idx = last_index(mask)
        return h[torch.arange(h.shape[0], device=h.device), idx]
    m = None if mask is None else mask.to(h.dtype).unsqueeze(-1)  # [batch, seq, 1]
    if pooling == "mean":
        if m is None:
            return h.mean(dim=1)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    if pooling == "attention":
        if attn is None:
            raise ConfigError("attention pooling needs a query vector (attn)")
        q = attn if attn.dim() == 2 else attn.unsqueeze(0).expand(h.shape[0], -1)  # [batch, d]
        scores = torch.einsum("btd,bd->bt", h, q) / math.sqrt(h.shape[-1])  # [batch, seq]
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
        w = scores.softmax(dim=1).unsqueeze(-1)  # [batch, seq, 1]
        return (w * h).sum(1)
    raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(x)
    if activation == "gelu":
        return nn.functional.gelu(x)
    if activation == "tanh":
        return torch.tanh(x)
    raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")


def bottleneck_mlp(
    pooled: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor, b_up: torch.Tensor,
    activation: str,
) -> torch.Tensor:
    """``l = act(p W_down + b_down) W_up + b_up``.

    ``pooled: [batch, d]``. Weights are shared (``w_down: [d, r]``, ``b_down: [r]``,
    ``w_up: [r, o]``, ``b_up: [o]``) or gathered per sample (an extra leading batch
    dimension), in which case this is one batched matmul. Returns ``[batch, o]``.
    """
    if w_down.dim() == 2:
        hidden = activate(pooled @ w_down + b_down, activation)  # [batch, r]
        return hidden @ w_up + b_up  # [batch, o]
    hidden = torch.bmm(pooled.unsqueeze(1), w_down).squeeze(1) + b_down  # [batch, r]
    hidden = activate(hidden, activation)
    return torch.bmm(hidden.unsqueeze(1), w_up).squeeze(1) + b_up  # [batch, o]


def scale(h: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``h * l`` with one vector per sample: ``h: [batch, ..., o]``, ``vectors: [batch, o]``.

    Computed in fp32 and cast back to ``h``'s dtype; with ``l == 1`` the result equals
    ``h`` bit for bit.
    """
    view = (h.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
    return (h.to(vectors.dtype) * vectors.reshape(view)).to(h.dtype)


# ------------------------------------------------------------------- generator
class PedroGenerator(nn.Module):
    """Trainable generator: pooled hidden state -> ``[batch, out_dim]`` scales (fp32)."""

    def __init__(self, config: PedroConfig, out_dim: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
            raise ConfigError(f"out_dim must be a positive int, got {out_dim!r}")
        self.config, self.out_dim = config, out_dim
        d, r = config.dim, config.bottleneck
        std = 1.0 / math.sqrt(d) if config.init_std is None else float(config.init_std)
        self.w_down = nn.Parameter(torch.randn(d, r, generator=generator) * std)  # [d, r]
        self.b_down = nn.Parameter(torch.zeros(r))  # [r]
        self.w_up = nn.Parameter(torch.zeros(r, out_dim))  # [r, o]  zero: l == 1 at init
        self.b_up = nn.Parameter(torch.ones(out_dim))  # [o]
        # zero query: attention pooling starts as mean pooling
        self.attn = nn.Parameter(torch.zeros(d)) if config.pooling == "attention" else None  # [d]
        self.calls = 0  # how many times the generator ran (tests check once per prompt)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``h: [batch, seq, d]`` (or ``[batch, d]``) -> ``l: [batch, out_dim]`` fp32."""
        if h.shape[-1] != self.config.dim:
            raise ShapeError(f"PEDRO generator pools width {self.config.dim} but got width {h.shape[-1]}")
        self.calls += 1
        x = h.float()
        if x.dim() == 2:
            x = x.unsqueeze(1)
        pooled = pool(x, self.config.pooling, mask, self.attn)
        return bottleneck_mlp(pooled, self.w_down, self.b_down, self.w_up, self.b_up, self.config.activation)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"w_down": self.w_down, "b_down": self.b_down, "w_up": self.w_up, "b_up": self.b_up}
        if self.attn is not None:
            out["attn"] = self.attn
        return out

    def extra_repr(self) -> str:
        c = self.config
        return f"dim={c.dim}, bottleneck={c.bottleneck}, out={self.out_dim}, pooling={c.pooling}, act={c.activation}"


# ---------------------------------------------------------------- intervention
class PedroIntervention(pv.SourcelessIntervention, pv.TrainableIntervention, pv.DistributedRepresentationIntervention):
    """Sourceless, trainable PEDRO scaling of a site.

    Pass a :class:`PedroConfig` (``config=``), its fields as
    keywords (``bottleneck=8, pooling="last", activation="relu"``), or an existing
    ``generator`` (to share weights with a :class:`~roadinterp.adapters.pedro.PedroAdapter`).
    """

    def __init__(
        self, embed_dim: int, *, config: PedroConfig | None = None, bottleneck: int = 8, pooling: str = "last",
        activation: str = "relu", seed: int | None = None, generator: PedroGenerator | None = None, **kwargs,
    ) -> None:
        super().__init__(embed_dim=embed_dim, **kwargs)
        self.keep_last_dim = True  # pyvene hands us [batch, n_positions, d], not [batch, n_positions * d]
        if generator is not None:
            if generator.config.dim != embed_dim or generator.out_dim != embed_dim:
                raise ConfigError(
                    f"generator pools width {generator.config.dim} and scales width {generator.out_dim}, "
                    f"but the site is {embed_dim} wide"
                )
            self.generator = generator
            return
        if config is None:
            config = PedroConfig(embed_dim, bottleneck, pooling, activation)
        elif config.dim != embed_dim:
            raise ConfigError(f"PedroConfig.dim is {config.dim} but the site is {embed_dim} wide")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.generator = PedroGenerator(config, embed_dim, generator=gen)

    @property
    def config(self) -> PedroConfig:
        return self.generator.config

    def forward(self, base, source=None, subspaces=None, **kwargs):
        d = self.generator.config.dim
        if base.shape[-1] % d:
            raise ShapeError(f"PedroIntervention is {d} wide but the site is {base.shape[-1]} wide")
        h = base if base.dim() == 3 else base.reshape(base.shape[0], -1, d)  # [batch, n_positions, d]
        vectors = self.generator(h)  # [batch, d] fp32
        return scale(h, vectors).reshape(base.shape)

    def __str__(self) -> str:
        return f"PedroIntervention({self.generator.extra_repr()})"
