"""PEDRO on Linear outputs (the paper's placement), served in mixed batches.

:func:`apply_pedro` gives decoder block ``i`` the generator of key ``i`` of each
:class:`~roadinterp.adapters.pedro.PedroAdapter`: a forward pre-hook on the block
pools its *input* hidden states during prefill (a forward with no or an empty KV
cache), and :class:`PedroLinear` wrappers scale the targeted columns of the block's
projections by the resulting vectors at prefill and every decoding step.

Several adapters with one layout are served in one batch, each sample choosing its
own (or none): the wrappers implement the serving protocol (``set_adapter_ids`` /
``reset_cache``, see :mod:`roadinterp.adapters.serve`), and the generator weights
are stacked into banks and evaluated with one batched matmul per block, no loop
over adapters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from roadinterp.adapters.modules import AdapterHandle, Wrapper, out_features, set_submodule
from roadinterp.adapters.pedro import PedroAdapter, resolve_targets
from roadinterp.errors import ConfigError, ShapeError
from roadinterp.interventions.pedro import PedroConfig, bottleneck_mlp, pool, scale
from roadinterp.road.bank import check_adapter_ids

__all__ = ["PedroHandle", "PedroLinear", "apply_pedro"]


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
        self.ids = None if ids is None else check_adapter_ids(ids, len(self.adapters))
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
        vec = bottleneck_mlp(pooled, bank["w_down"][idx], bank["b_down"][idx], bank["w_up"][idx], bank["b_up"][idx],
                             cfg.activation)  # [batch, out]
        return torch.where((ids >= 0).unsqueeze(1), vec, torch.ones_like(vec))


class PedroLinear(Wrapper):
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
        self.out_features = out_features(base)
        self._full: tuple[torch.Tensor, torch.Tensor] | None = None  # (vectors, full-width view) for decoding

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
        if torch.is_grad_enabled():
            return scale(out, self._full_vector(vec))
        cached = self._full
        if cached is None or cached[0] is not vec:  # once per prompt (the vectors change at prefill)
            full = self._full_vector(vec)  # [batch, out_features]
            cached = self._full = (vec, full.reshape((full.shape[0],) + (1,) * (out.dim() - 2) + (full.shape[1],)))
        if out.dtype != cached[1].dtype:  # e.g. bf16 outputs: scale in fp32, cast back
            return scale(out, self._full_vector(vec))
        return out.mul_(cached[1])  # one in-place pass; out is the base layer's fresh output

    def extra_repr(self) -> str:
        return f"block={self._block}, segments={self.segments}"


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


class PedroHandle(AdapterHandle):
    """What :func:`apply_pedro` returns: the adapters it serves and how to undo it.

    Use as a context manager (``with apply_pedro(...) as h:``) or call :meth:`remove`.
    Routing, as for :class:`~roadinterp.adapters.linear.RoadLinear`: ``set_adapter_ids(ids)``
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
            set_submodule(self.model, path, m)
        self._originals = {}


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
        set_submodule(model, path, PedroLinear(base, runtime, owner[path], segs))

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
