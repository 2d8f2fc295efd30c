"""The screen: where in a model can a causal variable live at all? Every layer x every position, in minutes.

Training a DII alignment at a site costs minutes per seed; a search over every layer and
position of a real LM costs hours, and most of it is spent where nothing can be found. A
subspace of a site can only move the output as far as the *whole* site vector can: patching
the entire vector at (layer, position) with its value from the counterfactual source run
(the **whole-vector patch**, MIB's "full vector" baseline and roadinterp's ``iia_site_patch``
control) is an upper bound a trained subspace should not beat (if it does, suspect an
illusion). A site whose whole-vector patch scores the no-op carries nothing to align.

:func:`screen` computes, for every layer x every prompt position (:mod:`roadinterp.screen.grid`):

* the **exact whole-vector patch**, scored as DII scores a cell: IIA against the variable's
  counterfactual label on the held-out counterfactuals every DII cell is scored on, beside the
  no-op (:mod:`roadinterp.screen.exact`: KV tails on causal LMs, hooks elsewhere);
* the **attribution-patching estimate** (AtP): ``(h_src - h_base) . dm/dh`` for a logit
  difference ``m``, every cell from one forward and one backward (:mod:`roadinterp.screen.atp`),
  and its rank correlation with the exact grid (:mod:`roadinterp.screen.compare`).

``roadinterp screen`` writes the grid (screen.json, screen.csv), a heat map (screen.html and
its matplotlib twin screen.png) and prints a table (:mod:`roadinterp.screen.output`).
See docs/screen.md.
"""

from __future__ import annotations

__all__ = ["ScreenConfig", "ScreenResult", "screen"]


def __getattr__(name: str):  # lazy: the CLI reads roadinterp.screen.options without loading torch
    if name == "ScreenConfig":
        from roadinterp.screen.config import ScreenConfig

        return ScreenConfig
    if name in ("ScreenResult", "screen"):
        from roadinterp.screen import run

        return getattr(run, name)
    raise AttributeError(f"module 'roadinterp.screen' has no attribute {name!r}")
