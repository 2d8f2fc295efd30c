"""Causal alignment search: train a DII for every cell of a grid, with controls.

A *cell* is (family, layer, component, position, size, seed). For each cell a DII is trained
on the task's main hypothesis and scored on held-out IIA; with controls on, the same cell is
also trained on a randomly initialised copy of the model, for every rival hypothesis, against
the no-op baseline, by patching the whole site and by the row-space part of the subspace
(:mod:`roadinterp.controls`). Several seeds per cell give mean and spread;
:func:`roadinterp.summary.summarize` names the best alignment by *mean* IIA.

The package, one floor per module (each imports only those above it in this list):

    config.py     SearchConfig: what runs (run.json; validated once; no torch import)
    options.py    RunOptions: how it runs (one set of defaults for CLI and Python); fields -> CLI options, docs table
    frozen.py     the frozen model, its random-init twin and the bound task, once per process, device and dtype
    cells.py      Cell (a cell's identity: key, slug); resolve() checks every cell once; group_cells()
    jobs.py       Job (one unit of work, picklable) and run_job() -> JobResult (rows + learned subspaces)
    executors.py  Executor: LocalExecutor, PoolExecutor (spawned workers), RayExecutor; all run run_job
    pipeline.py   search(): config -> cells -> jobs -> executor -> store, seed agreement in memory

Names are loaded on first use, so ``roadinterp.search.config`` reads without torch. The
package itself is callable: ``ri.search(...)`` is :func:`roadinterp.search.pipeline.search`
(the name is both the package and the function; a callable module keeps
``import roadinterp.search.options`` and ``ri.search(...)`` both working).
"""

import sys
import types

_EXPORTS = {
    "SearchConfig": "config", "RunOptions": "options", "EXECUTORS": "options", "DTYPES": "options",
    "check_placement": "options", "Cell": "cells", "resolve": "cells", "group_cells": "cells",
    "Job": "jobs", "JobResult": "jobs", "run_job": "jobs", "Executor": "executors",
    "LocalExecutor": "executors", "PoolExecutor": "executors", "RayExecutor": "executors",
    "make_executor": "executors", "get_model": "frozen", "get_random_model": "frozen",
    "get_bound_task": "frozen", "get_tokenizer": "frozen", "place": "frozen", "use_module": "frozen",
    "search": "pipeline",
}
# reading results lives below the search (the store and the report use it without importing the search)
_SUMMARY = ("summarize", "best_alignment", "describe_best", "null_baseline")

__all__ = sorted([*_EXPORTS, *_SUMMARY])


def __getattr__(name: str):
    import importlib

    if name in _EXPORTS:
        return getattr(importlib.import_module(f"roadinterp.search.{_EXPORTS[name]}"), name)
    if name in _SUMMARY:
        return getattr(importlib.import_module("roadinterp.summary"), name)
    raise AttributeError(f"module 'roadinterp.search' has no attribute {name!r}")


def __dir__():
    return __all__


class _SearchPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from roadinterp.search.pipeline import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _SearchPackage
