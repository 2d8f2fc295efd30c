"""The cells of a search: one (family, layer, component, position, size, seed) each, checked once.

:class:`Cell` is a cell and seed: its identity is :class:`roadinterp.cellid.CellId` (``key``,
results.csv's ``key`` column and the store's primary key; ``slug``, its run files' name;
``label``, how progress lines name it), plus the site it trains at. :func:`resolve` expands a
:class:`~roadinterp.search.config.SearchConfig` into its cells on the loaded model and
validates every distinct site, position and size once, before any training (the jobs do
not check again). :func:`group_cells` makes the units of work (:class:`~roadinterp.search.jobs.Job`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from roadinterp import bounds
from roadinterp.dii.config import cell_variables, check_cell
from roadinterp.errors import ConfigError
from roadinterp.search.config import SearchConfig
from roadinterp.sites import Site, n_layers, sequence_length, validate_site
from roadinterp.cellid import CellId


@dataclass(frozen=True)
class Cell(CellId):
    """One cell and seed of a search: its identity (:class:`roadinterp.cellid.CellId`: key, slug,
    label) and the :class:`~roadinterp.sites.Site` it trains at."""

    seed: int = 0

    @property
    def site(self) -> Site:
        return Site(self.layer, self.component, self.position)


def resolve(config: SearchConfig, model, task) -> list[Cell]:
    """Every cell of ``config`` on ``model``; each distinct site, position and size validated once."""
    layers = config.layers if config.layers is not None else list(range(n_layers(model)))
    n_cells = math.prod(map(len, (config.families, layers, config.components, config.positions, config.sizes)))
    if n_cells * config.seeds > bounds.MAX_CELLS:
        raise ConfigError(f"the grid has {n_cells * config.seeds:,} cells ({n_cells:,} x {config.seeds:,} seeds); "
                          f"at most {bounds.MAX_CELLS:,} per run: narrow --layers/--size/--family or lower --seeds")
    cells = [
        Cell(f, l, c, p, s, seed)
        for f, l, c, p, s, seed in itertools.product(
            config.families, layers, config.components, config.positions, config.sizes, range(config.seeds)
        )
    ]
    checked = set()
    for cell in cells:
        sig = (cell.family, cell.layer, cell.component, cell.position, cell.size)
        if sig not in checked:
            check_cell(model, task, cell.site, config.cell(cell.family, cell.size, 0))
            for rival in task.rivals if config.controls else ():  # rivals align all their own variables
                check_cell(model, task, cell.site, config.cell(cell.family, cell.size, 0, hypothesis=rival))
            if isinstance(cell.position, str) and cell.position not in ("last", "all") and cell.position not in task.positions:
                known = dict.fromkeys(["last", "all", *task.positions])
                raise ConfigError(f"unknown position {cell.position!r} for task {task.name}; known: {', '.join(known)}")
            checked.add(sig)
    _check_positions_and_memory(config, task, model, cells)
    return cells


def _check_positions_and_memory(config: SearchConfig, task, model, cells: Sequence[Cell]) -> None:
    """Every position exists in the task's inputs (a per-row one in its batches), and one unit of work's
    tensors fit in memory."""
    d = config.cell(cells[0].family, cells[0].size, 0)
    variables = cell_variables(task, d)
    sample = task.counterfactuals(2, split="train", seed=0, variables=variables, mode=d.mode)
    seq = sequence_length(sample.base)
    for position in dict.fromkeys(c.position for c in cells):
        if isinstance(position, str) and task.positions.get(position, 0) is None:  # per row: from the batches
            if position not in (sample.positions or {}):
                raise ConfigError(f"position {position!r} of task {task.name} differs per example, but its "
                                  "counterfactual batches carry no per-row index for it")
            continue
        Site(cells[0].layer, cells[0].component, position).position_indices(seq, task.positions)
    width = max(validate_site(model, c.site) for c in {(c.layer, c.component): c for c in cells}.values())
    n_states = 1 + len(variables)  # cached site states per counterfactual (base + one source per variable)
    bounds.check_rows_memory(
        "n_train + n_test", config.dii.n_train + config.dii.n_test,
        lambda k: task.counterfactuals(k, split="train", seed=0, variables=variables, mode=d.mode),
        extra_per_row=n_states * width * 4, copies=config.seeds, what="counterfactuals")


def group_cells(cells: Sequence[Cell], batched: bool) -> list[list[Cell]]:
    """Units of work: one cell each, or with ``batched`` all seeds of a batchable cell together."""
    if not batched:
        return [[c] for c in cells]
    from roadinterp.interventions import get_family

    groups: dict[tuple, list[Cell]] = {}
    out: list[list[Cell]] = []
    for c in cells:
        if not get_family(c.family).batched:
            out.append([c])
            continue
        key = (c.family, c.layer, c.component, c.position, c.size)
        if key not in groups:
            groups[key] = []
            out.append(groups[key])
        groups[key].append(c)
    return out
