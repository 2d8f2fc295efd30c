"""One unit of work of a search (:class:`Job`) and the function that runs it (:func:`run_job`).

A job is one cell, or with ``batched`` every seed of a batchable cell (the seeds then share
one forward per step, :mod:`roadinterp.dii.batched`). It carries everything a fresh process
needs, as picklable dataclasses: the :class:`~roadinterp.search.config.SearchConfig` itself
(not its JSON), the cells (validated once by :func:`roadinterp.search.cells.resolve`; the
job does not check them again), the model spec, where the frozen model sits, the run
directory and, for a task the worker cannot find by name, the task object. :func:`run_job`
trains the cells and their controls in whatever process runs it and returns a
:class:`JobResult`: one row per cell and the subspace each learned, so the search computes
seed agreement in memory. Executors (:mod:`roadinterp.search.executors`) only move jobs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from roadinterp.controls import null_iia
from roadinterp.dii.config import DIIConfig, make_data
from roadinterp.dii.train import train_dii
from roadinterp.errors import ConfigError
from roadinterp.search.cells import Cell
from roadinterp.search.config import SearchConfig
from roadinterp.search.frozen import get_bound_task, get_model, get_random_model, place
from roadinterp.sites import Site, validate_site
from roadinterp.store import saved_path


@dataclass(frozen=True)
class Job:
    """One unit of work: cells that differ only in seed, and what a fresh process needs to train them."""

    config: SearchConfig
    cells: tuple[Cell, ...]
    model: str  # the model spec (run.json's ``model``)
    batched: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    save_dir: str | None = None  # the run directory (learned interchanges and subspaces go under it)
    task: Any = None  # the Task object, when a worker cannot find it by name (registered by the caller)

    def __post_init__(self) -> None:
        first = self.cells[0]
        if any((c.family, c.site, c.size) != (first.family, first.site, first.size) for c in self.cells):
            raise ConfigError("a job holds cells that differ only in seed")


@dataclass
class JobResult:
    rows: list[dict[str, Any]]  # one per cell of the job, in order
    bases: dict[str, Any] = field(default_factory=dict)  # cell key -> its learned SubspaceBasis (rotated families)


def run_job(job: Job) -> JobResult:
    """Train and score the job's cells (and their controls); safe to run in any process."""
    config = job.config
    from roadinterp.tasks import get_task, list_tasks, register_task

    if job.task is not None and config.task not in {t.name for t in list_tasks()}:
        register_task(job.task)
    get_task(config.task)  # before the model: a file.py:NAME task's import registers the zoo entries it defines
    model = get_model(job.model, job.device, job.dtype)
    task = get_bound_task(config.task, job.model, job.device, job.dtype, config.template)
    cells, site = job.cells, job.cells[0].site
    width = validate_site(model, site)  # the cell was checked by resolve(); this is only its width
    t0 = time.perf_counter()
    configs, data, mains = _train_cells(config, model, task, site, cells, job.batched, width)
    rows, bases = [], {}
    for cell, main, (_, test) in zip(cells, mains, data):
        row = {"task": task.name, "model": job.model, **main.row()}
        row.pop("hypothesis", None)
        row.update(iia_random_model=None, iia_rival=None, rival=None, iia_null=null_iia(test))
        rows.append(row)
        basis = learned(main)
        if basis is not None:
            bases[cell.key] = basis
        if job.save_dir is not None:
            save_learned(job.save_dir, cell.slug(), main, basis)
    if config.controls:
        rnd = _train_many(get_random_model(job.model, job.device, job.dtype), task, site, configs, data,
                          job.batched, width)
        for cell, row, r in zip(cells, rows, rnd):
            row["iia_random_model"] = r.iia
            if job.save_dir is not None:
                save_learned(job.save_dir, cell.slug("random_model"), r, learned(r))
        _run_controls(config, task, model, site, cells, rows, mains, job.batched, width)
    per_cell = (time.perf_counter() - t0) / len(cells)
    for row in rows:
        row["seconds"] = per_cell
    return JobResult(rows, bases)


def _train_cells(config: SearchConfig, model, task, site: Site, cells: Sequence[Cell], batched: bool, width: int,
                 hypothesis: str = "main"):
    """``(configs, data, results)`` of ``cells`` trained for ``hypothesis``; ``data`` holds each
    config's (train, test) counterfactuals on the model's device and dtype."""
    configs = [config.cell(c.family, c.size, c.seed, hypothesis=hypothesis) for c in cells]
    data = [tuple(place(b, model) for b in make_data(task, d)) for d in configs]
    return configs, data, _train_many(model, task, site, configs, data, batched, width)


def _train_many(model, task, site: Site, configs: list[DIIConfig], data, batched: bool, width: int):
    if batched and len(configs) > 1:
        from roadinterp.dii.batched import train_dii_batched

        return train_dii_batched(model, task, site, configs, data=data, width=width)
    return [train_dii(model, task, site, config=c, data=d, width=width) for c, d in zip(configs, data)]


def learned(result):
    """The subspace a trained cell's rotation swaps (a SubspaceBasis; None for unrotated families)."""
    from roadinterp.subspace import learned_basis

    if not result.interventions:
        return None
    return learned_basis(result.interventions[0], result.coords, family=result.config.family,
                         variables=result.variables)


def save_learned(save_dir: str | os.PathLike, slug: str, result, basis=None) -> None:
    """Save what a trained cell learned: its RoAd interchange (``cells/<slug>``) and, for a
    rotated family, the subspace each variable swaps (``subspaces/<slug>``)."""
    from roadinterp import io

    from roadinterp.interventions import get_family

    if result.interventions and get_family(result.config.family).saves_state:
        io.save(result.interventions[0], saved_path(save_dir, slug, "cell"))
    if basis is not None:
        io.save(basis, saved_path(save_dir, slug, "subspace"))


def _run_controls(config, task, model, site, cells, rows, mains, batched, width) -> None:
    """Site patch, row space and every rival (:mod:`roadinterp.controls`), into ``rows``."""
    from roadinterp import controls as C

    test_seed, n_test, engine = config.dii.test_seed, config.dii.n_test, config.dii.engine
    joint = place(C.joint_counterfactuals(task, n_test, seed=test_seed, variables=config.variables)[0], model)
    patch = C.site_patch_iia(model, task, site, C.single_source(joint), engine=engine)  # the same for every seed
    for row, main in zip(rows, mains):
        row.update(C.site_controls(model, task, site, main, n=n_test, seed=test_seed, engine=engine,
                                   data=joint, site_patch=patch))
    for rival in task.rivals:
        _, rdata, rivals = _train_cells(config, model, task, site, cells, batched, width, hypothesis=rival)
        rjoint = place(C.joint_counterfactuals(task, n_test, seed=test_seed, hypothesis=rival)[0], model)
        rsite = C.site_patch_iia(model, task, site, C.single_source(rjoint), engine=engine)
        for row, r, (_, rtest) in zip(rows, rivals, rdata):
            row.update(C.rival_columns(rival, r.iia, r.train_iia, null_iia(rtest), rsite))
    for row in rows:
        row.update(C.strongest_rival(row))
