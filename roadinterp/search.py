"""Causal alignment search: train a DII for every cell of a grid, with controls.

A *cell* is (family, layer, component, position, size, seed). For each cell we
train a DII on the task's main hypothesis and score held-out IIA. With controls
on, the same cell is also trained and scored

* on a **randomly initialised copy** of the model (``iia_random_model``): an
  alignment that a random network also admits says nothing about the trained one;
* against the **no-op baseline** (``iia_null``, always reported): the share of held-out
  counterfactuals whose label equals the base input's label, i.e. the IIA of an
  intervention that does nothing. IIA means something only well above it;
* for **every rival hypothesis** of the task (``iia_rival[NAME]``, its train IIA and its
  site patch; ``iia_rival``/``rival`` name the strongest): if a competing causal story
  aligns as well, the site does not single out the claimed variables;
* by **patching the whole site** (``iia_site_patch``) and, where a linear map reads the
  site, by the **row-space part** of the subspace alone (``iia_rowspace``,
  ``dormant_fraction``): the interpretability-illusion checks of :mod:`roadinterp.controls`.

Each summary row carries stable warning codes (``warnings``; see
:func:`roadinterp.controls.cell_warnings`), also in results.csv.

Several seeds per cell give mean and spread; :func:`summarize` reports them and
names the best alignment by *mean* IIA, never by the luckiest seed. Cells are
independent, so executors can run them anywhere: ``local`` (this process) or
``ray`` (one Ray task per cell). Finished cells go to a crash-safe
:class:`~roadinterp.store.RunStore`; ``resume`` skips them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, field, fields, replace
from typing import Any

import pandas as pd
import torch

from roadinterp import bounds
from roadinterp.controls import null_iia
from roadinterp.dii.replay import ENGINES
from roadinterp.dii.train import DIIConfig, cell_variables, check_cell, make_data, randomized_copy, train_dii
from roadinterp.errors import ConfigError
from roadinterp.sites import Site, n_layers, parse_positions, sequence_length, validate_site
from roadinterp.store import RunStore, cell_slug, rows_to_frame, saved_path

EXECUTORS = ("local", "ray")


@dataclass
class SearchConfig:
    """A whole search. Saved as run.json; the CLI builds the same object."""

    task: str = "hierarchical-equality"  # registered task name (roadinterp tasks)
    model: str | None = None  # zoo:NAME, local HF dir or hub id; None = the task's zoo model
    layers: list[int] | None = None  # None = every layer of the model
    components: list[str] = field(default_factory=lambda: ["block_output"])  # pyvene components
    positions: list = field(default_factory=lambda: ["last"])  # last | all | int | task-named
    families: list[str] = field(default_factory=lambda: ["butterfly", "das"])  # intervention families
    sizes: list[int] = field(default_factory=lambda: [8])  # rotated coordinates per variable
    seeds: int = 3  # seeds per cell (0..seeds-1)
    controls: bool = True  # also score random-init model and rival hypothesis
    n_train: int = 8192  # training counterfactuals per cell
    n_test: int = 2048  # held-out counterfactuals per cell
    epochs: int = 4  # passes over the training counterfactuals
    batch_size: int = 256  # DII minibatch
    lr: float | None = None  # None = family default
    mode: str = "mixed"  # each | all | mixed: which variables a counterfactual swaps
    variables: list[str] | None = None  # the main hypothesis's variables to align (None = all; MIB aligns one at a time)

    def __post_init__(self) -> None:
        def _list(name, typ):
            v = getattr(self, name)
            if v is None:
                return
            if not isinstance(v, (list, tuple)) or not v:
                raise ConfigError(f"{name} must be a non-empty list, got {v!r}")
            for x in v:
                if typ is not None and (not isinstance(x, typ) or isinstance(x, bool)):
                    raise ConfigError(f"{name} must contain {typ.__name__}s, got {x!r} ({type(x).__name__})")
            setattr(self, name, list(v))

        if not isinstance(self.task, str):
            raise ConfigError(f"task must be a string, got {self.task!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise ConfigError(f"model must be a string, got {self.model!r}")
        _list("layers", int)
        _list("components", str)
        _list("positions", None)
        _list("families", str)
        _list("sizes", int)
        _list("variables", str)
        self.positions = [parse_positions(p) if isinstance(p, str) else (tuple(p) if isinstance(p, list) else p)
                          for p in self.positions]
        if self.layers is not None and any(l < 0 for l in self.layers):
            raise ConfigError(f"layers must be >= 0, got {self.layers}")
        if any(s < 1 for s in self.sizes):
            raise ConfigError(f"sizes must be >= 1, got {self.sizes}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"seeds must be a positive int, got {self.seeds!r}")
        bounds.positive_int("seeds", self.seeds, maximum=bounds.MAX_SEEDS)
        if not isinstance(self.controls, bool):
            raise ConfigError(f"controls must be true or false, got {self.controls!r}")
        for fam in self.families:
            DIIConfig(family=fam)  # unknown family -> error listing the known ones
        self.dii(self.families[0], self.sizes[0], 0)  # validates the training fields

    def dii(self, family: str, size: int, seed: int, hypothesis: str = "main") -> DIIConfig:
        return DIIConfig(family=family, size=size, seed=seed, hypothesis=hypothesis, n_train=self.n_train,
                         n_test=self.n_test, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                         mode=self.mode, variables=self.variables if hypothesis == "main" else None)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["positions"] = [list(p) if isinstance(p, tuple) else p for p in self.positions]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"a search config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown search config fields {bad}; known: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad search config: {e}") from None


@dataclass(frozen=True)
class Cell:
    family: str
    layer: int
    component: str
    position: Any
    size: int
    seed: int

    @property
    def site(self) -> Site:
        return Site(self.layer, self.component, self.position)

    @property
    def slug(self) -> str:
        """File-system-safe form of the key (:func:`roadinterp.store.cell_slug`)."""
        return cell_slug(self.family, self.layer, self.component, self.position, self.size, self.seed)

    @property
    def key(self) -> str:
        pos = ",".join(map(str, self.position)) if isinstance(self.position, tuple) else str(self.position)
        return f"{self.family}|{self.layer}|{self.component}|{pos}|{self.size}|{self.seed}"


# ------------------------------------------------------------- resolution
_MODELS: dict[str, Any] = {}


def default_model(task_name: str) -> str:
    from roadinterp import zoo

    for entry in zoo.list_zoo():
        if entry["task"] == task_name:
            return f"zoo:{entry['name']}"
    raise ConfigError(f"no zoo model is trained for task {task_name!r}; pass --model")


_TOKENIZERS: dict[str, Any] = {}
MODULE_PREFIX = "module:"


def use_module(model, tokenizer=None) -> str:
    """Register an in-memory model (an ``nn.Module``) for searches in this process; its spec.

    The spec (``module:ClassName#N``) is what run.json records; the model itself never
    leaves the process, so such a search runs with ``workers=1`` and the local executor.
    ``tokenizer`` is the model's own tokenizer, for prompt tasks.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a spec string or a torch.nn.Module, got {type(model).__name__}")
    for spec, known in _MODELS.items():
        if known is model and spec.startswith(MODULE_PREFIX):
            break
    else:
        spec = f"{MODULE_PREFIX}{type(model).__name__}#{sum(k.startswith(MODULE_PREFIX) for k in _MODELS)}"
        _MODELS[spec] = model.eval()
    if tokenizer is not None:
        _TOKENIZERS[spec] = tokenizer
    return spec


def get_tokenizer(spec: str):
    """The tokenizer that goes with model ``spec`` (None for the toy zoo)."""
    if spec.startswith(MODULE_PREFIX):
        return _TOKENIZERS.get(spec)
    from roadinterp import zoo

    return zoo.load_tokenizer(spec)


DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")  # the frozen model's dtype (interventions stay fp32)


def check_placement(device: str, dtype: str) -> None:
    """Refuse a device or dtype the search cannot place the frozen model on."""
    if not isinstance(device, str) or not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def get_model(spec: str, device: str = "cpu", dtype: str = "float32"):
    """Load (once per process, device and dtype) the frozen model a search runs on.

    ``device="auto"`` is resolved where the model loads (a Ray worker picks its own GPU or CPU).
    An in-memory module is copied, not moved, when it must go elsewhere.
    """
    import copy

    from roadinterp import zoo

    check_placement(device, dtype)
    if spec.startswith(MODULE_PREFIX) and spec not in _MODELS:
        raise ConfigError(f"model {spec!r} was an in-memory nn.Module of another process; pass the module "
                          "again (ri.search(model=module)) or save it (save_pretrained) and pass its directory")
    dev = str(zoo._resolve_device(device))
    key = spec if (dev, dtype) == ("cpu", "float32") else f"{spec}@{dev}:{dtype}"
    if key not in _MODELS:
        if spec in _MODELS:  # an in-memory module (or the float32 copy): placed copy
            p = next(_MODELS[spec].parameters())
            same = (str(p.device), p.dtype) == (dev, getattr(torch, dtype))
            _MODELS[key] = _MODELS[spec] if same else copy.deepcopy(_MODELS[spec]).to(dev, getattr(torch, dtype))
        else:
            _MODELS[key] = zoo.load_model(spec, device=dev).to(getattr(torch, dtype))
    return _MODELS[key]


def place(batch, model):
    """``batch`` with every tensor on the model's device and float inputs in its dtype."""
    p = next(model.parameters())

    def move(t):
        return t.to(p.device, p.dtype) if t.is_floating_point() else t.to(p.device)

    def inputs(d):
        return {k: move(v) for k, v in d.items()}

    if p.device.type == "cpu" and p.dtype == torch.float32:
        return batch
    return replace(batch, base=inputs(batch.base), sources=[inputs(s) for s in batch.sources],
                   intervened=batch.intervened.to(p.device), labels=batch.labels.to(p.device),
                   base_labels=batch.base_labels.to(p.device))


_BOUND: dict[tuple[str, str], Any] = {}


def get_bound_task(task_name: str, spec: str):
    """The task ready for model ``spec`` (once per process): prompt tasks are bound to the
    model's own tokenizer and filtered to the prompts it answers correctly (cached on disk)."""
    from roadinterp.tasks import get_task

    key = (task_name, spec)
    if key not in _BOUND:
        task = get_task(task_name)
        if task.needs_tokenizer:
            from roadinterp import zoo

            task = task.bind(tokenizer=get_tokenizer(spec), model=get_model(spec),
                             cache_dir=zoo.cache_dir() / "filters")
        _BOUND[key] = task
    return _BOUND[key]


def resolve(config: SearchConfig, device: str = "cpu", dtype: str = "float32"):
    """(task, model_spec, model, cells); validates every cell before any training."""
    from roadinterp.tasks import get_task

    spec = config.model or default_model(get_task(config.task).name)
    model = get_model(spec, device, dtype)
    task = get_bound_task(config.task, spec)
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
        sig = (cell.layer, cell.component, cell.position, cell.size)
        if sig not in checked:
            check_cell(model, task, cell.site, config.dii(cell.family, cell.size, 0))
            if isinstance(cell.position, str) and cell.position not in ("last", "all") and cell.position not in task.positions:
                known = dict.fromkeys(["last", "all", *task.positions])
                raise ConfigError(f"unknown position {cell.position!r} for task {task.name}; known: {', '.join(known)}")
            checked.add(sig)
    _check_positions_and_memory(config, task, model, cells)
    return task, spec, model, cells


def _check_positions_and_memory(config: SearchConfig, task, model, cells: Sequence[Cell]) -> None:
    """Every position exists in the task's inputs, and one unit of work's tensors fit in memory."""
    d = config.dii(cells[0].family, cells[0].size, 0)
    variables = cell_variables(task, d)
    sample = task.counterfactuals(2, split="train", seed=0, variables=variables, mode=d.mode)
    seq = sequence_length(sample.base)
    for position in dict.fromkeys(c.position for c in cells):
        Site(cells[0].layer, cells[0].component, position).position_indices(seq, task.positions)
    width = max(validate_site(model, c.site) for c in {(c.layer, c.component): c for c in cells}.values())
    n_states = 1 + len(variables)  # cached site states per counterfactual (base + one source per variable)
    bounds.check_rows_memory(
        "n_train + n_test", config.n_train + config.n_test,
        lambda k: task.counterfactuals(k, split="train", seed=0, variables=variables, mode=d.mode),
        extra_per_row=n_states * width * 4, copies=config.seeds, what="counterfactuals")


RANDOM_MODEL_SEED = 10_000


def get_random_model(spec: str, device: str = "cpu", dtype: str = "float32"):
    """The random-init control: one freshly initialised copy of the model per search
    (seed ``RANDOM_MODEL_SEED``), so a cell's seeds differ only in DII init and data, as
    in the main run, and can share a batched forward."""
    model = get_model(spec, device, dtype)
    key = f"{spec}#random{RANDOM_MODEL_SEED}" + ("" if model is _MODELS.get(spec) else f"@{model.device}:{dtype}")
    if key not in _MODELS:
        _MODELS[key] = randomized_copy(model, seed=RANDOM_MODEL_SEED)
    return _MODELS[key]


def _train_cells(config: SearchConfig, model, task, site: Site, cells: Sequence[Cell], batched: bool, engine: str,
                 hypothesis: str = "main"):
    """``(configs, data, results)`` of ``cells`` trained for ``hypothesis``; ``data`` holds each
    config's (train, test) counterfactuals on the model's device and dtype."""
    configs = [config.dii(c.family, c.size, c.seed, hypothesis=hypothesis) for c in cells]
    data = [tuple(place(b, model) for b in make_data(task, d)) for d in configs]
    return configs, data, _train_many(model, task, site, configs, data, batched, engine)


def _train_many(model, task, site: Site, configs: list[DIIConfig], data, batched: bool, engine: str = "auto"):
    configs = [replace(c, engine=engine) for c in configs]
    if batched and len(configs) > 1:
        from roadinterp.dii.batched import train_dii_batched

        return train_dii_batched(model, task, site, configs, data=data)
    return [train_dii(model, task, site, config=c, data=d) for c, d in zip(configs, data)]


def run_cells(config_json: dict[str, Any], cells: Sequence[Cell], model_spec: str, save_dir: str | None = None,
              batched: bool = False, engine: str = "auto", task_obj=None, device: str = "cpu",
              dtype: str = "float32") -> list[dict[str, Any]]:
    """Train and score cells that differ only in seed (and their controls); one row each.

    Safe to run in any process. With ``batched`` the seeds of the RoAd families share
    one forward per step (:mod:`roadinterp.dii.batched`; IIA equal to one-at-a-time within
    float summation order). ``engine`` is DIIConfig.engine (auto: replay where exact). With
    ``save_dir``, each learned RoAd interchange is saved to ``save_dir/cells/<slug>/`` (the angle
    figures) and each rotated family's learned subspace to ``save_dir/subspaces/<slug>/`` (seed
    agreement), the random-init control's under ``<slug>-random_model``; the store's rows are the
    results. ``task_obj`` ships a task this process cannot find by name (registered in the
    caller's code); it is registered here first.
    """
    config = SearchConfig.from_json(config_json)
    if task_obj is not None:
        from roadinterp.tasks import list_tasks, register_task

        if config.task not in {t.name for t in list_tasks()}:
            register_task(task_obj)
    task = get_bound_task(config.task, model_spec)
    model = get_model(model_spec, device, dtype)
    site = cells[0].site
    if any(c.site != site or (c.family, c.size) != (cells[0].family, cells[0].size) for c in cells):
        raise ConfigError("run_cells needs cells that differ only in seed")
    t0 = time.perf_counter()
    configs, data, mains = _train_cells(config, model, task, site, cells, batched, engine)
    rows = []
    for cell, main, (_, test) in zip(cells, mains, data):
        row = {"task": task.name, "model": model_spec, **main.row()}
        row.pop("hypothesis", None)
        row.update(iia_random_model=None, iia_rival=None, rival=None, iia_null=null_iia(test))
        rows.append(row)
        if save_dir is not None:
            save_learned(save_dir, cell.slug, main)
    if config.controls:
        rnd = _train_many(get_random_model(model_spec, device, dtype), task, site, configs, data, batched, engine)
        for cell, row, r in zip(cells, rows, rnd):
            row["iia_random_model"] = r.iia
            if save_dir is not None:
                save_learned(save_dir, cell_slug(*astuple(cell), control="random_model"), r)
        _run_controls(config, task, model, site, cells, rows, mains, batched, engine)
    per_cell = (time.perf_counter() - t0) / len(cells)
    for row in rows:
        row["seconds"] = per_cell
    return rows


def save_learned(save_dir: str | os.PathLike, slug: str, result) -> None:
    """Save what a trained cell learned: its RoAd interchange (``cells/<slug>``) and, for a
    rotated family, the subspace each variable swaps (``subspaces/<slug>``)."""
    from roadinterp import io
    from roadinterp.subspace import learned_basis

    if not result.interventions:
        return
    saveable = [iv for iv in result.interventions if hasattr(iv, "to_state")]
    if saveable:
        io.save(saveable[0], saved_path(save_dir, slug, "cell"))
    basis = learned_basis(result.interventions[0], result.coords, family=result.config.family,
                          variables=result.variables)
    if basis is not None:
        io.save(basis, saved_path(save_dir, slug, "subspace"))


def refresh_agreement(out: str | os.PathLike, cell: Cell, n_seeds: int, rows: dict[str, dict]) -> dict[str, dict]:
    """Seed agreement of ``cell``'s finished seeds (from their saved subspaces) written into their rows.

    Returns the rows it changed ({key: row}); nothing when fewer than two seeds saved a subspace.
    """
    from roadinterp.subspace import agreement_of, load_bases

    seeds = [c for c in (replace(cell, seed=s) for s in range(n_seeds)) if c.key in rows]
    bases = load_bases([saved_path(out, c.slug, "subspace") for c in seeds])
    if len(bases) < 2:
        return {}
    agree, chance = agreement_of(bases)
    for c in seeds:
        rows[c.key].update(seed_agreement=agree, seed_agreement_chance=chance)
    return {c.key: rows[c.key] for c in seeds}


def _run_controls(config, task, model, site, cells, rows, mains, batched, engine) -> None:
    """Site patch, row space and every rival (:mod:`roadinterp.controls`), into ``rows``."""
    from roadinterp import controls as C

    test_seed = config.dii(cells[0].family, cells[0].size, 0).test_seed
    joint = place(C.joint_counterfactuals(task, config.n_test, seed=test_seed, variables=config.variables)[0], model)
    patch = C.site_patch_iia(model, task, site, C.single_source(joint), engine=engine)  # the same for every seed
    for row, main in zip(rows, mains):
        row.update(C.site_controls(model, task, site, main, n=config.n_test, seed=test_seed, engine=engine,
                                   data=joint, site_patch=patch))
    for rival in task.rivals:
        _, rdata, rivals = _train_cells(config, model, task, site, cells, batched, engine, hypothesis=rival)
        rjoint = place(C.joint_counterfactuals(task, config.n_test, seed=test_seed, hypothesis=rival)[0], model)
        rsite = C.site_patch_iia(model, task, site, C.single_source(rjoint), engine=engine)
        for row, r, (_, rtest) in zip(rows, rivals, rdata):
            row.update(C.rival_columns(rival, r.iia, r.train_iia, null_iia(rtest), rsite))
    for row in rows:
        row.update(C.strongest_rival(row))


def null_baseline(config: SearchConfig, hypothesis: str = "main") -> float:
    """:func:`null_iia` of the held-out set a search scores on (for runs stored without it)."""
    from roadinterp.tasks import get_task

    d = config.dii(config.families[0], config.sizes[0], 0, hypothesis=hypothesis)
    test = get_task(config.task).counterfactuals(d.n_test, split="test", seed=d.test_seed, hypothesis=hypothesis,
                                                 variables=d.variables, mode=d.mode)
    return null_iia(test)


def group_cells(cells: Sequence[Cell], batched: bool) -> list[list[Cell]]:
    """Units of work: one cell each, or with ``batched`` all seeds of a batchable cell together."""
    if not batched:
        return [[c] for c in cells]
    from roadinterp.dii.batched import supports_batched

    groups: dict[tuple, list[Cell]] = {}
    out: list[list[Cell]] = []
    for c in cells:
        if not supports_batched(c.family):
            out.append([c])
            continue
        key = (c.family, c.layer, c.component, c.position, c.size)
        if key not in groups:
            groups[key] = []
            out.append(groups[key])
        groups[key].append(c)
    return out


# -------------------------------------------------------------- executors
def _die_with_parent(parent: int) -> None:
    """Pool initializer: on Linux, a worker gets SIGKILL when the search process dies, so a
    killed run leaves no orphaned trainers behind (finished cells are already stored).

    A spawned worker imports roadinterp before this runs; if the parent died meanwhile
    the signal would never come, so check the parent is still ours after arming it.
    """
    import os

    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
    # Ctrl-C is the parent's to handle (it stops the workers); a worker never prints a traceback for it.
    # Workers start with SIGINT/SIGTERM blocked (see _run_local), so one sent during start-up is dropped here.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def shippable_task(name: str):
    """None when a fresh worker process finds task ``name`` by itself (built in, or a
    ``file.py:NAME`` / ``module:NAME`` reference it re-imports); else the Task object to send
    it (a task registered by the caller's code), checked to pickle."""
    import pickle

    from roadinterp.tasks import get_task

    task = get_task(name)
    if ":" in name or type(task).__module__.startswith("roadinterp."):
        return None
    try:
        pickle.dumps(task)
    except Exception as err:
        raise ConfigError(f"task {name!r} was registered in this process and cannot be sent to worker processes "
                          f"({type(err).__name__}: {err}); define it at module level in a file and pass "
                          "'path/to/file.py:NAME' as the task, or use workers=1") from None
    return task


def _run_local(config_json, groups, spec, on_row, workers: int = 1, save_dir=None, batched=False,
               engine="auto", task_obj=None, placement=("cpu", "float32")):
    if workers <= 1 or len(groups) <= 1:
        for group in groups:
            for cell, row in zip(group, run_cells(config_json, group, spec, save_dir, batched, engine, None, *placement)):
                on_row(cell, row)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn: workers start clean (no forked torch threads); each loads the cached model once.
    # They are started with SIGINT/SIGTERM blocked (inherited), so a Ctrl-C during their start-up reaches
    # only this process, which stops them; the parent gets it as soon as the block ends.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        with _interrupts_deferred():
            futures = {pool.submit(run_cells, config_json, g, spec, save_dir, batched, engine, task_obj,
                                    *placement): g
                       for g in groups}
        while futures:
            done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for fut in done:
                for cell, row in zip(futures.pop(fut), fut.result()):
                    on_row(cell, row)
    except BaseException:
        # interrupted or failed: stop the running cells now instead of waiting for them to finish. SIGKILL,
        # not SIGTERM: a worker still starting up has SIGTERM blocked, and workers hold nothing to save
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _run_ray(config_json, groups, spec, on_row, address=None, save_dir=None, batched=False,
             engine="auto", task_obj=None, placement=("cpu", "float32")):
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs ray: pip install 'roadinterp[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": None}))
        started = True
    try:
        remote = ray.remote(num_cpus=1)(run_cells)
        pending = {remote.remote(config_json, g, spec, save_dir, batched, engine, task_obj, *placement): g for g in groups}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                for cell, row in zip(pending.pop(ref), ray.get(ref)):
                    on_row(cell, row)
    except BaseException:
        for ref in list(pending):
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def search(
    config: SearchConfig | None = None, *, out: str | None = None, resume: bool = False,
    overwrite: bool = False, executor: str = "local", ray_address: str | None = None, workers: int = 1,
    batched: bool = False, engine: str = "auto", device: str = "auto", dtype: str = "float32",
    on_cell: Callable[[Cell, dict, int, int], None] | None = None, tokenizer=None, **overrides,
) -> pd.DataFrame:
    """Run a search; return one row per cell. With ``out``, results are stored crash-safely.

    ``overrides`` are SearchConfig fields: ``search(task="hierarchical-equality", families=["das"])``.
    ``batched`` trains the seeds of each RoAd-family cell in one batched forward; ``workers``
    runs units of work in parallel processes (local executor); ``engine`` picks how DII steps
    run (``auto``: :mod:`roadinterp.dii.kvreplay` on causal LMs, :mod:`roadinterp.dii.replay`
    elsewhere, where each is exact, pyvene otherwise; ``pyvene``: always the reference path).
    ``device`` (``auto``: a GPU when there is one) and ``dtype`` place the frozen model in every
    worker; the interventions train in fp32 either way. None of these is part of the run's
    config: per-step outputs agree to float error in float32 (long runs can still differ where
    seeds are unstable; docs/performance.md#replay), to bf16 rounding in bfloat16.

    ``model`` may be a spec (``zoo:NAME``, a directory, a ``.gguf`` file, a hub id) or an
    ``nn.Module`` (with ``tokenizer=`` for prompt tasks; it runs in this process only).
    ``task`` may be a registered name or ``path/to/file.py:NAME`` / ``package.module:NAME``;
    a task registered by the caller's own code is sent to worker processes.
    """
    base = asdict(config) if config else {}
    if not isinstance(overrides.get("model", base.get("model")), (str, type(None))):
        overrides["model"] = use_module(overrides.pop("model", None) or base["model"], tokenizer)
        if workers > 1 or executor != "local":
            raise ConfigError("a model given as an nn.Module lives in this process: use workers=1 and the local "
                              "executor, or save it (save_pretrained) and pass its directory")
    config = SearchConfig(**{**base, **overrides})
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive int, got {workers!r}")
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    check_placement(device, dtype)
    _, spec, _, cells = resolve(config, device, dtype)  # validates every cell before any training
    config_json = config.to_json()
    config_json["model"] = spec
    store = RunStore(out, config_json, resume=resume, overwrite=overwrite) if out else None
    rows: list[dict] = store.rows() if store else []
    by_key = {r["key"]: r for r in rows if "key" in r}
    done = store.done_keys() if store else set()
    todo = [c for c in cells if c.key not in done]
    total, finished = len(cells), len(cells) - len(todo)

    def on_row(cell: Cell, row: dict) -> None:
        nonlocal finished
        row["key"] = cell.key
        by_key[cell.key] = row
        if store:
            with _interrupts_deferred():  # a Ctrl-C now lands after the cell is committed, not inside it
                store.add(cell.key, row)
                changed = refresh_agreement(out, cell, config.seeds, by_key)
                if changed:
                    store.update(changed)
        rows.append(row)
        finished += 1
        if on_cell:
            on_cell(cell, row, finished, total)

    task_obj = shippable_task(config.task) if workers > 1 or executor != "local" else None
    try:
        if executor == "local":
            _run_local(config_json, group_cells(todo, batched), spec, on_row, workers, out, batched, engine,
                       task_obj, (device, dtype))
        else:
            _run_ray(config_json, group_cells(todo, batched), spec, on_row, ray_address, out, batched, engine,
                     task_obj, (device, dtype))
    except BaseException:
        if store:
            store.discard_if_empty()  # a run refused or stopped before its first cell leaves nothing behind
        raise
    finally:
        if store:
            store.close()
    return rows_to_frame(rows)


@contextlib.contextmanager
def _interrupts_deferred():
    """Block SIGINT/SIGTERM in the main thread for a moment (delivered when the block ends)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, spread and range over seeds per (family, layer, component, position, size), with warnings.

    Every control column (``iia_*``, ``train_iia_rival[...]``, ``dormant_fraction``) gets
    ``_mean`` and ``_max``; ``warnings`` holds :func:`roadinterp.controls.cell_warnings`
    of the row, ``;``-separated. ``seed_agreement`` (when stored): mean principal-angle cosine
    between the seeds' learned subspaces (:mod:`roadinterp.subspace`), with
    ``seed_agreement_chance`` for random subspaces.
    """
    from roadinterp.controls import cell_warnings, is_control_column, join_codes

    if table.empty:
        return table
    keys = ["family", "layer", "component", "position", "size"]
    agg = {"iia": ["mean", "std", "min", "max", "count"]}
    for c in table.columns:
        if (c == "train_iia" or is_control_column(c)) and pd.to_numeric(table[c], errors="coerce").notna().any():
            agg[c] = ["mean", "max"]
    agree = [c for c in ("seed_agreement", "seed_agreement_chance") if c in table and table[c].notna().any()]
    for c in agree:  # one value per cell, repeated on its seeds' rows
        agg[c] = ["mean"]
    numeric = table.assign(**{c: pd.to_numeric(table[c], errors="coerce") for c in agg})
    s = numeric.groupby(keys, sort=False).agg(agg)
    s.columns = ["_".join(c) for c in s.columns]
    s = s.rename(columns={"iia_count": "n_seeds", **{f"{c}_mean": c for c in agree}}).reset_index()
    s["iia_std"] = s["iia_std"].fillna(0.0)
    s["warnings"] = [join_codes(cell_warnings(r)) for r in s.to_dict("records")]
    return s.sort_values("iia_mean", ascending=False, kind="stable").reset_index(drop=True)


def best_alignment(table: pd.DataFrame) -> dict[str, Any] | None:
    """The cell with the highest *mean* IIA over seeds (with its controls and ``warnings``).

    Whoever names it must name its warnings too (:func:`roadinterp.controls.describe_warnings`):
    the best cell can be an ``illusion-suspect``.
    """
    s = summarize(table)
    return None if s.empty else s.iloc[0].to_dict()
