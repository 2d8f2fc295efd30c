"""``search()``: a SearchConfig in, one row per cell out, stored crash-safely as it goes.

The flow, top to bottom: the config (built and validated once) and the
:class:`~roadinterp.search.options.RunOptions` -> the frozen model and bound task on the
device and dtype asked for (:mod:`roadinterp.search.frozen`) -> every cell, checked once
(:func:`roadinterp.search.cells.resolve`) -> :class:`~roadinterp.search.jobs.Job` objects ->
an executor (:mod:`roadinterp.search.executors`) -> each job's rows into the
:class:`~roadinterp.store.RunStore`, with seed agreement computed here from the subspaces the
jobs return (a resumed run's earlier seeds are read from their saved files), and MIB's aggregates
(:mod:`roadinterp.aggregates`: per layer the best position, then the mean and max over layers)
rewritten to ``aggregates.json`` beside results.csv after every cell.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from roadinterp.aggregates import write_aggregates
from roadinterp.dii.config import default_batch_size
from roadinterp.errors import ConfigError, RoadinterpError
from roadinterp.search.cells import Cell, group_cells, resolve
from roadinterp.search.config import SearchConfig
from roadinterp.search.executors import interrupts_deferred, make_executor, shippable_task
from roadinterp.search.frozen import get_bound_task, get_model, use_module
from roadinterp.search.jobs import Job, JobResult
from roadinterp.search.options import RunOptions
from roadinterp.store import RunStore, rows_to_frame, saved_path
from roadinterp.zoo import default_model

_RUN_FIELDS = {f.name for f in fields(RunOptions)}


def search(
    config: SearchConfig | None = None, *, options: RunOptions | None = None, out: str | None = None,
    resume: bool = False, overwrite: bool = False, on_cell: Callable[[Cell, dict, int, int], None] | None = None,
    tokenizer=None, **overrides,
) -> pd.DataFrame:
    """Run a search; return one row per cell. With ``out``, results are stored crash-safely.

    ``overrides`` are SearchConfig fields (``search(task="hierarchical-equality", families=["das"])``)
    or RunOptions fields (``workers=2``, ``batched=False``, ``engine="pyvene"``, ``device``, ``dtype``,
    ``executor``, ``ray_address``), over ``config`` and ``options``. The defaults of RunOptions are the
    CLI's. None of the run options is part of the run's identity (run.json holds no engine, device or
    dtype): per-step outputs agree to float error in float32 (long runs can still differ where seeds are
    unstable; docs/performance.md#replay), to bf16 rounding in bfloat16, so a run may resume on another.

    ``model`` may be a spec (``zoo:NAME``, a directory, a ``.gguf`` file, a hub id) or an
    ``nn.Module`` (with ``tokenizer=`` for prompt tasks; it runs in this process only).
    ``task`` may be a registered name or ``path/to/file.py:NAME`` / ``package.module:NAME``;
    a task registered by the caller's own code is sent to worker processes.
    """
    run = {k: overrides.pop(k) for k in list(overrides) if k in _RUN_FIELDS}
    options = replace(options or RunOptions(), **run) if run else (options or RunOptions())
    module = overrides.get("model", config.model if config else None)
    if not isinstance(module, (str, type(None))):
        overrides["model"] = use_module(module, tokenizer)
        if options.workers > 1 or options.executor != "local":
            raise ConfigError("a model given as an nn.Module lives in this process: use workers=1 and the local "
                              "executor, or save it (save_pretrained) and pass its directory")
    if overrides or config is None:  # built once: the flat training keywords fold into dii
        base = {f.name: getattr(config, f.name) for f in fields(config)} if config else {}
        config = SearchConfig.from_json({**base, **overrides})
    if options.engine is not None and options.engine != config.dii.engine:
        config = replace(config, dii=replace(config.dii, engine=options.engine))
    from roadinterp.tasks import get_task

    spec = config.model or default_model(get_task(config.task).name)
    model = get_model(spec, options.device, options.dtype)
    task = get_bound_task(config.task, spec, options.device, options.dtype, config.template)
    if config.template == "auto":  # run.json records the form the prompts were written in
        config = replace(config, template=getattr(task, "template", "raw"))
    cells = resolve(config, model, task)  # every cell checked once, before any training
    config_json = config.to_json()
    config_json["model"] = spec
    config_json["batch_size"] = config.dii.steps_batch  # run.json says the batch a run trained with
    store = RunStore(out, _run_identity(out, config_json), resume=resume, overwrite=overwrite) if out else None
    rows: list[dict] = store.rows() if store else []
    by_key = {r["key"]: r for r in rows if "key" in r}
    bases: dict[str, Any] = {}
    done = store.done_keys() if store else set()
    todo = [c for c in cells if c.key not in done]
    total, finished = len(cells), len(cells) - len(todo)

    def on_result(job: Job, result: JobResult) -> None:
        nonlocal finished
        bases.update(result.bases)
        for cell, row in zip(job.cells, result.rows):
            row["key"] = cell.key
            by_key[cell.key] = row
            if store:
                with interrupts_deferred():  # a Ctrl-C now lands after the cell is committed, not inside it
                    store.add(cell.key, row)
                    changed = seed_agreement(out, cell, config.seeds, by_key, bases)
                    if changed:
                        store.update(changed)
                    write_aggregates(out, rows_to_frame([*by_key.values()]), config_json)  # MIB's, beside results.csv
            rows.append(row)
            finished += 1
            if on_cell:
                on_cell(cell, row, finished, total)

    remote = options.workers > 1 or options.executor != "local"
    task_obj = shippable_task(config.task) if remote else None
    groups = group_cells(todo, options.batched)
    jobs = [Job(config, tuple(g), spec, options.batched, options.device, options.dtype, out, task_obj)
            for g in groups]
    try:
        make_executor(options.executor, options.workers, options.ray_address, len(jobs)).run(jobs, on_result)
        if store and not jobs and rows:  # a resumed run with nothing left: its companion file still follows the rows
            write_aggregates(out, rows_to_frame(rows), config_json)
    except BaseException:
        if store:
            store.discard_if_empty()  # a run refused or stopped before its first cell leaves nothing behind
        raise
    finally:
        if store:
            store.close()
    return rows_to_frame(rows)


def seed_agreement(out, cell: Cell, n_seeds: int, rows: dict[str, dict], bases: dict[str, Any]) -> dict[str, dict]:
    """Seed agreement of ``cell``'s finished seeds written into their rows; the rows it changed.

    The subspaces come from ``bases`` (this session's jobs); a seed finished in an earlier
    session (``--resume``) is read from its saved file. Nothing when fewer than two seeds have one.
    """
    from roadinterp.subspace import agreement_of, load_bases

    seeds = [c for c in (cell.with_seed(s) for s in range(n_seeds)) if c.key in rows]
    have = []
    for c in seeds:
        if c.key in bases:
            have.append(bases[c.key])
        elif out is not None:
            have += load_bases([saved_path(out, c.slug(), "subspace")])
    if len(have) < 2:
        return {}
    agree, chance = agreement_of(have)
    for c in seeds:
        rows[c.key].update(seed_agreement=agree, seed_agreement_chance=chance)
    return {c.key: rows[c.key] for c in seeds}


def _identity(config_json: dict[str, Any]) -> dict[str, Any]:
    """What decides whether two run.json describe one run: the config without the engine, with
    the default batch size written as the number it is."""
    ident = {k: v for k, v in config_json.items() if k != "engine"}
    if ident.get("batch_size") is None and isinstance(ident.get("n_train"), int):
        ident["batch_size"] = default_batch_size(ident["n_train"])
    return ident


def _run_identity(out: str | os.PathLike, config_json: dict[str, Any]) -> dict[str, Any]:
    """What run.json holds: the config without the engine (not part of a run's identity). A
    directory whose run.json is the same run written by an older version (fewer training
    fields, defaults then implied) keeps its file, so old runs resume."""
    ident = {k: v for k, v in config_json.items() if k != "engine"}
    stored_path = Path(out) / "run.json"
    if not stored_path.exists():
        return ident
    try:
        stored = json.loads(stored_path.read_text())
        stored.setdefault("template", "raw")  # runs before prompt tasks had a chat form wrote raw prompts
        again = SearchConfig.from_json({k: v for k, v in stored.items() if k != "model"}).to_json()
    except (ValueError, RoadinterpError, TypeError, AttributeError):
        return ident  # a foreign run.json: RunStore says how it differs
    again["model"] = stored.get("model")
    return stored if _identity(again) == _identity(ident) else ident
