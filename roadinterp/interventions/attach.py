"""Attaching interventions to a model through pyvene, and running them.

``attach_dii`` builds a ``pyvene.IntervenableModel`` with one representation per
causal variable at a :class:`~roadinterp.sites.Site`; when the family shares one
basis across variables, the representations share one intervention object
(pyvene's ``intervention_link_key``). ``run_dii`` feeds a counterfactual batch:
every variable gets its own source input (rows where a variable is not swapped
use the base input as its source, which is an exact no-op for every family
because variables own disjoint coordinates), with full per-example
``unit_locations`` and ``subspaces``. Named positions that differ per row (the
batch's ``positions``, ``[n, 1 + n_vars]``) resolve per input: column 0 for the
base, column ``1 + i`` for source ``i``.

``attach_sourceless`` does the same for adaptation interventions (RoAd, PEDRO).
The wrapper only lives as long as you hold it: the base model's own weights are
never modified, and it removes only hooks it added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from roadinterp._pyvene import pv
from roadinterp.sites import Site, check_left_padded, sequence_length


def _repr(site: Site, n_units: int, intervention, link_key=None):
    return pv.RepresentationConfig(
        layer=site.layer, component=site.component, unit="pos", max_number_of_units=n_units,
        intervention=intervention, intervention_link_key=link_key,
    )


def attach_dii(model, site: Site, interventions: Sequence, *, shared: bool, n_units: int = 1):
    """IntervenableModel with one representation per variable (linked when ``shared``)."""
    reps = [_repr(site, n_units, iv, 0 if shared else None) for iv in interventions]
    pvm = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), model=model, use_fast=False)
    pvm.disable_model_gradients()
    return pvm


def attach_sourceless(model, sites: Sequence[Site], interventions: Sequence, *, n_units: Sequence[int] | None = None):
    n_units = n_units or [1] * len(sites)
    reps = [_repr(s, n, iv) for s, n, iv in zip(sites, n_units, interventions)]
    pvm = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), model=model, use_fast=False)
    pvm.disable_model_gradients()
    return pvm


def run_dii(
    pvm, site: Site, base: Mapping[str, torch.Tensor], sources: Sequence[Mapping[str, torch.Tensor]],
    coords: Sequence[Sequence[int]], *, named_positions=None, row_positions=None,
):
    """Counterfactual model output of a DII with one source per variable.

    ``row_positions``: per-row named positions (name -> long ``[n, 1 + n_vars]``), as in
    :attr:`~roadinterp.tasks.CounterfactualBatch.positions`.
    """
    n = next(iter(base.values())).shape[0]
    n_vars = len(sources)

    def locs(inputs, col: int):
        check_left_padded(inputs)
        rows = None if row_positions is None else {k: v[:, col] for k, v in row_positions.items()}
        return site.unit_locations(n, sequence_length(inputs), named_positions, rows)

    base_locs = locs(base, 0)
    subspaces = [[list(c)] * n for c in coords]
    _, cf = pvm(
        dict(base), sources=[dict(s) for s in sources],
        unit_locations={"sources->base": ([locs(s, 1 + i) for i, s in enumerate(sources)], [base_locs] * n_vars)},
        subspaces=subspaces,
    )
    return cf


def run_sourceless(pvm, sites: Sequence[Site], base: Mapping[str, torch.Tensor], *, subspaces=None, named_positions=None):
    n = next(iter(base.values())).shape[0]
    seq = sequence_length(base)
    check_left_padded(base)
    locs = [s.unit_locations(n, seq, named_positions) for s in sites]
    _, out = pvm(dict(base), unit_locations={"base": locs}, subspaces=subspaces)
    return out
