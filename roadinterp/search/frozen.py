"""The frozen model and bound task a search runs on: loaded once per process, device and dtype.

Every cell of a search trains interventions on the same frozen model, so each process
(the search's own, every local worker, every Ray task) loads it once: :func:`get_model`
keeps one copy per spec, device and dtype (``device="auto"`` resolved where it loads),
:func:`get_random_model` its randomly re-initialised twin (the random-init control), and
:func:`get_bound_task` the task bound to the model's own tokenizer (prompt tasks), filtered
on that same copy: a ``--device cuda`` run never holds a second CPU copy of its model.
:func:`use_module` registers an in-memory ``nn.Module`` under a ``module:`` spec, which
only this process can resolve. :func:`place` moves a counterfactual batch to the model.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch

from roadinterp import zoo
from roadinterp.dii.train import randomized_copy
from roadinterp.errors import ConfigError
from roadinterp.search.options import check_placement

_MODELS: dict[str, Any] = {}


_TOKENIZERS: dict[str, Any] = {}
MODULE_PREFIX = "module:"


def use_module(model, tokenizer=None) -> str:
    """Register an in-memory model (an ``nn.Module``) for searches in this process; its spec.

    The spec (``module:ClassName#N``) is what run.json records; the model itself never
    leaves the process, so such a search runs with ``workers=1`` and the local executor.
    ``tokenizer`` is the model's own tokenizer, for prompt tasks.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a spec string or a torch.nn.Module, got {type(model).__name__}")
    for spec, known in _MODELS.items():
        if known is model and spec.startswith(MODULE_PREFIX):
            break
    else:
        spec = f"{MODULE_PREFIX}{type(model).__name__}#{sum(k.startswith(MODULE_PREFIX) for k in _MODELS)}"
        _MODELS[spec] = model.eval()
    if tokenizer is not None:
        _TOKENIZERS[spec] = tokenizer
    return spec


def get_tokenizer(spec: str):
    """The tokenizer that goes with model ``spec`` (None for the toy zoo)."""
    if spec.startswith(MODULE_PREFIX):
        return _TOKENIZERS.get(spec)
    return zoo.load_tokenizer(spec)


def get_model(spec: str, device: str = "cpu", dtype: str = "float32"):
    """Load (once per process, device and dtype) the frozen model a search runs on.

    ``device="auto"`` is resolved where the model loads (a Ray worker picks its own GPU or CPU).
    An in-memory module is copied, not moved, when it must go elsewhere.
    """
    check_placement(device, dtype)
    if spec.startswith(MODULE_PREFIX) and spec not in _MODELS:
        raise ConfigError(f"model {spec!r} was an in-memory nn.Module of another process; pass the module "
                          "again (ri.search(model=module)) or save it (save_pretrained) and pass its directory")
    dev = str(zoo._resolve_device(device))
    key = spec if (dev, dtype) == ("cpu", "float32") else f"{spec}@{dev}:{dtype}"
    if key not in _MODELS:
        if spec in _MODELS:  # an in-memory module (or the float32 copy): placed copy
            p = next(_MODELS[spec].parameters())
            same = (str(p.device), p.dtype) == (dev, getattr(torch, dtype))
            _MODELS[key] = _MODELS[spec] if same else copy.deepcopy(_MODELS[spec]).to(dev, getattr(torch, dtype))
        else:
            _MODELS[key] = zoo.load_model(spec, device=dev).to(getattr(torch, dtype))
    return _MODELS[key]


def place(batch, model):
    """``batch`` with every tensor on the model's device and float inputs in its dtype."""
    p = next(model.parameters())

    def move(t):
        return t.to(p.device, p.dtype) if t.is_floating_point() else t.to(p.device)

    def inputs(d):
        return {k: move(v) for k, v in d.items()}

    if p.device.type == "cpu" and p.dtype == torch.float32:
        return batch
    return replace(batch, base=inputs(batch.base), sources=[inputs(s) for s in batch.sources],
                   intervened=batch.intervened.to(p.device), labels=batch.labels.to(p.device),
                   base_labels=batch.base_labels.to(p.device))


_BOUND: dict[tuple[str, str], Any] = {}


def get_bound_task(task_name: str, spec: str, device: str = "cpu", dtype: str = "float32", template: str = "auto"):
    """The task ready for model ``spec`` (once per process): prompt tasks are bound to the
    model's own tokenizer, written in ``template``'s form (auto: the chat format when the tokenizer
    has one) and filtered to the prompts it answers correctly (cached on disk), with the model as
    the search loads it (``device``, ``dtype``), never a second copy."""
    from roadinterp.tasks import get_task

    key = (task_name, spec, template)
    if key not in _BOUND:
        task = get_task(task_name)
        if task.needs_tokenizer:
            task = task.bind(tokenizer=get_tokenizer(spec), model=get_model(spec, device, dtype),
                             cache_dir=zoo.cache_dir() / "filters", template=template)
        _BOUND[key] = task
        if template == "auto":  # the same binding under the form it resolved to (what run.json records)
            _BOUND.setdefault((task_name, spec, getattr(task, "template", "raw")), task)
    return _BOUND[key]


RANDOM_MODEL_SEED = 10_000


def get_random_model(spec: str, device: str = "cpu", dtype: str = "float32"):
    """The random-init control: one freshly initialised copy of the model per search
    (seed ``RANDOM_MODEL_SEED``), so a cell's seeds differ only in DII init and data, as
    in the main run, and can share a batched forward."""
    model = get_model(spec, device, dtype)
    key = f"{spec}#random{RANDOM_MODEL_SEED}" + ("" if model is _MODELS.get(spec) else f"@{model.device}:{dtype}")
    if key not in _MODELS:
        _MODELS[key] = randomized_copy(model, seed=RANDOM_MODEL_SEED)
    return _MODELS[key]
