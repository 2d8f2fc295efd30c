"""Training loops: distributed interchange intervention (DII) and adapter fitting.

**DII** (Geiger et al., DAS) asks whether a causal variable of a high-level model
lives in a subspace of a network's hidden state. For a base input ``b`` and a
source ``s``, we run the network on ``b`` but replace the variable's coordinates
(in a learned basis ``R``) with those computed on ``s``:
``h_b <- h_b + R^-1 M R (h_s - h_b)``. If the network then predicts what the
causal model predicts under the same interchange (the *counterfactual label*),
the alignment holds. ``R`` is learned by minimising cross-entropy to the
counterfactual labels; the score is *interchange intervention accuracy* (IIA) on
held-out counterfactuals built from entities/values never seen in training.

Families differ only in ``R``: axis-aligned neurons, one RoAd layer, a RoAd
butterfly, or pyvene's dense/low-rank/boundless rotations (see
:mod:`roadinterp.interventions.registry`). No I/O and no plotting happen here.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from roadinterp import bounds
from roadinterp.dii.replay import ENGINES, make_runner
from roadinterp.errors import ConfigError
from roadinterp.finite import check_step
from roadinterp.interventions import get_family, list_families, run_dii
from roadinterp.sites import Site, validate_site

DEFAULT_LR = {"neuron": 0.05, "neuron-fixed": 0.0, "road": 0.05, "butterfly": 0.05, "das": 0.01, "lowrank": 0.01, "boundless": 0.01}


@dataclass
class DIIConfig:
    """Hyper-parameters of one DII training run (a *cell* of a search)."""

    family: str = "butterfly"  # neuron | neuron-fixed | road | butterfly | das | lowrank | boundless (or registered)
    size: int = 8  # rotated coordinates per causal variable
    seed: int = 0  # seeds intervention init, data order and training data
    hypothesis: str = "main"  # "main" or a rival hypothesis of the task
    variables: tuple[str, ...] | None = None  # the main hypothesis's variables to align (None = all; MIB aligns one at a time)
    n_train: int = 8192  # training counterfactuals
    n_test: int = 2048  # held-out counterfactuals (test split: disjoint entities/values)
    epochs: int = 4  # passes over the training counterfactuals
    batch_size: int = 256  # examples per step
    lr: float | None = None  # None: the family's default (DEFAULT_LR)
    mode: str = "mixed"  # which variables a counterfactual swaps: each | all | mixed
    test_seed: int = 1_000_003  # fixed so every cell is scored on the same held-out set
    variant: str = "road_1"  # RoAd variant for road/butterfly
    threads: int | None = 1  # torch threads during the run (1 = reproducible across executors)
    depth: int | None = None  # butterfly factors (strides 1..d/2 repeated); None = family default (2)
    engine: str = "auto"  # auto | kv | kv-bf16 | replay | pyvene: how steps run (roadinterp.dii.replay.ENGINES; results agree to float error)

    def __post_init__(self) -> None:
        if self.family not in list_families():
            get_family(self.family)  # raises UnknownNameError listing families
        maxima = {"size": bounds.MAX_WIDTH, "n_train": bounds.MAX_EXAMPLES, "n_test": bounds.MAX_EXAMPLES,
                  "epochs": bounds.MAX_EPOCHS, "batch_size": bounds.MAX_EXAMPLES}
        for name, maximum in maxima.items():
            bounds.positive_int(name, getattr(self, name), maximum=maximum)
        bounds.positive_int("seed", self.seed, minimum=0, maximum=bounds.MAX_SEED)
        if self.lr is not None:
            bounds.finite_float("lr", self.lr, minimum=0.0)
        if self.variables is not None:
            self.variables = check_variables(self.variables)
            if self.hypothesis != "main":
                raise ConfigError(f"variables selects among the main hypothesis's variables; hypothesis "
                                  f"{self.hypothesis!r} aligns all of its own (leave variables unset)")
        if self.mode not in ("each", "all", "mixed"):
            raise ConfigError(f"mode must be each, all or mixed, got {self.mode!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR.get(self.family, 0.01) if self.lr is None else float(self.lr)


@dataclass
class TrainResult:
    """Outcome of one DII run. ``iia`` is held-out interchange intervention accuracy."""

    iia: float
    train_iia: float
    site: Site
    config: DIIConfig
    variables: tuple[str, ...]
    coords: list[list[int]]
    seconds: float
    losses: list[float] = field(default_factory=list)
    interventions: list = field(default_factory=list, repr=False)
    engine: str = "pyvene"  # the engine that ran the steps ("replay" or "pyvene")

    def row(self) -> dict[str, Any]:
        return {
            "family": self.config.family, "layer": self.site.layer, "component": self.site.component,
            "position": str(self.site.positions), "size": self.config.size, "seed": self.config.seed,
            "hypothesis": self.config.hypothesis, "iia": self.iia, "train_iia": self.train_iia,
            "seconds": self.seconds,
        }


def check_variables(variables) -> tuple[str, ...]:
    """``variables`` as a tuple of distinct names (a list from JSON or the CLI is fine)."""
    if isinstance(variables, str) or not isinstance(variables, (list, tuple)) or not variables:
        raise ConfigError(f"variables must be a non-empty list of variable names, got {variables!r}")
    if not all(isinstance(v, str) and v for v in variables) or len(set(variables)) != len(variables):
        raise ConfigError(f"variables must be distinct variable names, got {list(variables)!r}")
    return tuple(variables)


def cell_variables(task, config: DIIConfig) -> tuple[str, ...]:
    """The causal variables a cell aligns: ``config.variables`` if set (a subset of the main
    hypothesis's, in that order), else every variable of ``config.hypothesis``."""
    allowed = _variables(task, config.hypothesis)
    if config.variables is None:
        return allowed
    unknown = [v for v in config.variables if v not in allowed]
    if unknown:
        raise ConfigError(f"unknown variable {unknown[0]!r} for task {task.name}; its variables: {', '.join(allowed)}")
    return tuple(config.variables)


def _variables(task, hypothesis: str) -> tuple[str, ...]:
    if hypothesis == "main":
        return tuple(task.variables)
    if hypothesis not in task.rivals:
        known = ["main", *task.rivals]
        raise ConfigError(f"unknown hypothesis {hypothesis!r} for task {task.name}; known: {', '.join(known)}")
    return tuple(task.rivals[hypothesis])


def check_cell(model, task, site: Site, config: DIIConfig) -> int:
    """Validate a cell before spending compute; return the site width."""
    width = validate_site(model, site)
    n_vars = len(cell_variables(task, config))
    if n_vars == 0:
        raise ConfigError(f"task {task.name} has no causal variables to align")
    p = site.positions
    if config.family == "boundless" and (p == "all" or (isinstance(p, tuple) and len(p) > 1)):
        raise ConfigError(
            f"family boundless works on one position at a time (pyvene's boundary mask is [batch, d]), "
            f"got positions {p!r}; use a single position or another family"
        )
    if config.size * n_vars > width:
        raise ConfigError(
            f"size {config.size} x {n_vars} variables = {config.size * n_vars} exceeds the site width {width} "
            f"at {site.label()}; use a size <= {width // n_vars}"
        )
    return width


def _pred(task, output) -> torch.Tensor:
    return task.logits(output)


@torch.no_grad()
def evaluate_iia(pvm, task, site: Site, data, coords, *, batch_size: int = 1024) -> float:
    """Fraction of counterfactuals whose intervened prediction equals the label (through pyvene)."""
    correct = 0
    for start in range(0, len(data), batch_size):
        b = data.subset(slice(start, start + batch_size))
        out = run_dii(pvm, site, b.base, b.sources, coords, named_positions=task.positions)
        correct += int((_pred(task, out).argmax(-1) == b.labels).sum())
    return correct / max(len(data), 1)


@torch.no_grad()
def _runner_iia(runner, task, handle, labels: torch.Tensor, n: int, *, batch_size: int = 1024) -> float:
    """IIA of the first ``n`` rows of a prepared dataset, through a runner (replay or pyvene)."""
    correct = 0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        out = runner([(handle, idx)])
        correct += int((_pred(task, out).argmax(-1) == labels[idx]).sum())
    return correct / max(n, 1)


def randomized_copy(model, seed: int = 0):
    """A copy of ``model`` with freshly initialised weights (the random-init control)."""
    torch.manual_seed(seed)
    clone = copy.deepcopy(model)
    for m in clone.modules():
        if hasattr(m, "reset_parameters") and m is not clone:
            m.reset_parameters()
    if hasattr(clone, "_init_weights"):
        clone.apply(clone._init_weights)
    return clone.eval()


def make_data(task, config: DIIConfig):
    """(train, test) counterfactual batches for a config (deterministic)."""
    variables = cell_variables(task, config)
    train = task.counterfactuals(config.n_train, split="train", seed=config.seed,
                                 hypothesis=config.hypothesis, variables=variables, mode=config.mode)
    test = task.counterfactuals(config.n_test, split="test", seed=config.test_seed,
                                hypothesis=config.hypothesis, variables=variables, mode=config.mode)
    return train, test


def train_dii(model, task, site: Site, *, config: DIIConfig | None = None, data=None, **overrides) -> TrainResult:
    """Train one DII cell and score it on held-out counterfactuals.

    ``overrides`` are DIIConfig fields, e.g. ``train_dii(m, t, s, family="das", size=8, seed=0)``.
    ``data`` may pass precomputed ``(train, test)`` batches to share across cells.
    """
    config = DIIConfig(**{**(asdict(config) if config else {}), **overrides})
    width = check_cell(model, task, site, config)
    variables = cell_variables(task, config)
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        train, test = data if data is not None else make_data(task, config)
        fam = get_family(config.family)
        built = fam.build(width, [config.size] * len(variables), seed=config.seed, variant=config.variant,
                          depth=config.depth)
        runner, (h_train, h_test) = make_runner(model, site, task, built.interventions, built.coords,
                                                shared=built.shared, datasets=[train, test], engine=config.engine)
        params = [p for iv in {id(i): i for i in built.interventions}.values() for p in iv.parameters() if p.requires_grad]
        losses: list[float] = []
        lr = config.learning_rate
        if params and lr > 0:
            opt = torch.optim.Adam(params, lr=lr)
            gen = torch.Generator().manual_seed(config.seed)
            n = len(train)
            steps_per_epoch = math.ceil(n / config.batch_size)
            total = steps_per_epoch * config.epochs
            step = 0
            for _ in range(config.epochs):
                order = torch.randperm(n, generator=gen)
                for start in range(0, n, config.batch_size):
                    idx = order[start : start + config.batch_size]
                    _anneal_boundless(built.interventions, step, total)
                    out = runner([(h_train, idx)])
                    loss = torch.nn.functional.cross_entropy(_pred(task, out).float(), train.labels[idx])
                    loss = loss + _boundary_penalty(built.interventions)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    losses.append(check_step(loss, params, what=f"DII training ({config.family})", step=step))
                    opt.step()
                    step += 1
        for iv in built.interventions:
            iv.eval()
        iia = _runner_iia(runner, task, h_test, test.labels, len(test))
        train_iia = _runner_iia(runner, task, h_train, train.labels, min(len(train), config.n_test))
    finally:
        torch.set_num_threads(old_threads)
    return TrainResult(
        iia=iia, train_iia=train_iia, site=site, config=config, variables=variables, coords=built.coords,
        seconds=time.perf_counter() - t0, losses=losses, interventions=built.interventions, engine=runner.engine,
    )


def _anneal_boundless(interventions, step: int, total: int) -> None:
    """Temperature schedules: ``anneal(frac)`` (our neuron masks) or pyvene boundless's."""
    frac = step / max(total - 1, 1)
    for iv in {id(i): i for i in interventions}.values():
        if hasattr(iv, "anneal"):
            iv.anneal(frac)
        elif hasattr(iv, "set_temperature"):
            iv.set_temperature(torch.tensor(50.0 * (0.1 / 50.0) ** frac))


def _boundary_penalty(interventions) -> torch.Tensor | float:
    """Sparsity terms: ``penalty()`` (our neuron masks) or pyvene boundless's boundary width."""
    pen = 0.0
    for iv in {id(i): i for i in interventions}.values():
        if hasattr(iv, "penalty"):
            pen = pen + iv.penalty()
        elif hasattr(iv, "get_boundary_parameters"):
            pen = pen + 1e-3 * iv.get_boundary_parameters().sum()
    return pen


# ------------------------------------------------------------------ adapter training
def train_adapter(
    model, sites, interventions, inputs, labels, *, task, routes=None, steps: int = 300,
    batch_size: int = 256, lr: float = 0.05, seed: int = 0, threads: int | None = None,
) -> list[float]:
    """Fit sourceless interventions (one per site) to a task's labels; return the losses.

    ``interventions`` are pyvene sourceless interventions (``RoadIntervention`` sharing a
    ``RoadAdapter``'s rotations, LoReFT, ...), ``sites`` the :class:`Site` of each.
    ``routes`` (optional, one block/row list per example) is passed as pyvene
    ``subspaces`` at every site, so each example only moves its own subspace: the
    joint training with per-example routing of the RoAd paper's composition experiment.
    The loss is cross-entropy of ``task.logits`` against ``labels``; the model's own
    weights are frozen. Deterministic for a seed (data order).
    """
    from roadinterp.interventions import attach_sourceless, run_sourceless
    from roadinterp.sites import sequence_length
    from roadinterp.tasks import get_task

    task = get_task(task) if isinstance(task, str) else task
    sites, interventions = list(sites), list(interventions)
    if len(sites) != len(interventions):
        raise ConfigError(f"{len(sites)} sites but {len(interventions)} interventions; give one per site")
    for name in ("steps", "batch_size"):
        v = locals()[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive int, got {v!r}")
    n = len(labels)
    if routes is not None and len(routes) != n:
        raise ConfigError(f"routes has {len(routes)} rows but there are {n} examples")
    seq = sequence_length(inputs)
    n_units = [len(s.position_indices(seq, task.positions)) for s in sites]
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        pvm = attach_sourceless(model, sites, interventions, n_units=n_units)
        params = list({id(p): p for iv in interventions for p in iv.parameters() if p.requires_grad}.values())
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        order, pos, losses = torch.randperm(n, generator=gen), 0, []
        for iv in interventions:
            iv.train()
        for _ in range(steps):
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            batch = {k: v[idx] for k, v in inputs.items()}
            subspaces = None
            if routes is not None:
                rows = [list(routes[i]) for i in idx.tolist()]
                subspaces = [rows] * len(sites)
            out = run_sourceless(pvm, sites, batch, subspaces=subspaces, named_positions=task.positions)
            loss = torch.nn.functional.cross_entropy(task.logits(out).float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            losses.append(check_step(loss, params, what="adapter training", step=len(losses)))
            opt.step()
        for iv in interventions:
            iv.eval()
    finally:
        torch.set_num_threads(old_threads)
    return losses
