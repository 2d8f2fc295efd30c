"""Train the seeds of a search cell together: which configs can share a step, and the entry point.

An alignment search trains the same cell several times with different seeds. For
small models almost all of a DII step is fixed cost (pyvene's or the replay's
machinery, Python, optimizer bookkeeping), not arithmetic, so K seeds trained one
after the other cost ~K times one seed. :func:`train_dii_batched` hands K configs
that may share a step to the fit loop (:func:`roadinterp.dii.fit.fit_cell`), which
stacks their interventions into one ``RoadInterchange`` with a candidate axis and
trains them in shared forwards; every candidate ends where ``train_dii`` would have
(up to float summation order). :func:`batch_groups` decides who may share: the
family must say so in the registry (``Family.batched``: ``neuron-fixed``, ``road``,
``butterfly``) and the configs must agree on everything but the seed (road-like
families also on strides); other families fall back to one ``train_dii`` per config.
"""

from __future__ import annotations

from collections.abc import Sequence

from roadinterp.dii.config import DIIConfig, TrainResult, cell_variables, check_cell
from roadinterp.dii.fit import fit_cell
from roadinterp.dii.train import train_dii
from roadinterp.errors import ConfigError
from roadinterp.interventions import get_family, list_families
from roadinterp.sites import Site

# ------------------------------------------------------------------ grouping
def supports_batched(family: str) -> bool:
    """Whether the family's candidates can share one step (``Family.batched`` in the registry)."""
    return get_family(family).batched


def _structure(config: DIIConfig, width: int, n_vars: int):
    """What must be equal for two configs to share one batch (the family's ``batch_key``; None: not batchable)."""
    fam = get_family(config.family)
    if not fam.batched or fam.batch_key is None:
        return None
    return fam.batch_key(config, width, n_vars)


def batch_groups(configs: Sequence[DIIConfig], width: int, n_vars: int) -> list[list[int]]:
    """Indices of ``configs`` grouped into batches ``train_dii_batched`` accepts, in order.

    Unbatchable configs (families other than neuron-fixed/road/butterfly) form groups of one.
    """
    groups: dict = {}
    out: list[list[int]] = []
    for i, c in enumerate(configs):
        key = _structure(c, width, n_vars)
        if key is None:
            out.append([i])
        elif key in groups:
            groups[key].append(i)
        else:
            groups[key] = [i]
            out.append(groups[key])
    return out


def _check_batchable(configs: Sequence[DIIConfig], width: int, n_vars: int) -> None:
    keys = {_structure(c, width, n_vars) for c in configs}
    if None in keys or len(keys) != 1:
        fams = sorted({c.family for c in configs})
        raise ConfigError(
            f"configs cannot share one batch (families {fams}): they may differ only in seed (and road/butterfly "
            f"with the same strides); families {', '.join(f for f in list_families() if supports_batched(f))} only. "
            "Use roadinterp.dii.batched.batch_groups to split them"
        )


# ------------------------------------------------------------------ training
def train_dii_batched(
    model, task, site: Site, configs: Sequence[DIIConfig], *, data: Sequence | None = None,
    fallback: bool = True, width: int | None = None,
) -> list[TrainResult]:
    """Train every config of ``configs`` in shared forwards; one TrainResult per config, in order.

    Equivalent to ``[train_dii(model, task, site, config=c) for c in configs]`` (same
    data, data order and initialisation per seed; IIA equal up to float summation
    order), but K candidates cost about one forward/backward per step. ``data``
    optionally gives ``(train, test)`` per config. Configs that cannot be batched
    together are grouped with :func:`batch_groups`; with ``fallback`` unbatchable
    families (das, lowrank, boundless, ...) run one ``train_dii`` each, otherwise
    they raise ConfigError. ``TrainResult.seconds`` is the group's wall time / K. ``width``: the
    site's width from a caller that has checked every config's cell (a search does, once).
    """
    configs = [c if isinstance(c, DIIConfig) else DIIConfig(**c) for c in configs]
    if not configs:
        return []
    if data is not None and len(data) != len(configs):
        raise ConfigError(f"data has {len(data)} entries but there are {len(configs)} configs")
    checked = width is not None
    if not checked:
        width = check_cell(model, task, site, configs[0])
    n_vars = len(cell_variables(task, configs[0]))
    results: list[TrainResult | None] = [None] * len(configs)
    for group in batch_groups(configs, width, n_vars):
        cs = [configs[i] for i in group]
        ds = [data[i] for i in group] if data is not None else None
        if not supports_batched(cs[0].family):
            if not fallback:
                _check_batchable(cs, width, n_vars)
            out = [train_dii(model, task, site, config=cs[0], data=ds[0] if ds else None,
                             width=width if checked else None)]
        else:
            out = _fit_group(model, task, site, cs, ds, width, checked)
        for i, r in zip(group, out):
            results[i] = r
    return results  # type: ignore[return-value]


def _fit_group(model, task, site: Site, configs: list[DIIConfig], data, width: int,
               checked: bool = False) -> list[TrainResult]:
    for c in configs if not checked else ():
        check_cell(model, task, site, c)
    _check_batchable(configs, width, len(cell_variables(task, configs[0])))
    return fit_cell(model, task, site, configs, data, width)
