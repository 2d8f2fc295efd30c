"""The modules adapters wrap: projections, their widths, module swaps and the handle that undoes them.

Both PEFT-style placements (RoAd on Linear outputs, :mod:`~roadinterp.adapters.linear`;
PEDRO, :mod:`~roadinterp.adapters.pedro_linear`) act on the output of a *projection*:
an ``nn.Linear`` or GPT-2's ``transformers`` ``Conv1D`` (which stores ``W^T`` and names
its output width ``nf``). They replace the module by a :class:`Wrapper` holding the
original as ``.base`` and return an :class:`AdapterHandle` that puts it back, also as
a context manager. Everything here is shared so that both placements read a width,
match a target and swap a module the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from roadinterp.errors import ConfigError

PLACEMENTS: tuple[str, ...] = ("site", "linear")  # where an adapter acts: a pyvene site, or projection outputs


def conv1d_type() -> type:
    """transformers' ``Conv1D`` (GPT-2's projection: ``y = x W + b`` with ``W: [in, out]``)."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


class Wrapper(nn.Module):
    """A module standing in for a projection; the original is ``self.base``."""

    base: nn.Module


def unwrap(module: nn.Module) -> nn.Module:
    """The projection under any adapter wrappers."""
    while isinstance(module, Wrapper):
        module = module.base
    return module


def is_projection(module: nn.Module) -> bool:
    """An ``nn.Linear`` or ``Conv1D`` (not a wrapper standing in for one)."""
    return isinstance(module, (nn.Linear, conv1d_type()))


def out_features(module: nn.Module) -> int:
    """Output width of a Linear or Conv1D."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, conv1d_type()):
        return module.nf
    raise ConfigError(
        f"adapters on projection outputs need nn.Linear or transformers Conv1D, got {type(module).__name__}"
    )


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at dotted ``path`` inside ``model``."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def hidden_size(model: nn.Module) -> int:
    """The residual-stream width from the model's config."""
    cfg = model.config
    for attr in ("hidden_size", "n_embd", "d_model"):
        if getattr(cfg, attr, None) is not None:
            return int(getattr(cfg, attr))
    raise ConfigError(f"cannot tell the hidden size of {type(model).__name__}")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Path and ModuleList of the decoder blocks (the ModuleList with n_layers entries)."""
    from roadinterp.sites import n_layers

    n = n_layers(model)
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n:
            return name, m
    raise ConfigError(f"cannot find the {n} decoder blocks of {type(model).__name__} (no ModuleList of that length)")


def linear_targets(model: nn.Module, target_modules: str | Iterable[str] = "all-linear") -> dict[str, int]:
    """Module paths -> output width of the projections a ``target_modules`` spec selects.

    Same matching as peft: a string is a regex that must match the whole path
    (``"all-linear"`` = every Linear/Conv1D except the output embedding); a list
    matches a path exactly or as a ``.``-separated suffix (``"q_proj"``).
    """
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = {}
    for path, m in model.named_modules():
        if not path or not is_projection(m):
            continue
        if target_modules == "all-linear":
            ok = m is not out_emb
        elif isinstance(target_modules, str):
            ok = re.fullmatch(target_modules, path) is not None
        else:
            ok = any(path == t or path.endswith("." + t) for t in target_modules)
        if ok:
            found[path] = out_features(m)
    if not found:
        raise ConfigError(f"target_modules {target_modules!r} matches no Linear layer of {type(model).__name__}")
    return found


class AdapterHandle:
    """What attaching adapters returns: :meth:`remove` undoes it; ``with`` removes on exit."""

    def remove(self) -> None:  # pragma: no cover - every handle overrides it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
