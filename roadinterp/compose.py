"""Multi-task composition by subspace: one task, one set of 2D blocks.

A RoAd map is block-diagonal in 2x2 blocks, and a block outside an adapter's
subspace is exactly the identity. Two adapters trained on *disjoint* block sets
therefore commute, and applying both is the single map that uses A's parameters on
A's blocks and B's on B's: ``R_{A u B} = R_A (+) R_B`` (:func:`compose`, exact).

Adapters can be trained for composition in two ways (:func:`train_composable`):

* **separately**: one adapter per task, each restricted to its own blocks;
* **jointly with routing** (the RoAd paper's composition experiment): one adapter over
  the union of the blocks, where each example's pyvene ``subspaces`` are its task's
  blocks, so an example of task A only moves A's blocks.

:func:`evaluate` and :func:`behaviour_table` measure what composition does to
behaviour (base / A only / B only / A+B on each target). Exact composition of the
maps does not promise composition of behaviours: the network after the site is
nonlinear; that is what the table measures.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch

from roadinterp.adapter import RoadAdapter
from roadinterp.errors import ConfigError, OverlapError, ShapeError
from roadinterp.interventions import attach_sourceless, run_sourceless
from roadinterp.interventions.loreft import LoreftAdapter, concat_loreft
from roadinterp.interventions.road import RoadIntervention
from roadinterp.road import rotation as rot
from roadinterp.sites import Site, sequence_length, validate_site

Resolve = Literal["error", "first", "mean"]

__all__ = [
    "adapter_interventions", "behaviour_table", "compose", "evaluate", "forward", "owned_blocks",
    "restrict", "split_blocks", "train_composable",
]


# --------------------------------------------------------------------- blocks
def split_blocks(n_blocks: int, names: Sequence[str], fractions: Sequence[float] | None = None) -> dict[str, list[int]]:
    """Disjoint, contiguous block sets ``{name: [blocks]}`` covering ``0..n_blocks-1``.

    ``fractions`` (default: equal) give each name's share; they must be positive and
    sum to at most 1 (leftover blocks stay unowned, i.e. identity).
    """
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"names must be distinct and non-empty, got {names}")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < len(names):
        raise ConfigError(f"n_blocks must be an int >= {len(names)} (one block per name), got {n_blocks!r}")
    if fractions is None:
        fractions = [1 / len(names)] * len(names)
    fractions = [float(f) for f in fractions]
    if len(fractions) != len(names) or any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ConfigError(f"fractions must be {len(names)} positive numbers summing to <= 1, got {fractions}")
    out, start = {}, 0
    for name, f in zip(names, fractions):
        k = max(1, int(round(f * n_blocks)))
        k = min(k, n_blocks - start)
        if k < 1:
            raise ConfigError(f"no blocks left for {name!r}: {n_blocks} blocks, fractions {fractions}")
        out[name] = list(range(start, start + k))
        start += k
    return out


def owned_blocks(adapter: RoadAdapter, target: str) -> list[int]:
    """The blocks an adapter acts on at ``target`` (all of them when ``blocks`` is None)."""
    r = adapter.rotation(target)
    return list(range(r.dim // 2)) if adapter.blocks is None else list(adapter.blocks)


def restrict(adapter: RoadAdapter, blocks: Sequence[int], *, meta: Mapping | None = None) -> RoadAdapter:
    """A copy of ``adapter`` acting only on ``blocks`` (parameters elsewhere reset to identity)."""
    config, tensors = adapter.to_state()
    config = {**config, "blocks": sorted(int(b) for b in blocks), "meta": dict(meta or adapter.meta)}
    tensors = dict(tensors)
    for key, r in adapter.items():
        keep = rot.block_param_mask(torch.tensor(config["blocks"], dtype=torch.long), r.dim, r.variant, r.group_size)
        tensors[f"{key}.theta"] = torch.where(keep, r.theta.detach(), torch.zeros_like(r.theta))
        tensors[f"{key}.alpha"] = torch.where(keep, r.alpha.detach(), torch.ones_like(r.alpha))
    return RoadAdapter.from_state(config, tensors)


# -------------------------------------------------------------------- compose
def _check_compatible(adapters: Mapping[str, RoadAdapter]) -> None:
    names = list(adapters)
    first = adapters[names[0]]
    for n in names:
        a = adapters[n]
        if not isinstance(a, RoadAdapter):
            raise ConfigError(f"compose takes RoadAdapters, got {type(a).__name__} for {n!r}")
        if a.placement != first.placement:
            raise ConfigError(f"adapters {names[0]!r} and {n!r} have different placements: "
                              f"{first.placement!r} vs {a.placement!r}")
        if a.variant != first.variant:
            raise ConfigError(f"adapters {names[0]!r} and {n!r} have different variants: "
                              f"{first.variant!r} vs {a.variant!r}; compose needs one variant")
        if a.targets != first.targets:
            raise ShapeError(f"adapters {names[0]!r} and {n!r} act on different targets or widths: "
                             f"{first.targets} vs {a.targets}")
        if a.group_sizes != first.group_sizes:
            raise ShapeError(f"adapters {names[0]!r} and {n!r} use different group sizes: "
                             f"{first.group_sizes} vs {a.group_sizes}")


def compose(
    adapters: Mapping[str, RoadAdapter], *, weights: Mapping[str, float] | None = None, resolve: Resolve = "error",
) -> RoadAdapter:
    """One adapter acting on the union of the components' block sets.

    On disjoint blocks the result equals applying every component (they commute; each
    is the identity outside its blocks). ``weights`` scales a component first
    (angles x lambda, alpha 1 -> alpha; see :meth:`RoadAdapter.scaled`): lambda 0 removes
    it, 1 keeps it. Overlapping blocks raise :class:`OverlapError` unless ``resolve`` is
    ``"first"`` (a shared block keeps the parameters of the first adapter, in mapping
    order, that owns it) or ``"mean"`` (theta and alpha averaged over the owners).
    The result's ``meta["owners"]`` is ``{name: blocks}``.
    """
    if not adapters:
        raise ConfigError("compose needs at least one adapter")
    if resolve not in ("error", "first", "mean"):
        raise ConfigError(f"resolve must be 'error', 'first' or 'mean', got {resolve!r}")
    weights = dict(weights or {})
    unknown_w = sorted(set(weights) - set(adapters))
    if unknown_w:
        raise ConfigError(f"weights name adapters that are not composed: {unknown_w}; adapters: {list(adapters)}")
    _check_compatible(adapters)
    names = list(adapters)
    first = adapters[names[0]]
    key0 = next(iter(first.targets))
    owners = {n: owned_blocks(adapters[n], key0) for n in names}

    if resolve == "error":
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = sorted(set(owners[a]) & set(owners[b]))
                if shared:
                    head = ", ".join(map(str, shared[:8])) + (", ..." if len(shared) > 8 else "")
                    raise OverlapError(
                        f"adapters {a!r} and {b!r} both own {len(shared)} block(s): {head}; train them on "
                        "disjoint blocks (roadinterp.compose.split_blocks) or pass resolve='first' or 'mean'"
                    )

    parts = {n: (adapters[n].scaled(weights[n]) if n in weights else adapters[n]) for n in names}
    union = sorted(set().union(*map(set, owners.values())))
    config, _ = first.to_state()
    config = {**config, "blocks": union, "meta": {"owners": owners, "weights": weights, "resolve": resolve}}
    tensors = {}
    for key, r0 in first.items():
        theta = torch.zeros_like(r0.theta)
        alpha = torch.ones_like(r0.alpha)
        tsum, asum = torch.zeros_like(theta), torch.zeros_like(alpha)
        count = torch.zeros_like(theta)
        taken = torch.zeros(theta.shape, dtype=torch.bool)
        for n in names:
            r = parts[n].rotation(key)
            mask = rot.block_param_mask(torch.tensor(owners[n], dtype=torch.long), r.dim, r.variant, r.group_size)
            if resolve == "mean":
                tsum += torch.where(mask, r.theta.detach(), 0.0)
                asum += torch.where(mask, r.alpha.detach(), 0.0)
                count += mask.to(count.dtype)
            else:
                new = mask & ~taken
                theta = torch.where(new, r.theta.detach(), theta)
                alpha = torch.where(new, r.alpha.detach(), alpha)
                taken |= mask
        if resolve == "mean":
            has = count > 0
            theta = torch.where(has, tsum / count.clamp(min=1), theta)
            alpha = torch.where(has, asum / count.clamp(min=1), alpha)
        tensors[f"{key}.theta"], tensors[f"{key}.alpha"] = theta, alpha
    return RoadAdapter.from_state(config, tensors)


# ------------------------------------------------------------------ attaching
def adapter_interventions(adapter) -> dict[str, object]:
    """pyvene interventions for each site target, *sharing* the adapter's parameters.

    RoAd: a ``RoadIntervention`` whose ``rotation`` is the adapter's own
    ``RoadRotation`` (training the intervention trains the adapter). LoReFT adapters
    already hold interventions.
    """
    if isinstance(adapter, LoreftAdapter):
        return dict(adapter.items())
    if not isinstance(adapter, RoadAdapter):
        raise ConfigError(f"expected a RoadAdapter or LoreftAdapter, got {type(adapter).__name__}")
    if adapter.placement != "site":
        raise ConfigError(f"adapter placement is {adapter.placement!r}; only 'site' adapters attach through "
                          "pyvene (use roadinterp.linear for 'linear' adapters)")
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

    task = get_task(task) if isinstance(task, str) else task
    was = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(labels), batch_size):
            batch = {k: v[i:i + batch_size] for k, v in inputs.items()}
            out = forward(model, adapter, batch, sites=sites, named_positions=task.positions)
            correct += int((task.logits(out).argmax(-1) == labels[i:i + batch_size]).sum())
    finally:
        model.train(was)
    return correct / len(labels)


# ------------------------------------------------------------------- training
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
    from roadinterp.dii.train import train_adapter

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
