"""Mixed-adapter batched inference: every sample of a batch names its own adapter.

RoAd (and PEDRO) change a representation element-wise, one ``[d]`` vector pair
per adapter, so a batch mixing 16 adapters needs only one gathered ``[batch, d]``
row per layer: no loop over adapters, no per-adapter matmul. ``adapter_ids[i]`` is
the index of sample ``i``'s adapter in the bank (or its name), ``-1`` = none.

Layers that take part implement the **BatchedAdapterLayer** protocol::

    class BatchedAdapterLayer(Protocol):
        def set_adapter_ids(self, ids: torch.LongTensor | None) -> None: ...
            # ids: [batch], -1 = none; None = adapters off (no per-sample routing)
        def reset_cache(self) -> None: ...
            # called once before every forward()/generate() call

:func:`forward` and :func:`generate` find every such module in the model (a
``runtime_checkable`` isinstance check: any class with these two methods counts),
call ``reset_cache()`` then ``set_adapter_ids(ids)``, run, and call
``set_adapter_ids(None)`` in ``finally``. A layer should build its per-sample rows
at its first call after ``reset_cache()`` and reuse them for every decode step.
:class:`~roadinterp.adapters.linear.RoadLinear` (``placement="linear"``) implements it; for
hidden-state adapters (``placement="site"``) :class:`RoadSiteBank` does the same
through a forward hook on the site's module, added and removed by :func:`serving`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from roadinterp.adapters.adapter import RoadAdapter, as_bank, stack_bank
from roadinterp.adapters.linear import apply_road
from roadinterp.errors import ConfigError, ShapeError, SiteError
from roadinterp.road import rotation as rot
from roadinterp.road.bank import check_adapter_ids, expand_ids, gather_coefficients, resolve_adapter_ids
from roadinterp.sites import Site, validate_site

__all__ = ["BatchedAdapterLayer", "RoadSiteBank", "batched_layers", "forward", "generate", "route", "serving"]


@runtime_checkable
class BatchedAdapterLayer(Protocol):
    """A layer that routes each sample of a batch to its own adapter (see module docs)."""

    def set_adapter_ids(self, ids: torch.LongTensor | None) -> None: ...

    def reset_cache(self) -> None: ...


def batched_layers(model: nn.Module) -> list[BatchedAdapterLayer]:
    """Every module of ``model`` that implements :class:`BatchedAdapterLayer`."""
    return [m for m in model.modules() if isinstance(m, BatchedAdapterLayer)]


# ----------------------------------------------------------- hidden-state sites
def _site_module(model: nn.Module, site: Site) -> tuple[nn.Module, str]:
    from pyvene.models.modeling_utils import getattr_for_torch_module

    from roadinterp._pyvene import modelcard

    validate_site(model, site)
    entry = modelcard.type_to_module_mapping[type(model)][site.component]
    if len(entry) > 2:
        raise SiteError(
            f"component {site.component!r} is a slice of a module output (heads or a split); "
            "serving supports whole-vector components such as block_output, mlp_output, attention_output"
        )
    template, hook_type = entry[0], entry[1]
    path = template % site.layer if "%s" in template else template
    return getattr_for_torch_module(model, path), hook_type


class RoadSiteBank(nn.Module):
    """A bank of hidden-state RoAd adapters at one site, applied through a hook.

    Implements :class:`BatchedAdapterLayer`. ``positions="all"`` rotates every
    position, including each generated token; other positions (``"last"``, ints, and
    ``"prompt"`` = every prompt position) are prompt positions: rotated in the first call
    after ``reset_cache()`` (the prefill) and left alone while decoding, as in pyvene/ReFT
    generation.
    """

    def __init__(self, site: Site, theta: torch.Tensor, alpha: torch.Tensor, *, variant: str, group_size: int,
                 element_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.site, self.variant, self.group_size = site, variant, group_size
        n = theta.shape[-1]
        self.dim = {"road_1": 2 * n, "road_2": n, "road_4": n // 2}[variant]
        rot.check_layout(self.dim, group_size, variant)
        self.register_buffer("theta", theta.detach().float().clone())  # [n, n_params]
        self.register_buffer("alpha", alpha.detach().float().clone())
        self.register_buffer("element_mask", None if element_mask is None else element_mask.bool())  # [n, d]
        self._ids: torch.Tensor | None = None
        self._rows = None
        self._calls = 0

    @property
    def n_adapters(self) -> int:
        return self.theta.shape[0]

    def set_adapter_ids(self, ids: torch.Tensor | None) -> None:
        if ids is not None:
            ids = check_adapter_ids(ids, self.n_adapters, self.theta.device)
        self._ids, self._rows = ids, None

    def reset_cache(self) -> None:
        self._rows, self._calls = None, 0

    def _rotate(self, h: torch.Tensor) -> torch.Tensor:
        self._calls += 1
        ids = self._ids
        if ids is None:
            return h
        if self._rows is None:
            if bool((ids < 0).all()):
                self._rows = False
            else:
                ids = expand_ids(ids, h.shape[0])
                c1, c2 = gather_coefficients(self.theta, self.alpha, ids, self.variant, self.group_size,
                                             self.element_mask)  # once per batch, reused while decoding
                view = (ids.shape[0],) + (1,) * (h.dim() - 2) + (c1.shape[-1],)
                self._rows = (c1.reshape(view), c2.reshape(view))  # [batch, 1, d]
        if self._rows is False:
            return h
        c1, c2 = self._rows
        if h.shape[-1] != c1.shape[-1]:
            raise ShapeError(f"site {self.site.key()} is {h.shape[-1]} wide but the adapters are {c1.shape[-1]} wide")
        if self.site.positions == "all" or h.dim() < 3:
            return rot.apply(h, c1, c2, self.group_size)
        if self._calls > 1:  # decoding: prompt positions were handled in the prefill
            return h
        if self.site.positions == "prompt":  # every prompt position, in the prefill only
            return rot.apply(h, c1, c2, self.group_size)
        idx = self.site.position_indices(h.shape[1])
        out = h.clone()
        out[:, idx] = rot.apply(h[:, idx], c1, c2, self.group_size)
        return out

    # hooks: never modify the module's input/output tensors in place
    def output_hook(self, module, args, output):
        if isinstance(output, tuple):
            return (self._rotate(output[0]),) + tuple(output[1:])
        return self._rotate(output)

    def input_hook(self, module, args, kwargs):
        if args:
            return (self._rotate(args[0]),) + tuple(args[1:]), kwargs
        if "hidden_states" in kwargs:
            kwargs = dict(kwargs, hidden_states=self._rotate(kwargs["hidden_states"]))
            return args, kwargs
        raise SiteError(f"cannot find the hidden states entering {type(module).__name__} for site {self.site.key()}")


@contextlib.contextmanager
def _site_banks(model: nn.Module, bank: Mapping[str, RoadAdapter]) -> Iterator[list[RoadSiteBank]]:
    keys = list(dict.fromkeys(k for a in bank.values() for k in a.targets))
    banks, handles = [], []
    try:
        for key in keys:
            site = Site.from_key(key)
            module, hook_type = _site_module(model, site)
            width = validate_site(model, site)
            variant, group_size, thetas, alphas, mask = stack_bank(bank, key, width)
            device = next(model.parameters()).device
            sb = RoadSiteBank(site, thetas, alphas, variant=variant, group_size=group_size,
                              element_mask=mask).to(device)
            if hook_type == "register_forward_hook":
                handles.append(module.register_forward_hook(sb.output_hook))
            else:
                handles.append(module.register_forward_pre_hook(sb.input_hook, with_kwargs=True))
            banks.append(sb)
        yield banks
    finally:
        for h in handles:  # only the hooks we added
            h.remove()


# ------------------------------------------------------------------ entry points
def _bank(adapters) -> dict[str, RoadAdapter] | None:
    if adapters is None:
        return None
    return as_bank(adapters)


@contextlib.contextmanager
def serving(model: nn.Module, adapters=None) -> Iterator[list[BatchedAdapterLayer]]:
    """Install a bank for the duration of the block; yield every batched adapter layer.

    ``adapters``: ``None`` (use the layers already in the model, e.g. after
    :func:`roadinterp.adapters.linear.apply_road` or PEDRO layers), one :class:`RoadAdapter`
    or a dict name -> adapter (order = adapter ids). All adapters of a bank share a
    placement: ``"linear"`` swaps Linears for RoadLinear, ``"site"`` adds hooks.
    """
    bank = _bank(adapters)
    if bank is None:
        yield batched_layers(model)
        return
    placements = {a.placement for a in bank.values()}
    if len(placements) != 1:
        raise ConfigError(f"a bank's adapters must share one placement, got {sorted(placements)}")
    if placements == {"linear"}:
        with apply_road(model, bank):
            yield batched_layers(model)
    else:
        with _site_banks(model, bank) as banks:
            yield batched_layers(model) + banks


def _ids(adapter_ids, adapters, batch: int) -> torch.Tensor:
    names = list(_bank(adapters)) if adapters is not None else None
    ids = resolve_adapter_ids(adapter_ids, names)
    if ids.numel() != batch:
        raise ConfigError(f"adapter_ids has {ids.numel()} entries but the batch has {batch} samples")
    return ids


@contextlib.contextmanager
def _routed(layers, ids: torch.Tensor):
    if not layers and bool((ids >= 0).any()):
        raise ConfigError(
            "the model has no batched adapter layers: pass adapters=... or call roadinterp.apply_road first"
        )
    try:
        for layer in layers:
            layer.reset_cache()
            layer.set_adapter_ids(ids)
        yield
    finally:
        for layer in layers:
            layer.set_adapter_ids(None)


def _batch_of(inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    for key in ("input_ids", "inputs_embeds"):
        if key in inputs:
            return inputs[key].shape[0]
    raise ConfigError(f"inputs need input_ids or inputs_embeds, got keys {sorted(inputs)}")


@contextlib.contextmanager
def route(model: nn.Module, adapter_ids, *, adapters=None, batch: int | None = None):
    """Route every forward inside the block: sample ``i`` uses adapter ``adapter_ids[i]``.

    For your own decoding loops: the layers gather their rows at the first forward
    and reuse them at every later one, until the block ends (ids are then cleared).
    ``adapters`` as in :func:`serving`; ``batch`` (optional) checks the number of ids.
    """
    ids = _ids(adapter_ids, adapters, batch if batch is not None else len(adapter_ids))
    with serving(model, adapters) as layers, _routed(layers, ids):
        yield layers


@torch.no_grad()
def forward(model: nn.Module, inputs, adapter_ids, *, adapters=None):
    """One forward pass of a mixed batch. ``inputs``: ids ``[batch, seq]`` or a dict of model kwargs."""
    with route(model, adapter_ids, adapters=adapters, batch=_batch_of(inputs)):
        return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def _pad_left(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model: nn.Module, input_ids, *, adapter_ids, max_new_tokens: int = 20, adapters=None,
    attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None, **generate_kwargs,
) -> torch.Tensor:
    """Greedy generation for a mixed batch: sample ``i`` runs with adapter ``adapter_ids[i]``.

    ``input_ids``: ``[batch, seq]`` or a list of token-id lists (left-padded here).
    Returns ``[batch, seq + new]`` token ids (HF ``generate`` with its KV cache; the
    adapter rows are gathered once, at the prefill, and reused at every step).
    """
    if pad_token_id is None:
        pad_token_id = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = 0
    if not isinstance(input_ids, torch.Tensor):
        input_ids, mask = _pad_left(input_ids, pad_token_id)
        attention_mask = mask if attention_mask is None else attention_mask
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    generate_kwargs.setdefault("do_sample", False)
    with route(model, adapter_ids, adapters=adapters, batch=input_ids.shape[0]):
        return model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id, **generate_kwargs,
        )
