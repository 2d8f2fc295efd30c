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

Several seeds per cell give mean and spread; :func:`roadinterp.summary.summarize` reports them and
names the best alignment by *mean* IIA, never by the luckiest seed. Cells are
independent, so executors (:mod:`roadinterp.executors`) can run them anywhere: ``local``
(this process or worker processes) or ``ray`` (one Ray task per cell), each loading the
frozen model once (:mod:`roadinterp.frozen`). Finished cells go to a crash-safe
:class:`~roadinterp.store.RunStore`; ``resume`` skips them.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import InitVar, asdict, astuple, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from roadinterp import bounds
from roadinterp.controls import null_iia
from roadinterp.dii.config import ENGINES, DIIConfig, cell_variables, check_cell, make_data
from roadinterp.dii.train import train_dii
from roadinterp.errors import ConfigError, RoadinterpError
from roadinterp.executors import EXECUTORS, interrupts_deferred, run_local, run_ray, shippable_task
from roadinterp.frozen import check_placement, get_bound_task, get_model, get_random_model, place, use_module
from roadinterp.sites import Site, n_layers, parse_positions, sequence_length, validate_site
from roadinterp.store import RunStore, cell_slug, rows_to_frame, saved_path
from roadinterp.summary import best_alignment, null_baseline, summarize  # noqa: F401  (ri.search.summarize users)
from roadinterp.zoo import default_model

# DIIConfig fields a search used to hold flat, before the nested ``dii`` (old run.json, keywords)
_FLAT_DII = ("n_train", "n_test", "epochs", "batch_size", "lr", "mode")
# DIIConfig fields each cell sets itself (variables: from the search's own field, main hypothesis only)
_PER_CELL = ("family", "size", "seed", "hypothesis", "variables")


@dataclass
class SearchConfig:
    """A whole search: the grid of cells and how each is trained. Saved as run.json; the CLI
    builds the same object. Every field's help is in its metadata (:func:`roadinterp.options.field_help`)."""

    task: str = field(default="hierarchical-equality", metadata={
        "help": "Task: a registered name, path/to/file.py:NAME or package.module:NAME."})
    model: str | None = field(default=None, metadata={
        "help": "zoo:NAME, local HF dir, .gguf file or hub id (default: the task's zoo model)."})
    layers: list[int] | None = field(default=None, metadata={"help": "Layers to search (default: all)."})
    components: list[str] = field(default_factory=lambda: ["block_output"], metadata={
        "help": "pyvene components, e.g. block_output, mlp_output."})
    positions: list = field(default_factory=lambda: ["last"], metadata={
        "help": "Positions: last, all, an index or a task-named position."})
    families: list[str] = field(default_factory=lambda: ["butterfly", "das"], metadata={
        "help": "Intervention families: neuron, neuron-fixed, road, butterfly, das, lowrank, boundless."})
    sizes: list[int] = field(default_factory=lambda: [8], metadata={"help": "Sizes (coordinates per variable)."})
    variables: list[str] | None = field(default=None, metadata={
        "help": "Causal variables of the task's main hypothesis to align, each in its own subspace (default: "
                "all; MIB aligns one at a time, e.g. io_position on ioi). The no-op, site-patch and "
                "random-model controls use the same counterfactuals; rival hypotheses align all their own."})
    seeds: int = field(default=3, metadata={"help": "Seeds per cell (0..seeds-1)."})
    controls: bool = field(default=True, metadata={
        "help": "Controls: random-init model, every rival hypothesis, whole-site patch, row space."})
    dii: DIIConfig = field(default_factory=DIIConfig, metadata={
        "help": "How every cell is trained (DIIConfig; family, size, seed and hypothesis are set per cell)."})
    # the flat form of six dii fields (keywords and run.json before the nesting): folded into dii
    n_train: InitVar[int | None] = None
    n_test: InitVar[int | None] = None
    epochs: InitVar[int | None] = None
    batch_size: InitVar[int | None] = None
    lr: InitVar[float | None] = None
    mode: InitVar[str | None] = None

    def __post_init__(self, *flat) -> None:
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
        if isinstance(self.dii, dict):
            self.dii = _dii_from_json(self.dii)
        if not isinstance(self.dii, DIIConfig):
            raise ConfigError(f"dii must be a DIIConfig or a JSON object of its fields, got {self.dii!r}")
        given = {k: v for k, v in zip(_FLAT_DII, flat) if v is not None}
        if given:
            self.dii = replace(self.dii, **given)  # validates them
        for fam in self.families:
            DIIConfig(family=fam)  # unknown family -> error listing the known ones

    def with_dii(self, **changes) -> SearchConfig:
        """This config with some training fields changed (validated): ``cfg.with_dii(epochs=1)``."""
        bad = sorted(set(changes) & set(_PER_CELL))
        if bad:
            raise ConfigError(f"{bad} are set per cell, not for the whole search")
        return replace(self, dii=replace(self.dii, **changes))

    def cell(self, family: str, size: int, seed: int, hypothesis: str = "main") -> DIIConfig:
        """The DIIConfig of one cell and seed: ``dii`` with the cell's own fields set (``variables``
        for the main hypothesis; a rival aligns all of its own)."""
        return replace(self.dii, family=family, size=size, seed=seed, hypothesis=hypothesis,
                       variables=self.variables if hypothesis == "main" else None)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (run.json): the training fields sit at the top level, beside the grid's,
        as in every run.json before the nesting, so readers of ``run["n_test"]`` keep working."""
        d = asdict(self)
        d["positions"] = [list(p) if isinstance(p, tuple) else p for p in self.positions]
        training = {k: v for k, v in d.pop("dii").items() if k not in _PER_CELL}
        return {**d, **training}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchConfig:
        """Load a config (run.json, --config): training fields at the top level (run.json's form)
        or nested under ``dii`` (a JSON object or a DIIConfig); top-level ones win."""
        if not isinstance(d, dict):
            raise ConfigError(f"a search config must be a JSON object, got {type(d).__name__}")
        own = {f.name for f in fields(cls)}
        training = {f.name for f in fields(DIIConfig)} - set(_PER_CELL)
        bad = sorted(set(d) - own - training)
        if bad:
            raise ConfigError(f"unknown search config fields {bad}; known: {sorted(own | training)}")
        d = dict(d)
        flat = {k: d.pop(k) for k in list(d) if k in training and k not in own}
        if flat:
            nested = d.get("dii")
            d["dii"] = replace(nested, **flat) if isinstance(nested, DIIConfig) else {**(nested or {}), **flat}
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad search config: {e}") from None



def _dii_from_json(d: dict[str, Any]) -> DIIConfig:
    known = {f.name for f in fields(DIIConfig)} - set(_PER_CELL)
    bad = sorted(set(d) - known)
    if bad:
        raise ConfigError(f"unknown dii fields {bad}; known: {sorted(known)}")
    return DIIConfig(**d)

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
            check_cell(model, task, cell.site, config.cell(cell.family, cell.size, 0))
            if isinstance(cell.position, str) and cell.position not in ("last", "all") and cell.position not in task.positions:
                known = dict.fromkeys(["last", "all", *task.positions])
                raise ConfigError(f"unknown position {cell.position!r} for task {task.name}; known: {', '.join(known)}")
            checked.add(sig)
    _check_positions_and_memory(config, task, model, cells)
    return task, spec, model, cells


def _check_positions_and_memory(config: SearchConfig, task, model, cells: Sequence[Cell]) -> None:
    """Every position exists in the task's inputs, and one unit of work's tensors fit in memory."""
    d = config.cell(cells[0].family, cells[0].size, 0)
    variables = cell_variables(task, d)
    sample = task.counterfactuals(2, split="train", seed=0, variables=variables, mode=d.mode)
    seq = sequence_length(sample.base)
    for position in dict.fromkeys(c.position for c in cells):
        Site(cells[0].layer, cells[0].component, position).position_indices(seq, task.positions)
    width = max(validate_site(model, c.site) for c in {(c.layer, c.component): c for c in cells}.values())
    n_states = 1 + len(variables)  # cached site states per counterfactual (base + one source per variable)
    bounds.check_rows_memory(
        "n_train + n_test", config.dii.n_train + config.dii.n_test,
        lambda k: task.counterfactuals(k, split="train", seed=0, variables=variables, mode=d.mode),
        extra_per_row=n_states * width * 4, copies=config.seeds, what="counterfactuals")


def _train_cells(config: SearchConfig, model, task, site: Site, cells: Sequence[Cell], batched: bool,
                 hypothesis: str = "main"):
    """``(configs, data, results)`` of ``cells`` trained for ``hypothesis``; ``data`` holds each
    config's (train, test) counterfactuals on the model's device and dtype."""
    configs = [config.cell(c.family, c.size, c.seed, hypothesis=hypothesis) for c in cells]
    data = [tuple(place(b, model) for b in make_data(task, d)) for d in configs]
    return configs, data, _train_many(model, task, site, configs, data, batched)


def _train_many(model, task, site: Site, configs: list[DIIConfig], data, batched: bool):
    if batched and len(configs) > 1:
        from roadinterp.dii.batched import train_dii_batched

        return train_dii_batched(model, task, site, configs, data=data)
    return [train_dii(model, task, site, config=c, data=d) for c, d in zip(configs, data)]


def run_cells(config_json: dict[str, Any], cells: Sequence[Cell], model_spec: str, save_dir: str | None = None,
              batched: bool = False, task_obj=None, device: str = "cpu",
              dtype: str = "float32") -> list[dict[str, Any]]:
    """Train and score cells that differ only in seed (and their controls); one row each.

    Safe to run in any process. With ``batched`` the seeds of the RoAd families share
    one forward per step (:mod:`roadinterp.dii.batched`; IIA equal to one-at-a-time within
    float summation order); every training setting, the engine included, comes from ``config_json``. With
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
    configs, data, mains = _train_cells(config, model, task, site, cells, batched)
    rows = []
    for cell, main, (_, test) in zip(cells, mains, data):
        row = {"task": task.name, "model": model_spec, **main.row()}
        row.pop("hypothesis", None)
        row.update(iia_random_model=None, iia_rival=None, rival=None, iia_null=null_iia(test))
        rows.append(row)
        if save_dir is not None:
            save_learned(save_dir, cell.slug, main)
    if config.controls:
        rnd = _train_many(get_random_model(model_spec, device, dtype), task, site, configs, data, batched)
        for cell, row, r in zip(cells, rows, rnd):
            row["iia_random_model"] = r.iia
            if save_dir is not None:
                save_learned(save_dir, cell_slug(*astuple(cell), control="random_model"), r)
        _run_controls(config, task, model, site, cells, rows, mains, batched)
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


def _run_controls(config, task, model, site, cells, rows, mains, batched) -> None:
    """Site patch, row space and every rival (:mod:`roadinterp.controls`), into ``rows``."""
    from roadinterp import controls as C

    test_seed, n_test, engine = config.dii.test_seed, config.dii.n_test, config.dii.engine
    joint = place(C.joint_counterfactuals(task, n_test, seed=test_seed, variables=config.variables)[0], model)
    patch = C.site_patch_iia(model, task, site, C.single_source(joint), engine=engine)  # the same for every seed
    for row, main in zip(rows, mains):
        row.update(C.site_controls(model, task, site, main, n=n_test, seed=test_seed, engine=engine,
                                   data=joint, site_patch=patch))
    for rival in task.rivals:
        _, rdata, rivals = _train_cells(config, model, task, site, cells, batched, hypothesis=rival)
        rjoint = place(C.joint_counterfactuals(task, n_test, seed=test_seed, hypothesis=rival)[0], model)
        rsite = C.site_patch_iia(model, task, site, C.single_source(rjoint), engine=engine)
        for row, r, (_, rtest) in zip(rows, rivals, rdata):
            row.update(C.rival_columns(rival, r.iia, r.train_iia, null_iia(rtest), rsite))
    for row in rows:
        row.update(C.strongest_rival(row))


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
        again = SearchConfig.from_json({k: v for k, v in stored.items() if k != "model"}).to_json()
    except (ValueError, RoadinterpError, TypeError, AttributeError):
        return ident  # a foreign run.json: RunStore says how it differs
    again["model"] = stored.get("model")
    again.pop("engine", None)
    return stored if again == ident else ident


def search(
    config: SearchConfig | None = None, *, out: str | None = None, resume: bool = False,
    overwrite: bool = False, executor: str = "local", ray_address: str | None = None, workers: int = 1,
    batched: bool = False, engine: str | None = None, device: str = "auto", dtype: str = "float32",
    on_cell: Callable[[Cell, dict, int, int], None] | None = None, tokenizer=None, **overrides,
) -> pd.DataFrame:
    """Run a search; return one row per cell. With ``out``, results are stored crash-safely.

    ``overrides`` are SearchConfig fields: ``search(task="hierarchical-equality", families=["das"])``.
    ``batched`` trains the seeds of each RoAd-family cell in one batched forward; ``workers``
    runs units of work in parallel processes (local executor); ``engine`` (shorthand for
    ``config.dii.engine``) picks how DII steps run (``auto``: :mod:`roadinterp.dii.kvreplay` on
    causal LMs, :mod:`roadinterp.dii.replay` elsewhere, where each is exact, pyvene otherwise;
    ``pyvene``: always the reference path). ``device`` (``auto``: a GPU when there is one) and
    ``dtype`` place the frozen model in every worker; the interventions train in fp32 either way.
    None of these is part of the run's identity (run.json holds no engine, device or dtype):
    per-step outputs agree to float error in float32 (long runs can still differ where seeds are
    unstable; docs/performance.md#replay), to bf16 rounding in bfloat16, so a run may resume on another.

    ``model`` may be a spec (``zoo:NAME``, a directory, a ``.gguf`` file, a hub id) or an
    ``nn.Module`` (with ``tokenizer=`` for prompt tasks; it runs in this process only).
    ``task`` may be a registered name or ``path/to/file.py:NAME`` / ``package.module:NAME``;
    a task registered by the caller's own code is sent to worker processes.
    """
    base = {f.name: getattr(config, f.name) for f in fields(config)} if config else {}
    module = overrides.get("model", base.get("model"))
    if not isinstance(module, (str, type(None))):
        overrides["model"] = use_module(module, tokenizer)
        if workers > 1 or executor != "local":
            raise ConfigError("a model given as an nn.Module lives in this process: use workers=1 and the local "
                              "executor, or save it (save_pretrained) and pass its directory")
    config = SearchConfig.from_json({**base, **overrides})  # flat training keywords fold into dii
    if engine is not None:
        if engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        config.dii = replace(config.dii, engine=engine)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive int, got {workers!r}")
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    check_placement(device, dtype)
    _, spec, _, cells = resolve(config, device, dtype)  # validates every cell before any training
    config_json = config.to_json()
    config_json["model"] = spec
    store = RunStore(out, _run_identity(out, config_json), resume=resume, overwrite=overwrite) if out else None
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
            with interrupts_deferred():  # a Ctrl-C now lands after the cell is committed, not inside it
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
            run_local(run_cells, config_json, group_cells(todo, batched), spec, on_row, workers, out, batched,
                      task_obj, (device, dtype))
        else:
            run_ray(run_cells, config_json, group_cells(todo, batched), spec, on_row, ray_address, out, batched,
                    task_obj, (device, dtype))
    except BaseException:
        if store:
            store.discard_if_empty()  # a run refused or stopped before its first cell leaves nothing behind
        raise
    finally:
        if store:
            store.close()
    return rows_to_frame(rows)
