"""``screen()``: a ScreenConfig in, a :class:`ScreenResult` (the grid, its timings, AtP's error) out.

The flow: the model and the bound task (prompt tasks on the model's own tokenizer, filtered to
the prompts it answers right, as a search binds them) -> the held-out counterfactuals of the
whole-site control (:func:`roadinterp.controls.joint_counterfactuals`: every screened variable
from one source) -> the grid's positions (:mod:`roadinterp.screen.grid`) -> the exact patch
(:mod:`roadinterp.screen.exact`) and the AtP estimate (:mod:`roadinterp.screen.atp`) of every
cell -> one table row per cell, scored as DII scores a cell: IIA is the share of rows whose
argmax over the task's answers is the counterfactual label (``fit.iia_scores``' reading), the
no-op is :func:`roadinterp.controls.null_iia` of the same rows.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch

from roadinterp.errors import ConfigError
from roadinterp.screen.compare import compare
from roadinterp.screen.config import ScreenConfig

GRID_COLUMNS = ["layer", "position", "offset", "name", "iia", "delta", "atp", "identical"]


@dataclass
class ScreenResult:
    """The grid (one row per layer x position) and what describes it (``meta``)."""

    config: ScreenConfig
    grid: pd.DataFrame  # GRID_COLUMNS
    meta: dict[str, Any] = field(default_factory=dict)  # model, no-op, seconds, peak memory, AtP vs exact

    def to_json(self) -> dict[str, Any]:
        grid = self.grid.astype(object).where(self.grid.notna(), None)
        return {"kind": "roadinterp-screen", "version": 1, "config": self.config.to_json(), "meta": self.meta,
                "grid": grid.to_dict(orient="records")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScreenResult:
        return cls(ScreenConfig.from_json(d["config"]), pd.DataFrame(d["grid"], columns=GRID_COLUMNS), d["meta"])


def _load(config: ScreenConfig, model, task, tokenizer):
    from roadinterp import zoo
    from roadinterp.tasks import get_task

    task = get_task(task if task is not None else config.task)
    if model is None or isinstance(model, str):
        spec = model or config.model or zoo.default_model(task.name)
        model, tokenizer = zoo.load_model(spec, device="cpu"), tokenizer or zoo.load_tokenizer(spec)
    else:
        spec = config.model or f"module:{type(model).__name__}"
    model.eval()
    if task.needs_tokenizer and not getattr(task, "bound", False):
        task = task.bind(tokenizer=tokenizer, model=model, cache_dir=zoo.cache_dir() / "filters",
                         template=config.template)
    return spec, model, task


def _peak_reset() -> None:
    try:  # Linux: reset the process's peak RSS (VmHWM), so the reading below is this screen's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def screen(config: ScreenConfig | None = None, *, model=None, task=None, tokenizer=None, progress=None,
           **overrides) -> ScreenResult:
    """Screen every layer x every prompt position of ``model`` on ``task`` (see :mod:`roadinterp.screen`).

    ``overrides`` are ScreenConfig fields. ``model`` may be a spec or an ``nn.Module`` (with
    ``tokenizer`` for prompt tasks), ``task`` a name or a Task (bound or not). ``progress(done,
    total, what)`` is called as cells finish.
    """
    from roadinterp import controls as C
    from roadinterp._scoped import torch_threads
    from roadinterp.screen.atp import atp_cells, changing
    from roadinterp.screen.exact import kv_reason
    from roadinterp.screen.grid import grid_positions
    from roadinterp.sites import Site, n_layers, validate_site

    config = replace(config or ScreenConfig(), **overrides) if overrides else (config or ScreenConfig())
    if isinstance(task, str):
        config = replace(config, task=task)
        task = None
    t0 = time.perf_counter()
    spec, model, task = _load(config, model, task, tokenizer)
    total_layers = n_layers(model)
    layers = config.layers if config.layers is not None else list(range(total_layers))
    for layer in layers:
        validate_site(model, Site(layer, config.component))  # SiteError naming the layer or component
    engine = config.engine
    if engine in ("auto", "kv"):
        why = kv_reason(model, config.component)
        if why and engine == "kv":
            raise ConfigError(f"engine='kv' is not possible here: {why}; use engine='hooks'")
        engine = "hooks" if why else "kv"
    _peak_reset()
    with torch_threads(config.threads) if config.threads else contextlib.nullcontext():
        batch = C.single_source(C.joint_counterfactuals(task, config.n, seed=config.seed, variables=config.variables)[0])
        positions = grid_positions(task, batch)
        exact_at = [p for p in positions if config.exact == "all" or (config.exact == "named" and p.named)]
        t_load = time.perf_counter() - t0
        n_cells = len(layers) * (len(exact_at) + (len(positions) if config.atp else 0))
        done = 0

        def tick(what):
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, n_cells, what)

        cells: dict[tuple[int, str], dict[str, Any]] = {}
        t1 = time.perf_counter()
        if exact_at:
            engine = _score_exact(cells, engine, config, model, task, batch, layers, exact_at, tick)
        t_exact = time.perf_counter() - t1
        t2 = time.perf_counter()
        if config.atp:
            for layer, label, rows, est in atp_cells(model, task, batch, layers, config.component, positions,
                                                     max(1, config.batch_size // 4)):
                c = cells.setdefault((layer, label), {})
                c["atp"] = c.get("atp", 0.0) + float(est.sum())
                tick(f"atp L{layer} {label}")
        t_atp = time.perf_counter() - t2
        threads = torch.get_num_threads()
    y, change = batch.labels, changing(batch)
    n, n_change = len(y), max(int(change.sum()), 1)
    records = []
    for pos in positions:
        for layer in layers:
            c = cells.get((layer, pos.label), {})
            records.append({"layer": layer, "position": pos.label, "offset": pos.offset, "name": pos.name,
                            "iia": c["correct"] / n if "correct" in c else None,
                            "delta": c["delta"] / n_change if "delta" in c else None,
                            "atp": c["atp"] / n_change if "atp" in c else None,
                            "identical": c.get("identical") if "correct" in c else None})
    grid = pd.DataFrame(records, columns=GRID_COLUMNS)
    null = C.null_iia(batch)
    meta = {"model": spec, "task": task.name, "template": getattr(task, "template", None),
            "variables": list(config.variables or task.hypothesis_variables("main")),
            "component": config.component, "layers": layers, "positions": [p.label for p in positions],
            "n": n, "n_changing": int(change.sum()), "iia_null": null, "engine": engine if exact_at else None,
            "seq_len": int(next(iter(batch.base.values())).shape[1]),
            "seconds": {"load": round(t_load, 3), "exact": round(t_exact, 3), "atp": round(t_atp, 3),
                        "screen": round(t_exact + t_atp, 3)},
            "peak_rss_mb": round(_peak_mb(), 1), "torch_threads": threads,
            "compare": compare(grid, null)}
    return ScreenResult(config, grid, meta)


def _score_exact(cells: dict, engine: str, config: ScreenConfig, model, task, batch, layers, positions, tick) -> str:
    """Accumulate each cell's correct rows, logit-difference change and identity into ``cells``; the
    engine that ran (auto falls back from kv to hooks when the KV tails fail their check)."""
    from roadinterp.screen.atp import changing
    from roadinterp.screen.exact import hook_cells, kv_cells

    args = (model, task, batch, layers, config.component, positions, config.batch_size)
    try:
        stream = (kv_cells if engine == "kv" else hook_cells)(*args)
        first = next(stream)
    except ConfigError:
        if config.engine == "kv" or engine != "kv":
            raise
        engine, stream = "hooks", hook_cells(*args)
        first = next(stream)
    change, clean = changing(batch), {}
    for layer, label, rows, z in _chain(first, stream):
        y_rows = batch.labels[rows]
        margin = _margin(y_rows, batch.base_labels[rows])
        if layer is None:
            clean[rows.start] = z
            continue
        c = cells.setdefault((layer, label), {"correct": 0, "delta": 0.0, "identical": True})
        c["correct"] += int((z.argmax(-1) == y_rows).sum())  # fit.iia_scores' reading
        c["delta"] += float(((margin(z) - margin(clean[rows.start])) * change[rows]).sum())
        c["identical"] &= z is clean[rows.start]
        tick(f"exact L{layer} {label}")
    return engine


def _margin(y: torch.Tensor, yb: torch.Tensor):
    """``z -> z[y] - z[y_base]`` per row: the logit difference toward the counterfactual label."""
    ar = torch.arange(len(y))
    return lambda z: z[ar, y] - z[ar, yb]


def _chain(first, rest):
    yield first
    yield from rest
