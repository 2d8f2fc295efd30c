"""PEDRO: prompt-dependent representation modification (Xie et al., 2024).

A *generator* pools the prompt's hidden states into one vector per sample
(``last`` token, ``mean`` over tokens, or learned ``attention`` pooling), maps it
through a bottleneck MLP (down, activation, up) to a vector ``l`` and scales a
representation element-wise, ``h' = l * h``. The up-projection starts at weight 0,
bias 1, so ``l == 1`` and the model is *exactly* unchanged at init. The vectors are
computed once per prompt (at prefill) and reused at every decoding step, so
PEDRO batches like RoAd: one ``[batch, d]`` vector per sample and target.

Two placements:

- ``site`` (pyvene): :class:`roadinterp.interventions.pedro.PedroIntervention`
  pools the positions of its site and scales them.
- ``linear`` (PEFT-style, the paper's): :func:`apply_pedro` gives decoder block
  ``i`` one generator that pools the block's *input* hidden states (captured by a
  forward pre-hook during prefill) and scales the outputs of the targeted Linear
  (or GPT-2 ``Conv1D``) modules of that block, by default query, value and FFN-up.

Several :class:`PedroAdapter` objects can be served in one batch, each sample
choosing its own (or none): the wrapped modules implement the serving protocol
(``set_adapter_ids`` / ``reset_cache``), and the generator weights are stacked
into banks and evaluated with one batched matmul per block, no loop over adapters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from roadinterp import io
from roadinterp.errors import ConfigError, FileFormatError, ShapeError

Pooling = Literal["last", "mean", "attention"]
Activation = Literal["relu", "gelu", "tanh"]
POOLINGS: tuple[str, ...] = ("last", "mean", "attention")
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "tanh")
PLACEMENTS: tuple[str, ...] = ("site", "linear")
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "v_proj", "up_proj")


# ---------------------------------------------------------------------- config
@dataclass
class PedroConfig:
    """Shape of a PEDRO generator. Saved beside the weights as JSON."""

    dim: int  # width of the pooled hidden state (the model's hidden size for placement "linear")
    bottleneck: int = 8  # width of the generator's hidden layer (r in the paper)
    pooling: str = "last"  # "last" token | "mean" over tokens | learned "attention" pooling
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


# ----------------------------------------------------------------------- layout
@dataclass(frozen=True)
class PedroTarget:
    """One scaled representation: columns ``[start, end)`` of a module's output.

    ``name`` is what the user asked for (``"q_proj"``); ``module`` the module path
    (``"transformer.h.0.attn.c_attn"``; for placement "site" the site key).
    """

    name: str
    module: str
    start: int
    end: int

    @property
    def width(self) -> int:
        return self.end - self.start


# Logical target names -> (module path inside a block, part, n_parts) for architectures
# whose projections are fused. GPT-2's c_attn is one Conv1D producing [q | k | v].
_ALIASES: dict[str, dict[str, tuple[str, int, int]]] = {
    "gpt2": {
        "q_proj": ("attn.c_attn", 0, 3), "k_proj": ("attn.c_attn", 1, 3), "v_proj": ("attn.c_attn", 2, 3),
        "o_proj": ("attn.c_proj", 0, 1), "up_proj": ("mlp.c_fc", 0, 1), "down_proj": ("mlp.c_proj", 0, 1),
    },
}


def register_target_aliases(model_type: str, aliases: Mapping[str, tuple[str, int, int]], *, overwrite: bool = False) -> None:
    """Map logical target names to (module path inside a block, part, n_parts) for ``model_type``."""
    if model_type in _ALIASES and not overwrite:
        raise ConfigError(f"target aliases for {model_type!r} exist; pass overwrite=True to replace them")
    _ALIASES[model_type] = dict(aliases)


def _is_projection(m: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(m, (nn.Linear, Conv1D))


def _out_features(m: nn.Module) -> int:
    return int(m.out_features if isinstance(m, nn.Linear) else m.nf)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Path and ModuleList of the decoder blocks (the ModuleList with n_layers entries)."""
    from roadinterp.sites import n_layers

    n = n_layers(model)
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n:
            return name, m
    raise ConfigError(f"cannot find the {n} decoder blocks of {type(model).__name__} (no ModuleList of that length)")


def _parent(root: nn.Module, path: str) -> nn.Module:
    parent = path.rpartition(".")[0]
    return root.get_submodule(parent) if parent else root


def _unwrap(m: nn.Module) -> nn.Module:
    return m.base if isinstance(m, PedroLinear) else m


def resolve_targets(model: nn.Module, target_modules: Sequence[str] | None = None) -> dict[str, list[PedroTarget]]:
    """Block path -> targets in that block, for logical names or module-name suffixes.

    A name matches an architecture alias (GPT-2: ``q_proj`` is the first third of
    ``attn.c_attn``) or every Linear/Conv1D whose path inside the block equals it or
    ends with ``.name``. A name that matches nothing in a block is a ConfigError.
    """
    if isinstance(target_modules, str):
        raise ConfigError(f"target_modules must be a sequence of names, got the string {target_modules!r}")
    names = tuple(DEFAULT_TARGETS if target_modules is None else target_modules)
    if not names:
        raise ConfigError("target_modules is empty; name at least one module (e.g. q_proj)")
    aliases = _ALIASES.get(getattr(model.config, "model_type", ""), {})
    prefix, blocks = find_blocks(model)
    layout: dict[str, list[PedroTarget]] = {}
    for i, block in enumerate(blocks):
        bpath = f"{prefix}.{i}"
        projections = {
            n: _unwrap(m) for n, m in block.named_modules()
            if n and _is_projection(_unwrap(m)) and not isinstance(_parent(block, n), PedroLinear)
        }
        targets: list[PedroTarget] = []
        for name in names:
            if name in aliases:
                rel, part, n_parts = aliases[name]
                if rel not in projections:
                    raise ConfigError(f"target module {name!r} maps to {bpath}.{rel}, which is not a Linear/Conv1D")
                width = _out_features(projections[rel]) // n_parts
                targets.append(PedroTarget(name, f"{bpath}.{rel}", part * width, (part + 1) * width))
                continue
            hits = [rel for rel in projections if rel == name or rel.endswith("." + name)]
            if not hits:
                known = sorted({*projections, *aliases})
                raise ConfigError(
                    f"target module {name!r} does not exist in block {bpath} of {type(model).__name__}; "
                    f"Linear/Conv1D modules there: {', '.join(known)}"
                )
            for rel in hits:
                targets.append(PedroTarget(name, f"{bpath}.{rel}", 0, _out_features(projections[rel])))
        seen = set()
        for t in targets:
            key = (t.module, t.start, t.end)
            if key in seen:
                raise ConfigError(f"target {t.name!r} scales {t.module}[{t.start}:{t.end}] twice; list it once")
            seen.add(key)
        layout[bpath] = targets
    return layout


def _safe(key: str) -> str:
    return key.replace(".", "__").replace(":", "--").replace("@", "_at_").replace(",", "_")


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    for attr in ("hidden_size", "n_embd", "d_model"):
        if getattr(cfg, attr, None) is not None:
            return int(getattr(cfg, attr))
    raise ConfigError(f"cannot tell the hidden size of {type(model).__name__}")


# ---------------------------------------------------------------------- adapter
@io.register_kind
class PedroAdapter(nn.Module):
    """PEDRO generators on named keys: the unit you train, save and serve.

    ``layout`` maps a key to the targets its generator scales. Placement
    ``"linear"``: key = decoder block path, targets = Linear output slices (build it
    with :meth:`for_model`). Placement ``"site"``: key = ``Site.key()``, one target of
    the site's width (build it with :meth:`for_sites`).
    """

    KIND = "pedro_adapter"

    def __init__(
        self, config: PedroConfig, layout: Mapping[str, Sequence[PedroTarget]], *, placement: str = "linear",
        seed: int | None = None, meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")
        if not layout:
            raise ConfigError("a PEDRO adapter needs at least one generator (an empty layout was given)")
        self.config, self.placement, self.meta = config, placement, dict(meta or {})
        self.layout = {k: [PedroTarget(*t) if not isinstance(t, PedroTarget) else t for t in v] for k, v in layout.items()}
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.generators = nn.ModuleDict()
        for key, targets in self.layout.items():
            if not targets:
                raise ConfigError(f"generator {key!r} has no targets")
            for t in targets:
                if not 0 <= t.start < t.end:
                    raise ConfigError(f"target {t.name!r} of {key!r} has an empty or negative slice [{t.start}:{t.end}]")
            self.generators[_safe(key)] = PedroGenerator(config, sum(t.width for t in targets), generator=gen)

    @classmethod
    def for_model(
        cls, model: nn.Module, config: PedroConfig, *, target_modules: Sequence[str] | None = None,
        seed: int | None = None, meta: Mapping[str, Any] | None = None,
    ) -> "PedroAdapter":
        """One generator per decoder block of ``model`` scaling ``target_modules`` (identity at init)."""
        d = hidden_size(model)
        if config.dim != d:
            raise ConfigError(f"PedroConfig.dim is {config.dim} but {type(model).__name__} has hidden size {d}")
        return cls(config, resolve_targets(model, target_modules), placement="linear", seed=seed, meta=meta)

    @classmethod
    def for_sites(
        cls, sites: Mapping[str, int], config: PedroConfig, *, seed: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> "PedroAdapter":
        """Site placement: ``sites`` maps ``Site.key()`` -> width (must equal ``config.dim``)."""
        for key, width in sites.items():
            if width != config.dim:
                raise ConfigError(f"site {key!r} is {width} wide but PedroConfig.dim is {config.dim}")
        layout = {k: [PedroTarget("site", k, 0, w)] for k, w in sites.items()}
        return cls(config, layout, placement="site", seed=seed, meta=meta)

    def generator(self, key: str) -> PedroGenerator:
        if key not in self.layout:
            raise ConfigError(f"adapter has no generator {key!r}; keys: {', '.join(self.layout)}")
        return self.generators[_safe(key)]

    def items(self) -> list[tuple[str, PedroGenerator]]:
        return [(k, self.generator(k)) for k in self.layout]

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def interventions(self) -> dict[str, Any]:
        """Site placement: ``Site.key()`` -> PedroIntervention sharing this adapter's generator."""
        if self.placement != "site":
            raise ConfigError("interventions() is for placement 'site'; use apply_pedro() for placement 'linear'")
        from roadinterp.interventions.pedro import PedroIntervention

        return {k: PedroIntervention(self.config.dim, generator=g) for k, g in self.items()}

    # ---------------------------------------------------------------- io
    def to_state(self):
        config = {
            "pedro": asdict(self.config), "placement": self.placement, "meta": self.meta,
            "layout": {k: [asdict(t) for t in ts] for k, ts in self.layout.items()},
        }
        tensors = {f"{k}.{n}": t.detach() for k, g in self.items() for n, t in g.tensors().items()}
        return config, tensors

    @classmethod
    def from_state(cls, config, tensors):
        where = "pedro_adapter config"
        pc = io.expect(config, "pedro", dict, where)
        layout_raw = io.expect(config, "layout", dict, where)
        layout = {}
        for key, ts in layout_raw.items():
            if not isinstance(ts, list):
                raise FileFormatError(f"{where}: layout[{key!r}] must be a list of targets, got {ts!r}")
            layout[key] = [
                PedroTarget(
                    io.expect(t, "name", str, where), io.expect(t, "module", str, where),
                    io.expect(t, "start", int, where), io.expect(t, "end", int, where),
                ) if isinstance(t, dict) else _bad(where, t)
                for t in ts
            ]
        new = cls(
            PedroConfig(**pc), layout, placement=io.expect(config, "placement", str, where),
            meta=config.get("meta") or {},
        )
        for key, g in new.items():
            for name, p in g.tensors().items():
                t = tensors.get(f"{key}.{name}")
                if t is None:
                    raise FileFormatError(f"weights have no tensor {key}.{name}")
                if tuple(t.shape) != tuple(p.shape):
                    raise ShapeError(f"{key}.{name} has shape {tuple(t.shape)} but the config needs {tuple(p.shape)}")
                with torch.no_grad():
                    p.copy_(t)
        return new

    def extra_repr(self) -> str:
        c = self.config
        return (f"placement={self.placement}, generators={len(self.layout)}, bottleneck={c.bottleneck}, "
                f"pooling={c.pooling}, activation={c.activation}")


def _bad(where: str, t: Any):
    raise FileFormatError(f"{where}: a target must be an object with name/module/start/end, got {t!r}")


# --------------------------------------------------------- linear placement runtime
class _Runtime:
    """State shared by every wrapper of one :func:`apply_pedro` call."""

    def __init__(self, adapters: list[PedroAdapter]) -> None:
        self.adapters = adapters
        self.ids: torch.Tensor | None = None  # [batch] per-sample adapter (-1 = none); None: use `active`
        self.active: int | None = None  # adapter every sample uses when no ids are set (None = off)
        self.in_call = False  # inside a top-level forward (so prefill/decode is known)
        self.prefill = True
        self.mask: torch.Tensor | None = None  # [batch, seq] padding mask captured at prefill
        self.vectors: dict[str, torch.Tensor | None] = {}  # block path -> [batch, out] fp32 (None: no scaling)
        self.ready: set[str] = set()
        self._banks: dict[str, tuple[tuple, dict[str, torch.Tensor]]] = {}
        self.evaluations = 0  # generator evaluations (one per block per prefill, whatever the bank size)

    def reset_cache(self) -> None:
        self.vectors = {k: None for k in self.vectors}
        self.ready: set[str] = set()  # blocks whose vectors were computed for the current prompt
        self.mask = None

    def set_active(self, active: int | None) -> None:
        n = len(self.adapters)
        if active is not None and (isinstance(active, bool) or not isinstance(active, int) or not -1 <= active < n):
            raise ConfigError(f"active adapter must be None or an int in -1..{n - 1} (-1 = none), got {active!r}")
        self.active = None if active == -1 else active
        self.reset_cache()

    def set_adapter_ids(self, ids) -> None:
        n = len(self.adapters)
        if ids is None:
            self.ids = None
        else:
            t = torch.as_tensor(ids).long()
            if t.dim() != 1:
                raise ShapeError(f"adapter_ids must be a 1-D list of ints, got shape {tuple(t.shape)}")
            if t.numel() and (t.min() < -1 or t.max() >= n):
                raise ConfigError(f"adapter_ids must be in -1..{n - 1} (-1 = no adapter), got {t.tolist()}")
            self.ids = t
        self.reset_cache()

    def bank(self, key: str) -> dict[str, torch.Tensor]:
        """Stacked generator weights ``[n_adapters, ...]`` of block ``key`` (rebuilt after training steps)."""
        gens = [a.generator(key) for a in self.adapters]
        params = [p for g in gens for p in g.tensors().values()]
        stamp = tuple((id(p), p._version) for p in params)
        cached = self._banks.get(key)
        if cached is not None and cached[0] == stamp and not torch.is_grad_enabled():
            return cached[1]
        bank = {n: torch.stack([g.tensors()[n] for g in gens]) for n in gens[0].tensors()}
        if not torch.is_grad_enabled():
            self._banks[key] = (stamp, bank)
        return bank

    def compute(self, key: str, h: torch.Tensor) -> torch.Tensor | None:
        """Scale vectors ``[batch, out]`` for block ``key`` from its input ``h: [batch, seq, d]``."""
        ids, batch = self.ids, h.shape[0]
        mask = self.mask if self.mask is not None and self.mask.shape == h.shape[:2] else None
        if ids is None:
            if self.active is None:
                return None
            self.evaluations += 1
            return self.adapters[self.active].generator(key)(h, mask)
        ids = ids.to(h.device)
        if ids.shape[0] != batch:
            raise ShapeError(f"adapter_ids has {ids.shape[0]} entries but the batch has {batch} samples")
        if bool((ids < 0).all()):
            return None
        cfg = self.adapters[0].config
        bank = self.bank(key)
        idx = ids.clamp_min(0)
        self.evaluations += 1
        pooled = pool(h.float(), cfg.pooling, mask, bank["attn"][idx] if "attn" in bank else None)
        l = bottleneck_mlp(pooled, bank["w_down"][idx], bank["b_down"][idx], bank["w_up"][idx], bank["b_up"][idx],
                           cfg.activation)  # [batch, out]
        return torch.where((ids >= 0).unsqueeze(1), l, torch.ones_like(l))


class PedroLinear(nn.Module):
    """A Linear/Conv1D whose output columns are scaled by its block's PEDRO vectors.

    Implements the serving protocol (``set_adapter_ids`` / ``reset_cache``); every
    wrapper of one :func:`apply_pedro` call shares one runtime, so calling them all
    is idempotent.
    """

    def __init__(self, base: nn.Module, runtime: _Runtime, block: str, segments: list[tuple[int, int, int, int]]):
        super().__init__()
        self.base = base
        self._runtime, self._block = runtime, block
        self.segments = sorted(segments)  # (out_start, out_end, vec_start, vec_end)
        self.out_features = _out_features(base)

    def set_adapter_ids(self, ids: torch.Tensor | None) -> None:
        self._runtime.set_adapter_ids(ids)

    def reset_cache(self) -> None:
        self._runtime.reset_cache()

    def _full_vector(self, vec: torch.Tensor) -> torch.Tensor:
        pieces, at = [], 0
        ones = vec.new_ones(vec.shape[0], self.out_features)
        for s, e, vs, ve in self.segments:
            if s > at:
                pieces.append(ones[:, at:s])
            pieces.append(vec[:, vs:ve])
            at = e
        if at < self.out_features:
            pieces.append(ones[:, at:])
        return torch.cat(pieces, dim=1)  # [batch, out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        vec = self._runtime.vectors.get(self._block)
        if vec is None:
            return out
        if vec.shape[0] != out.shape[0]:
            raise ShapeError(f"PEDRO vectors were computed for a batch of {vec.shape[0]}, got {out.shape[0]}")
        return scale(out, self._full_vector(vec))

    def extra_repr(self) -> str:
        return f"block={self._block}, segments={self.segments}"


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _is_decode(args, kwargs) -> bool:
    """True when the model is handed a non-empty KV cache (a decoding step, not prefill).

    transformers up to 5.23 passes the cache as ``past_key_values`` (a ``Cache`` or, in
    older versions, a tuple of tensors); 5.24 passes it as ``cache``.
    """
    pkv = kwargs.get("past_key_values")
    if pkv is not None:
        get_len = getattr(pkv, "get_seq_length", None)
        return bool(get_len() > 0) if callable(get_len) else True
    cache = kwargs.get("cache")
    get_len = getattr(cache, "get_seq_length", None)  # only a Cache object counts under the generic name
    return bool(get_len() > 0) if callable(get_len) else False


class PedroHandle:
    """What :func:`apply_pedro` returns: the adapters it serves and how to undo it.

    Use as a context manager (``with apply_pedro(...) as h:``) or call :meth:`remove`.
    Routing, as for :class:`~roadinterp.linear.RoadLinear`: ``set_adapter_ids(ids)``
    with a ``[batch]`` tensor picks one adapter per sample (-1 = none); ``None`` ends
    per-sample routing and every sample uses the *active* adapter
    (:meth:`set_active`; ``None`` = PEDRO off).
    """

    def __init__(self, model: nn.Module, adapters: list[PedroAdapter], runtime: _Runtime, originals: dict[str, nn.Module], hooks):
        self.model, self.adapters, self._runtime = model, adapters, runtime
        self._originals, self._hooks = originals, hooks

    def set_adapter_ids(self, ids) -> None:
        self._runtime.set_adapter_ids(ids)

    def set_active(self, active: int | None) -> None:
        """Adapter used by every sample when no per-sample ids are set (None or -1 = off)."""
        self._runtime.set_active(active)

    @property
    def active(self) -> int | None:
        return self._runtime.active

    def reset_cache(self) -> None:
        self._runtime.reset_cache()

    def parameters(self):
        return [p for a in self.adapters for p in a.parameters()]

    @property
    def generator_calls(self) -> int:
        """Generator evaluations so far: one per block per prefill (a mixed batch counts once)."""
        return self._runtime.evaluations

    def remove(self) -> None:
        """Put the original modules back and remove the hooks this call added."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for path, m in self._originals.items():
            _set_module(self.model, path, m)
        self._originals = {}

    def __enter__(self) -> "PedroHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_pedro(
    model: nn.Module, adapters: PedroConfig | PedroAdapter | Sequence[PedroAdapter], *,
    target_modules: Sequence[str] | None = None, seed: int | None = None, active: int | None | str = "auto",
) -> PedroHandle:
    """Put PEDRO on the Linear outputs of ``model`` (in place; undo with ``handle.remove()``).

    ``adapters``: a :class:`PedroConfig` (a fresh identity-init adapter for
    ``target_modules``, default ``("q_proj", "v_proj", "up_proj")``; on GPT-2 these map
    to the query and value thirds of ``attn.c_attn`` and to ``mlp.c_fc``), one
    :class:`PedroAdapter`, or several adapters with the same layout to serve in mixed
    batches. Generator ``i`` pools the input of decoder block ``i`` at prefill (a
    forward with no or an empty KV cache); decoding steps reuse its vectors.
    ``active``: the adapter every sample uses when no per-sample ids are set; by
    default adapter 0 for a single config/adapter (ready to train) and none for a list.
    """
    single = isinstance(adapters, (PedroConfig, PedroAdapter))
    if isinstance(adapters, PedroConfig):
        adapters = [PedroAdapter.for_model(model, adapters, target_modules=target_modules, seed=seed)]
    elif isinstance(adapters, PedroAdapter):
        adapters = [adapters]
    else:
        adapters = list(adapters)
    if not adapters or not all(isinstance(a, PedroAdapter) for a in adapters):
        raise ConfigError("apply_pedro needs a PedroConfig, a PedroAdapter or a non-empty list of PedroAdapters")
    first = adapters[0]
    for i, a in enumerate(adapters):
        if a.placement != "linear":
            raise ConfigError(f"adapter {i} has placement {a.placement!r}; apply_pedro needs placement 'linear'")
        if a.layout != first.layout:
            raise ConfigError(f"adapter {i} targets other modules than adapter 0; a bank needs one layout")
        c, c0 = a.config, first.config
        if (c.dim, c.bottleneck, c.pooling, c.activation) != (c0.dim, c0.bottleneck, c0.pooling, c0.activation):
            raise ConfigError(f"adapter {i} has config {c} but adapter 0 has {c0}; a bank needs one shape")
    expected = resolve_targets(model, sorted({t.name for ts in first.layout.values() for t in ts}))
    for key, targets in first.layout.items():
        if key not in expected:
            raise ConfigError(f"adapter block {key!r} does not exist on {type(model).__name__}")
        for t in targets:
            if t not in expected[key]:
                raise ConfigError(f"adapter target {t} does not fit {type(model).__name__} (another model or width?)")
    if any(isinstance(m, PedroLinear) for m in model.modules()):
        raise ConfigError("this model already has PEDRO applied; remove() the first handle before applying again")

    runtime = _Runtime(adapters)
    runtime.set_active((0 if single else None) if active == "auto" else active)
    originals: dict[str, nn.Module] = {}
    hooks = []
    segments: dict[str, list[tuple[int, int, int, int]]] = {}
    owner: dict[str, str] = {}
    for key, targets in first.layout.items():
        runtime.vectors[key] = None
        at = 0
        for t in targets:
            segments.setdefault(t.module, []).append((t.start, t.end, at, at + t.width))
            owner[t.module] = key
            at += t.width
    for path, segs in segments.items():
        base = model.get_submodule(path)
        originals[path] = base
        _set_module(model, path, PedroLinear(base, runtime, owner[path], segs))

    def top_pre(module, args, kwargs):
        runtime.in_call = True
        runtime.prefill = not _is_decode(args, kwargs)
        if runtime.prefill:
            runtime.reset_cache()
            m = kwargs.get("attention_mask")
            runtime.mask = m if isinstance(m, torch.Tensor) and m.dim() == 2 else None

    def top_post(module, args, kwargs, output):
        runtime.in_call = False

    hooks.append(model.register_forward_pre_hook(top_pre, with_kwargs=True))
    hooks.append(model.register_forward_hook(top_post, with_kwargs=True))

    def block_hook(key):
        def pre(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(h, torch.Tensor):
                return
            if runtime.in_call and not runtime.prefill:
                if key not in runtime.ready:
                    raise ConfigError(
                        "PEDRO vectors are computed at prefill; the cache was reset before a decoding step. "
                        "Call reset_cache()/set_adapter_ids() only before a new forward()/generate()"
                    )
                return
            runtime.vectors[key] = runtime.compute(key, h)
            runtime.ready.add(key)

        return pre

    for key in first.layout:
        hooks.append(model.get_submodule(key).register_forward_pre_hook(block_hook(key), with_kwargs=True))
    return PedroHandle(model, adapters, runtime, originals, hooks)
