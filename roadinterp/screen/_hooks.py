"""Hooks at a site's module: read its state at every layer, or overwrite chosen positions.

The module of ``(component, layer)`` comes from pyvene's site map for the model's class (the one
:mod:`roadinterp.sites` registers or infers), so the screen patches exactly what a DII cell at
that site intervenes on. Both context managers remove only the hooks they added.
"""

from __future__ import annotations

import contextlib
import re

import torch

from roadinterp._pyvene import modelcard
from roadinterp.errors import SiteError
from roadinterp.sites import ensure_sites

_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")


def site_module(model, component: str, layer: int) -> tuple[torch.nn.Module, bool]:
    """(the module, whether the state is its input) of ``component`` at ``layer``."""
    ensure_sites(model)
    spec = modelcard.type_to_module_mapping.get(type(model), {}).get(component)
    if spec is None:
        raise SiteError(f"{type(model).__name__} has no component {component!r} in its site map")
    if len(spec) != 2:  # (path, hook, (split...)): a head-split component
        raise SiteError(f"component {component!r} is split per head; the screen patches whole vectors only "
                        "(block_output, block_input, mlp_output, attention_output, ...)")
    path, hook = spec
    owner = model
    for part in (path % layer).split("."):
        m = _INDEX.match(part)
        owner = getattr(owner, m.group(1))[int(m.group(2))] if m else getattr(owner, part)
    return owner, hook == "register_forward_pre_hook"


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _state(module_args, module_kwargs, output, is_input):
    if is_input:
        return module_args[0] if module_args else next(iter(module_kwargs.values()))
    return _first(output)


def as3d(t: torch.Tensor) -> torch.Tensor:
    """A site state as ``[batch, seq, d]`` (a view)."""
    if t.dim() == 2:  # a model without a sequence axis (pyvene's MLP): one position
        return t.unsqueeze(1)
    if t.dim() != 3:
        raise SiteError(f"the site's state has shape {list(t.shape)}; the screen patches [batch, seq, d] states")
    return t


@contextlib.contextmanager
def capturing(model, component: str, layers):
    """``states[l]``: the site's state at each layer of ``layers``, the very tensor the forward computed
    (``[n, seq, d]``, or ``[n, d]`` for a model without a sequence axis: see :func:`as3d`), so a
    gradient can be taken with respect to it."""
    states: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for layer in layers:
            module, is_input = site_module(model, component, layer)

            def grab(mod, args, kwargs, output=None, _l=layer, _in=is_input):
                states[_l] = _state(args, kwargs, output, _in)

            if is_input:
                handles.append(module.register_forward_pre_hook(lambda m, a, k, g=grab: g(m, a, k), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(grab, with_kwargs=True))
        yield states
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def patching(model, component: str, layer: int, rows: torch.Tensor, index: torch.Tensor, values: torch.Tensor):
    """Every forward inside sets the site's state of row ``rows[i]`` at ``index[i]`` to ``values[i]``."""
    module, is_input = site_module(model, component, layer)

    def put(t: torch.Tensor) -> torch.Tensor:
        flat = t.dim() == 2
        new = as3d(t).clone()
        new[rows, index] = values.to(new.dtype)
        return new[:, 0] if flat else new

    def pre(mod, args, kwargs):
        if args:
            return (put(args[0]), *args[1:]), kwargs
        key = next(iter(kwargs))
        return args, {**kwargs, key: put(kwargs[key])}

    def post(mod, args, kwargs, output):
        if isinstance(output, tuple):
            return (put(output[0]), *output[1:])
        return put(output)

    handle = (module.register_forward_pre_hook(pre, with_kwargs=True) if is_input
              else module.register_forward_hook(post, with_kwargs=True))
    try:
        yield
    finally:
        handle.remove()
