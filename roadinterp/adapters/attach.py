"""Attaching site-placed adapters to a model through pyvene, and running them.

A hidden-state adapter (``placement="site"``: RoAd, PEDRO, or the LoReFT baseline)
acts on a :class:`~roadinterp.sites.Site` through a pyvene intervention.
:func:`adapter_interventions` turns an adapter into one intervention per site that
*shares* its parameters (train the intervention, and the adapter learns);
:func:`forward` runs a model with them attached, :func:`evaluate` measures a task's
accuracy that way. The pyvene wrapper lives only for the call: the model's own
weights are never touched. Linear-placed adapters are installed instead by
:func:`~roadinterp.adapters.linear.apply_road` and
:func:`~roadinterp.adapters.pedro_linear.apply_pedro`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.pedro import PedroAdapter
from roadinterp.errors import ConfigError, ShapeError
from roadinterp.interventions.attach import attach_sourceless, run_sourceless
from roadinterp.interventions.loreft import LoreftAdapter
from roadinterp.interventions.pedro import PedroIntervention
from roadinterp.interventions.road import RoadIntervention
from roadinterp.sites import Site, sequence_length, validate_site

__all__ = ["adapter_interventions", "evaluate", "forward"]


def adapter_interventions(adapter) -> dict[str, object]:
    """pyvene interventions for each site target, *sharing* the adapter's parameters.

    The one place a site-placed adapter becomes interventions. RoAd: a
    ``RoadIntervention`` whose ``rotation`` is the adapter's own ``RoadRotation``
    (training the intervention trains the adapter). PEDRO: a ``PedroIntervention``
    around the adapter's generator for that site. LoReFT adapters already hold
    interventions.
    """
    if isinstance(adapter, LoreftAdapter):
        return dict(adapter.items())
    if not isinstance(adapter, (RoadAdapter, PedroAdapter)):
        raise ConfigError(f"expected a RoadAdapter, PedroAdapter or LoreftAdapter, got {type(adapter).__name__}")
    if adapter.placement != "site":
        how = "roadinterp.adapters.apply_road" if isinstance(adapter, RoadAdapter) else "roadinterp.apply_pedro"
        raise ConfigError(f"adapter placement is {adapter.placement!r}; only 'site' adapters attach through "
                          f"pyvene (use {how} for 'linear' adapters)")
    if isinstance(adapter, PedroAdapter):
        return {k: PedroIntervention(adapter.config.dim, generator=g) for k, g in adapter.items()}
    out = {}
    for key, r in adapter.items():
        iv = RoadIntervention(r.dim, variant=r.variant, group_size=r.group_size)
        iv.rotation = r  # shared parameters, not a copy
        out[key] = iv
    return out


def _sites_of(adapter, sites: Sequence[Site] | None, model) -> list[Site]:
    keys = list(adapter.targets)
    if sites is None:
        sites = [Site.from_key(k) for k in keys]
    sites = list(sites)
    if sorted(s.key() for s in sites) != sorted(keys):
        raise ConfigError(f"sites {[s.key() for s in sites]} do not match the adapter's targets {keys}")
    for s in sites:
        width = validate_site(model, s)
        if width != adapter.targets[s.key()]:
            raise ShapeError(f"adapter target {s.key()} is {adapter.targets[s.key()]} wide but the site is {width}")
    return sites


def forward(model, adapter, inputs: Mapping[str, torch.Tensor], *, sites: Sequence[Site] | None = None,
            subspaces=None, named_positions=None):
    """Model output with ``adapter`` attached at its sites (``None``: the plain model)."""
    if adapter is None:
        return model(**inputs, return_dict=True)
    sites = _sites_of(adapter, sites, model)
    ivs = adapter_interventions(adapter)
    seq = sequence_length(inputs)
    n_units = [len(s.position_indices(seq, named_positions)) for s in sites]
    pvm = attach_sourceless(model, sites, [ivs[s.key()] for s in sites], n_units=n_units)
    return run_sourceless(pvm, sites, inputs, subspaces=subspaces, named_positions=named_positions)


@torch.no_grad()
def evaluate(model, adapter, inputs, labels, task, sites: Sequence[Site] | None = None, *,
             batch_size: int = 1024) -> float:
    """Accuracy (argmax of ``task.logits`` == label) with ``adapter`` attached (or None)."""
    from roadinterp.tasks import get_task
    from roadinterp.training import accuracy

    task = get_task(task) if isinstance(task, str) else task
    was = model.training
    model.eval()
    try:
        return accuracy(lambda rows: task.logits(forward(model, adapter, {k: v[rows] for k, v in inputs.items()},
                                                         sites=sites, named_positions=task.positions)),
                        labels, batch_size=batch_size)
    finally:
        model.train(was)
