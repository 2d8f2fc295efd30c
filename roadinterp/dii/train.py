"""Distributed interchange intervention (DII): train one cell and score it.

**DII** (Geiger et al., DAS) asks whether a causal variable of a high-level model
lives in a subspace of a network's hidden state. For a base input ``b`` and a
source ``s``, we run the network on ``b`` but replace the variable's coordinates
(in a learned basis ``R``) with those computed on ``s``:
``h_b <- h_b + R^-1 M R (h_s - h_b)``. If the network then predicts what the
causal model predicts under the same interchange (the *counterfactual label*),
the alignment holds. ``R`` is learned by minimising cross-entropy to the
counterfactual labels; the score is *interchange intervention accuracy* (IIA) on
held-out counterfactuals built from entities/values never seen in training.

Families differ only in ``R``: axis-aligned neurons, one RoAd layer, a RoAd
butterfly, or pyvene's dense/low-rank/boundless rotations (see
:mod:`roadinterp.interventions.registry`). ``train_dii`` is the fit loop
(:mod:`roadinterp.dii.fit`) with one candidate. No I/O and no plotting happen here.
"""

from __future__ import annotations

import copy
from dataclasses import asdict

from roadinterp._scoped import seeded
from roadinterp.dii.config import DIIConfig, TrainResult, check_cell
from roadinterp.dii.fit import fit_cell
from roadinterp.sites import Site


def train_dii(model, task, site: Site, *, config: DIIConfig | None = None, data=None, width: int | None = None,
              **overrides) -> TrainResult:
    """Train one DII cell and score it on held-out counterfactuals.

    ``overrides`` are DIIConfig fields, e.g. ``train_dii(m, t, s, family="das", size=8, seed=0)``.
    ``data`` may pass precomputed ``(train, test)`` batches to share across cells. ``width``:
    the site's width from a caller that has already checked the cell (a search checks each once).
    """
    if overrides or not isinstance(config, DIIConfig):
        config = DIIConfig(**{**(asdict(config) if config else {}), **overrides})
    if width is None:
        width = check_cell(model, task, site, config)
    return fit_cell(model, task, site, [config], None if data is None else [data], width)[0]


def randomized_copy(model, seed: int = 0):
    """A copy of ``model`` with freshly initialised weights (the random-init control).

    Seeded from ``seed``; torch's global generator is left as it was.
    """
    with seeded(seed):
        clone = copy.deepcopy(model)
        for m in clone.modules():
            if hasattr(m, "reset_parameters") and m is not clone:
                m.reset_parameters()
        if hasattr(clone, "_init_weights"):
            clone.apply(clone._init_weights)
    return clone.eval()
