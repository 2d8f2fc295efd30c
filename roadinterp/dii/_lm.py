"""What a causal LM's KV tail runs on: its blocks, final norm and unembedding (:func:`lm_parts`),
and the helpers that read a decoder layer's arguments and attention mask."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

_CACHE_KWARGS = ("cache", "past_key_values")  # the cache argument of a decoder layer (transformers 5.24 / 5.23)


# ------------------------------------------------------------------ the model's parts
@dataclass
class LMParts:
    """Where a causal LM keeps what the tail runs: its blocks, final norm and unembedding."""

    layers: torch.nn.ModuleList
    norm: torch.nn.Module
    head: torch.nn.Module  # nn.Linear [vocab, d] (+ bias)
    cache_kwarg: str  # the decoder layer's cache argument
    params: tuple[str, ...]  # the decoder layer's argument names, in order
    softcap: float | None = None  # Gemma's final logit soft-capping: tanh(z / c) * c


def lm_parts(model) -> LMParts | str:
    """The parts of ``model`` the KV engine drives, or why it cannot (a reason string)."""
    from roadinterp._pyvene import modelcard
    from roadinterp.sites import ensure_sites

    ensure_sites(model)  # an architecture pyvene has no card for gets one from its structure
    if model.training:
        return "the model is in training mode (dropout); call .eval()"
    mapping = modelcard.type_to_module_mapping.get(type(model), {})
    path = mapping.get("block_output", ("",))[0]
    if not path.endswith("[%s]") or mapping.get("block_input", ("",))[0] != path:
        return f"{type(model).__name__} has no per-block site map the KV engine understands"
    owner = model
    for name in path[: -len("[%s]")].split("."):
        owner = getattr(owner, name, None)
    if not isinstance(owner, torch.nn.ModuleList):
        return f"cannot find the blocks of {type(model).__name__} at {path!r}"
    base = model.base_model
    norm = next((getattr(base, n) for n in ("norm", "ln_f", "final_layernorm") if hasattr(base, n)), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if norm is None or not isinstance(head, torch.nn.Linear):
        return f"cannot find the final norm and unembedding of {type(model).__name__}"
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in ("eager", "sdpa"):
        return f"attention implementation {impl!r}: the KV engine builds eager/sdpa masks only"
    if getattr(model.config, "attn_logit_softcapping", None) and impl != "eager":
        return "attention logit soft-capping runs only under eager attention"
    kinds = set(getattr(model.config, "layer_types", None) or ["full_attention"])
    if not kinds <= {"full_attention", "sliding_attention"}:
        return f"layer types {sorted(kinds)}: the KV engine knows full and sliding-window attention only"
    params = tuple(inspect.signature(owner[0].forward).parameters)
    cache = next((c for c in _CACHE_KWARGS if c in params), None)
    if cache is None:
        return f"the decoder layers of {type(model).__name__} take no KV cache argument"
    return LMParts(owner, norm, head, cache, params, getattr(model.config, "final_logit_softcapping", None))


def _named(params: tuple[str, ...], args: tuple, kwargs: dict) -> dict:
    """A layer call's positional and keyword arguments, all by name."""
    named = dict(zip(params, args))
    named.update(kwargs)
    return named


def _allowed(mask, n: int, seq: int, device) -> torch.Tensor:
    """Which keys every query may attend to, from the mask the model built.  # bool [n, seq, seq]"""
    if mask is None:  # sdpa without padding: plain causal
        return torch.ones(seq, seq, dtype=torch.bool, device=device).tril().expand(n, seq, seq)
    m = mask[:, 0] if mask.dim() == 4 else mask
    allowed = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
    return allowed.expand(n, seq, seq)
