"""The composition experiment: train adapters on their own blocks, then measure behaviour.

Adapters can be trained for composition in two ways (:func:`train_composable`):

* **separately**: one adapter per task, each restricted to its own blocks;
* **jointly with routing** (the RoAd paper's composition experiment): one adapter over
  the union of the blocks, where each example's pyvene ``subspaces`` are its task's
  blocks, so an example of task A only moves A's blocks.

:func:`behaviour_table` measures what composition does to behaviour (base / A only /
B only / A+B on each target), for RoAd (:func:`~roadinterp.adapters.compose.compose`)
and the LoReFT baseline (rows stacked, :func:`combine`). Exact composition of the
maps does not promise composition of behaviours: the network after the site is
nonlinear; that is what the table measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.attach import adapter_interventions, evaluate
from roadinterp.adapters.compose import compose, restrict
from roadinterp.errors import ConfigError, OverlapError
from roadinterp.interventions.loreft import LoreftAdapter, concat_loreft
from roadinterp.sites import Site, validate_site

__all__ = ["behaviour_table", "combine", "train_composable"]


def train_composable(
    model, tasks_data: Mapping[str, tuple], sites: Sequence[Site], owners: Mapping[str, Sequence[int]], joint: bool,
    *, task="behaviour-base", variant: str = "road_2", group_size: int | None = 64, steps: int = 300,
    batch_size: int = 256, lr: float = 0.05, seed: int = 0, threads: int | None = None,
) -> dict[str, RoadAdapter]:
    """Train one RoAd adapter per task on its own blocks ``owners[name]`` at ``sites``.

    ``tasks_data``: ``{name: (inputs, labels)}`` (inputs of one sequence length).
    ``joint=False``: each adapter is trained on its task's data alone. ``joint=True``: one
    adapter over the union of the blocks is trained on all the data shuffled together, each
    example routed (pyvene ``subspaces``) to its task's blocks, then split per task.
    ``task`` supplies the logits (answer tokens) used for the loss.
    """
    from roadinterp.training import train_adapter

    names = list(tasks_data)
    if set(names) != set(owners):
        raise ConfigError(f"owners {sorted(owners)} must name the same tasks as tasks_data {sorted(names)}")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(owners[a]) & set(owners[b]))
            if shared:
                raise OverlapError(f"tasks {a!r} and {b!r} both own blocks {shared[:8]}; give each its own blocks")
    sites = list(sites)
    targets = {s.key(): validate_site(model, s) for s in sites}
    common = dict(task=task, steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=threads)

    def make(blocks, name):
        return RoadAdapter(targets, variant=variant, group_size=group_size, blocks=blocks,
                           meta={"task": name, "joint": joint, "seed": seed})

    if not joint:
        out = {}
        for name in names:
            ad = make(owners[name], name)
            ivs = adapter_interventions(ad)
            inputs, labels = tasks_data[name]
            train_adapter(model, sites, [ivs[s.key()] for s in sites], inputs, labels, **common)
            out[name] = ad
        return out

    union = sorted(set().union(*(set(owners[n]) for n in names)))
    ad = make(union, "+".join(names))
    ivs = adapter_interventions(ad)
    keys = list(tasks_data[names[0]][0])
    inputs = {k: torch.cat([tasks_data[n][0][k] for n in names]) for k in keys}
    labels = torch.cat([tasks_data[n][1] for n in names])
    routes = [list(owners[n]) for n in names for _ in range(len(tasks_data[n][1]))]
    train_adapter(model, sites, [ivs[s.key()] for s in sites], inputs, labels, routes=routes, **common)
    return {n: restrict(ad, owners[n], meta={"task": n, "joint": True, "seed": seed}) for n in names}


# -------------------------------------------------------------- behaviour table
def combine(adapters: Mapping[str, object]):
    """The A+B condition: :func:`compose` for RoAd, row stacking for LoReFT."""
    values = list(adapters.values())
    if all(isinstance(a, LoreftAdapter) for a in values):
        return concat_loreft(adapters)
    return compose(adapters)


def behaviour_table(model, adapters: Mapping[str, object], sites: Sequence[Site] | None = None, *,
                    n: int = 1000, split: str = "test", seed: int = 12345, combined=None):
    """Accuracy of base / each adapter / all combined, on every behaviour target.

    ``adapters``: ``{behaviour: adapter}`` with behaviours from ``roadinterp.tasks.BEHAVIOURS``
    (e.g. ``{"op": A, "format": B}``). Rows: conditions ``base``, ``op only``, ``format only``,
    ``op+format``; columns: targets ``base``, ``op``, ``format``, ``op+format``.
    ``combined`` overrides the composed adapter (default :func:`combine`).
    """
    import pandas as pd

    from roadinterp.tasks import BEHAVIOURS, behaviour_data

    names = list(adapters)
    for nm in names:
        if nm not in BEHAVIOURS:
            raise ConfigError(f"behaviour_table keys must be behaviours {BEHAVIOURS}, got {nm!r}")
    both = "+".join(names)
    targets = {"base": (), **{nm: (nm,) for nm in names}, both: tuple(names)}
    data = {t: behaviour_data(n, behaviours=b, split=split, seed=seed) for t, b in targets.items()}
    conditions = {"base": None, **{f"{nm} only": adapters[nm] for nm in names},
                  both: combined if combined is not None else combine(adapters)}
    rows = []
    for cname, ad in conditions.items():
        row = {"condition": cname}
        for t, (x, y) in data.items():
            row[t] = evaluate(model, ad, x, y, "behaviour-base", sites)
        rows.append(row)
    return pd.DataFrame(rows).set_index("condition")
