"""RoAd on ``nn.Linear`` outputs, PEFT style, with an adapter bank for mixed batches.

``y = R (W x + b)``: the rotation acts on a Linear's output. :class:`RoadLinear`
wraps one Linear (or GPT-2's ``Conv1D``) and holds an *adapter bank*: the theta/alpha
of several adapters stacked ``[n_adapters, n_params]``. Each sample of a batch names
its adapter by index (``-1`` = none); once per batch the layer gathers the batch's
parameter rows and turns them into one ``[batch, d]`` coefficient pair, reused at every
decoding step, and every call ends in one fused in-place pass over the output
(:func:`roadinterp.road.fused.rotate_`), so 16 different adapters cost what one shared
adapter costs and a bank of 1,000 costs only its parameters.

:func:`apply_road` swaps the targeted Linears for ``RoadLinear`` (a handle that is
also a context manager); :func:`remove_road` puts the original modules back.
:func:`merge` folds one adapter into the weights (``W' = R W``, zero overhead).
Moving adapters to and from peft: :mod:`roadinterp.adapters.peft_interop`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from roadinterp.adapters.adapter import RoadAdapter, as_bank, stack_bank
from roadinterp.adapters.modules import AdapterHandle, Wrapper, linear_targets, out_features, set_submodule
from roadinterp.errors import ConfigError, ShapeError
from roadinterp.road import fused
from roadinterp.road import rotation as rot
from roadinterp.road.bank import (
    adapter_index,
    bank_tables,
    check_adapter_ids,
    expand_ids,
    gather_coefficients,
    resolve_adapter_ids,
)
from roadinterp.road.merge import merge_into_linear, unmerge_from_linear

__all__ = ["RoadHandle", "RoadLinear", "apply_road", "linear_targets", "merge", "remove_road", "road_layers", "unmerge"]


def _swap_sign(dim: int, group_size: int) -> torch.Tensor:
    """``rotate_half(h) = sign * swap_halves(h)``: -1 on the first half of each group.  # [d]"""
    half = group_size // 2
    first = (torch.arange(dim) % group_size) < half
    return torch.where(first, -1.0, 1.0)


class RoadLinear(Wrapper):
    """A Linear whose output is rotated by one of several RoAd adapters, per sample.

    ``theta``/``alpha``: ``[n_adapters, n_params]`` fp32 (peft layout, one row per
    adapter, all with the same ``variant`` and ``group_size``). ``element_mask``
    (optional ``[n_adapters, d]`` bool) restricts an adapter to its subspace.

    Routing: :meth:`set_adapter_ids` sets per-sample ids for the next call(s)
    (``-1`` = no adapter); with no ids set the layer applies ``active`` (an index or
    ``None`` = off) to every sample. This is the ``BatchedAdapterLayer`` protocol of
    :mod:`roadinterp.adapters.serve`: the gathered rows are computed once after
    :meth:`reset_cache` and reused for every decode step.
    """

    def __init__(
        self, base: nn.Module, theta: torch.Tensor, alpha: torch.Tensor, *, variant: str = "road_1",
        group_size: int = 64, names: Sequence[str] | None = None, element_mask: torch.Tensor | None = None,
        active: int | None = None,
    ) -> None:
        super().__init__()
        dim = out_features(base)
        rot.check_layout(dim, group_size, variant)
        if theta.dim() == 1:
            theta, alpha = theta[None], alpha[None]
        rot.check_param_shapes(theta, alpha, dim, variant)
        if theta.shape != alpha.shape:
            raise ShapeError(f"theta {tuple(theta.shape)} and alpha {tuple(alpha.shape)} must have the same shape")
        self.base = base
        self.dim, self.variant, self.group_size = dim, variant, group_size
        self.names = list(names) if names is not None else [str(i) for i in range(theta.shape[0])]
        if len(self.names) != theta.shape[0]:
            raise ShapeError(f"{len(self.names)} names for a bank of {theta.shape[0]} adapters")
        self.theta = nn.Parameter(theta.detach().float().clone(), requires_grad=False)  # [n, n_params]
        self.alpha = nn.Parameter(alpha.detach().float().clone(), requires_grad=False)  # [n, n_params]
        self.register_buffer("element_mask", None if element_mask is None else element_mask.bool(), persistent=False)
        self.register_buffer("_sign", _swap_sign(dim, group_size), persistent=False)  # [d]
        self._is_conv1d = not isinstance(base, nn.Linear)
        self.active = active
        self.merged: int | None = None  # index of the adapter folded into base's weights
        self._ids: torch.Tensor | None = None
        self._tables = None  # (c1, c2 * sign) [n + 1, d], keyed on the params' versions
        self._tables_key = None
        self._rows = None  # per batch: (c1, c2s) [batch, d], or False = identity for everyone

    # ------------------------------------------------------------ bank
    @property
    def n_adapters(self) -> int:
        return self.theta.shape[0]

    def index(self, name: str) -> int:
        return adapter_index(name, self.names)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c1, c2s)`` ``[n_adapters + 1, d]`` fp32; the last row is the identity.

        ``c2s = c2 * sign`` folds ``rotate_half``'s minus sign into the table, so the
        forward is ``y * c1 + swap_halves(y) * c2s``. Cached until theta/alpha change.
        """
        grad = self._needs_grad()
        key = (self.theta._version, self.alpha._version, self.theta.device)
        if grad or self._tables is None or self._tables_key != key:
            c1, c2 = bank_tables(self.theta, self.alpha, self.variant, self.group_size, self.element_mask)
            tables = (c1, c2 * self._sign.to(c2.dtype))
            if grad:
                return tables
            self._tables, self._tables_key = tables, key
        return self._tables

    def _needs_grad(self) -> bool:
        """True when gradients must reach theta/alpha: coefficients are then rebuilt every call."""
        return torch.is_grad_enabled() and (self.theta.requires_grad or self.alpha.requires_grad)

    # ---------------------------------------------------- BatchedAdapterLayer
    def set_adapter_ids(self, ids: torch.Tensor | None) -> None:
        """Per-sample adapter indices ``[batch]`` (-1 = none); ``None`` = back to ``active``."""
        if ids is not None:
            ids = check_adapter_ids(ids, self.n_adapters, self.theta.device)
            if self.merged is not None:
                raise ConfigError("per-sample adapter ids need an unmerged layer; call roadinterp.adapters.unmerge first")
        self._ids = ids
        self._rows = None

    def reset_cache(self) -> None:
        self._rows = None

    def _gather(self, batch: int):
        """Rows for this call: ``(c1, c2s)`` ``[batch, d]``, False (identity) or None (no ids).

        Only the batch's own adapters are turned into coefficients
        (:func:`~roadinterp.road.bank.gather_coefficients`).
        """
        ids = self._ids
        if ids is None:
            return None  # static routing: decided per call in forward (cheap, never stale)
        if bool((ids < 0).all()):
            return False
        ids = expand_ids(ids, batch)
        c1, c2 = gather_coefficients(self.theta, self.alpha, ids, self.variant, self.group_size, self.element_mask)
        return c1, c2 * self._sign.to(c2.dtype)  # [batch, d]

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._is_conv1d:
            y = self.base(x)
        else:
            y = F.linear(x, self.base.weight, self.base.bias)  # skip a module call: decode is overhead-bound
        rows = self._rows
        grad = self._needs_grad()  # frozen banks (the default) keep their rows even with grad mode on
        if rows is None or grad:
            rows = self._gather(y.shape[0])
            if rows is None:  # no per-sample ids: the static ``active`` adapter (or nothing)
                if self.active is None or self.merged is not None:
                    return y
                c1, c2s = self.tables()
                rows = (c1[self.active], c2s[self.active])  # [d]
            elif not grad:
                self._rows = rows
        if rows is False:
            return y
        c1, c2s = rows
        if y.dtype != c1.dtype:  # e.g. bf16 activations: rotate in fp32, cast back
            return fused.rotate_(y.to(c1.dtype), c1, c2s, self.group_size).to(y.dtype)
        return fused.rotate_(y, c1, c2s, self.group_size)  # y is our own fresh output: in place is safe


    # ------------------------------------------------------------ merge
    @torch.no_grad()
    def merge(self, index: int) -> None:
        """Fold adapter ``index`` into the base weights (``W' = R W``, ``b' = R b``)."""
        if self.merged is not None:
            raise ConfigError(f"adapter {self.names[self.merged]!r} is already merged; unmerge it first")
        if not 0 <= index < self.n_adapters:
            raise ConfigError(f"adapter index must be in 0..{self.n_adapters - 1}, got {index}")
        c1, c2 = self._coefs(index)
        _merge(self.base, c1, c2, self.group_size)
        self.merged = index
        self._rows = None

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged is None:
            return
        c1, c2 = self._coefs(self.merged)
        i1, i2 = rot.inverse_coefficients(c1, c2, self.group_size)
        if self._is_conv1d:
            _merge(self.base, i1, i2, self.group_size)
        else:
            unmerge_from_linear(self.base, c1, c2, self.group_size)
        self.merged = None
        self._rows = None

    def _coefs(self, index: int):
        c1, c2 = rot.coefficients(self.theta[index], self.alpha[index], self.variant, self.group_size)
        if self.element_mask is not None:
            c1, c2 = rot.masked_coefficients(c1, c2, self.element_mask[index])
        return c1, c2

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, variant={self.variant}, group_size={self.group_size}, "
                f"adapters={self.names}, active={self.active}, merged={self.merged}")


@torch.no_grad()
def _merge(base: nn.Module, c1, c2, group_size: int) -> None:
    if isinstance(base, nn.Linear):
        merge_into_linear(base, c1, c2, group_size)
        return
    # Conv1D stores W^T ([in, out]); R acts on the out dimension, i.e. on every row
    w = base.weight
    w.copy_(rot.apply(w.float(), c1, c2, group_size).to(w.dtype))
    if base.bias is not None:
        base.bias.copy_(rot.apply(base.bias.float(), c1, c2, group_size).to(base.bias.dtype))


# ---------------------------------------------------------------- targets
def road_layers(model: nn.Module) -> dict[str, RoadLinear]:
    """Every :class:`RoadLinear` in ``model`` by module path."""
    return {p: m for p, m in model.named_modules() if isinstance(m, RoadLinear)}


class RoadHandle(AdapterHandle):
    """What :func:`apply_road` returns: the layers it installed; ``with`` removes them."""

    def __init__(self, model: nn.Module, layers: dict[str, RoadLinear], names: list[str]) -> None:
        self.model, self.layers, self.names = model, layers, names

    def index(self, name: str) -> int:
        return adapter_index(name, self.names)

    def ids(self, names: Sequence[str | int | None]) -> torch.Tensor:
        """Adapter names (or ints, ``None``/-1 = none) -> index tensor ``[batch]``."""
        return resolve_adapter_ids(names, self.names)

    def remove(self) -> None:
        remove_road(self.model, self.layers)


def apply_road(
    model: nn.Module, adapters, target_modules: str | Iterable[str] | None = None, *, active: str | int | None = None,
) -> RoadHandle:
    """Replace targeted Linears of ``model`` by :class:`RoadLinear` holding the bank.

    ``adapters``: one :class:`RoadAdapter` (``placement="linear"``; it becomes the
    active adapter) or a dict name -> adapter (bank order = dict order = adapter ids;
    none active until ids are set, see :mod:`roadinterp.adapters.serve`). ``target_modules``
    restricts the Linears (default: every target of every adapter); a layer that
    an adapter does not target is the identity for that adapter. Usable as
    ``with apply_road(model, bank) as h: ...`` (removed on exit).
    """
    single = isinstance(adapters, RoadAdapter)
    bank = as_bank(adapters)
    names = list(bank)
    for name, a in bank.items():
        if a.placement != "linear":
            raise ConfigError(
                f"adapter {name!r} has placement={a.placement!r}; apply_road needs placement='linear' "
                "(serve hidden-state adapters with roadinterp.adapters.serve)"
            )
    wanted = sorted({t for a in bank.values() for t in a.targets})
    if target_modules is not None:
        chosen = linear_targets(model, target_modules)
        wanted = [t for t in wanted if t in chosen]
        if not wanted:
            raise ConfigError(f"target_modules {target_modules!r} selects none of the adapters' targets")
    if road_layers(model):
        raise ConfigError("model already has RoAd layers; call remove_road(model) first")
    if isinstance(active, str):
        active = adapter_index(active, names)
    elif active is None and single:
        active = 0
    layers = {}
    for path in wanted:
        try:
            base = model.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"model {type(model).__name__} has no module {path!r}") from None
        dim = out_features(base)
        variant, group_size, thetas, alphas, mask = stack_bank(bank, path, dim)
        layer = RoadLinear(
            base, thetas, alphas, variant=variant, group_size=group_size, names=names, element_mask=mask,
            active=active,
        ).to(base.weight.device)
        set_submodule(model, path, layer)
        layers[path] = layer
    return RoadHandle(model, layers, names)


def remove_road(model: nn.Module, layers: Mapping[str, RoadLinear] | None = None) -> None:
    """Put the original Linear modules back (unmerging first). ``layers``: only these."""
    layers = road_layers(model) if layers is None else layers
    for path, layer in layers.items():
        try:
            current = model.get_submodule(path)
        except AttributeError:
            continue
        if current is not layer:  # someone else replaced it since; leave it alone
            continue
        layer.unmerge()
        layer.set_adapter_ids(None)
        set_submodule(model, path, layer.base)


def merge(model: nn.Module, name: str | int | None = None) -> None:
    """Fold one adapter of the bank into every RoAd layer's weights (zero overhead after)."""
    for layer in road_layers(model).values():
        index = _resolve(layer, name)
        layer.merge(index)


def unmerge(model: nn.Module) -> None:
    for layer in road_layers(model).values():
        layer.unmerge()


def _resolve(layer: RoadLinear, name) -> int:
    if name is None:
        if layer.active is not None:
            return layer.active
        if layer.n_adapters == 1:
            return 0
        raise ConfigError(f"the bank holds {layer.names}: say which adapter to merge")
    return name if isinstance(name, int) else layer.index(name)
