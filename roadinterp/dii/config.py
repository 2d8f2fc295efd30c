"""What one DII run is told (:class:`DIIConfig`) and what it returns (:class:`TrainResult`).

A DII *cell* is a site, an intervention family and a size; :class:`DIIConfig` holds
everything else a run needs (seed, data sizes, optimisation, RoAd variant and depth,
threads, engine). A search builds one per cell and seed from its own ``dii`` field;
``train_dii``/``train_dii_batched`` read it; ``run.json`` stores it. Every field's help
lives in its metadata (``field(metadata={"help": ...})``), where the CLI and
docs/cli.md read it. :func:`check_cell` refuses a cell before any compute is spent and
:func:`make_data` draws its counterfactuals. No torch work happens here, and nothing heavy
is imported until a config is built (the CLI reads these fields at start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from roadinterp import bounds
from roadinterp.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the modules load torch and pyvene
    from roadinterp.road.rotation import Variant
    from roadinterp.sites import Site
    from roadinterp.tasks.base import Mode

Engine = Literal["auto", "kv", "kv-bf16", "replay", "pyvene"]
ENGINES: tuple[str, ...] = ("auto", "kv", "kv-bf16", "replay", "pyvene")  # kv*: roadinterp.dii.kvreplay


@dataclass
class DIIConfig:
    """Hyper-parameters of one DII training run (a *cell* of a search, one seed)."""

    family: str = field(default="butterfly", metadata={
        "help": "Intervention family: neuron, neuron-fixed, road, butterfly, das, lowrank, boundless (or registered)."})
    size: int = field(default=8, metadata={"help": "Rotated coordinates per causal variable."})
    seed: int = field(default=0, metadata={"help": "Seeds the intervention's init, the data order and the training data."})
    hypothesis: str = field(default="main", metadata={"help": "'main' or a rival hypothesis of the task."})
    variables: tuple[str, ...] | None = field(default=None, metadata={
        "help": "The main hypothesis's causal variables to align, each in its own subspace (default: all; "
                "MIB aligns one at a time). A rival hypothesis aligns all of its own."})
    n_train: int = field(default=8192, metadata={"help": "Training counterfactuals per cell."})
    n_test: int = field(default=2048, metadata={
        "help": "Held-out counterfactuals per cell (test split: entities/values never seen in training)."})
    epochs: int = field(default=4, metadata={"help": "Passes over the training counterfactuals.",
                                             "maximum": bounds.MAX_EPOCHS})
    batch_size: int | None = field(default=None, metadata={
        "help": "Counterfactuals per training step (default: n_train / 32, kept between 32 and 256, so "
                "small data still takes about 32 steps an epoch; 256 at the default n_train)."})
    lr: float | None = field(default=None, metadata={"minimum": 0.0,
        "help": "Adam learning rate (default: the family's own, Family.lr: 0.05 for RoAd families and the "
                "neuron mask, 0.01 for das/lowrank/boundless)."})
    mode: Mode = field(default="mixed", metadata={
        "help": "Which of the aligned variables a counterfactual swaps: each (one per row), all, or mixed "
                "(a random non-empty subset per row)."})
    test_seed: int = field(default=1_000_003, metadata={
        "help": "Seed of the held-out set, fixed so every cell is scored on the same counterfactuals."})
    variant: Variant = field(default="road_1", metadata={"help": "RoAd variant of road/butterfly: road_1, road_2 or road_4."})
    threads: int | None = field(default=1, metadata={
        "help": "torch threads during a run (1: reproducible across executors; none: leave as is).",
        "minimum": 0, "maximum": 1024})
    depth: int | None = field(default=None, metadata={
        "help": "Butterfly factors (strides 1..d/2 repeated; default: the family's, 2).", "maximum": 64})
    engine: Engine = field(default="auto", metadata={
        "help": "How DII steps run: auto (kv on causal LMs, else replay from the site, where verified exact; "
                "else pyvene), kv, kv-bf16 (its cache in bf16), replay, or pyvene (results agree to float error).",
        "flag": None})  # the CLI's --engine is RunOptions.engine (how a run runs, not part of run.json)

    def __post_init__(self) -> None:
        from roadinterp.interventions import get_family, list_families
        from roadinterp.road.rotation import VARIANTS
        from roadinterp.tasks.base import MODES

        if self.family not in list_families():
            get_family(self.family)  # raises UnknownNameError listing families
        maxima = {"size": bounds.MAX_WIDTH, "n_train": bounds.MAX_EXAMPLES, "n_test": bounds.MAX_EXAMPLES,
                  "epochs": bounds.MAX_EPOCHS, "batch_size": bounds.MAX_EXAMPLES}
        for name, maximum in maxima.items():
            if name != "batch_size" or self.batch_size is not None:
                bounds.positive_int(name, getattr(self, name), maximum=maximum)
        bounds.positive_int("seed", self.seed, minimum=0, maximum=bounds.MAX_SEED)
        if self.lr is not None:
            bounds.finite_float("lr", self.lr, minimum=0.0)
        if self.variables is not None:
            self.variables = check_variables(self.variables)
            if self.hypothesis != "main":
                raise ConfigError(f"variables selects among the main hypothesis's variables; hypothesis "
                                  f"{self.hypothesis!r} aligns all of its own (leave variables unset)")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be each, all or mixed, got {self.mode!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        for name, least in (("threads", 0), ("depth", 1)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise ConfigError(f"{name} must be an int >= {least} or null, got {v!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")

    @property
    def steps_batch(self) -> int:
        """Counterfactuals per step: ``batch_size``, or the default that follows ``n_train``."""
        return self.batch_size if self.batch_size is not None else default_batch_size(self.n_train)

    @property
    def learning_rate(self) -> float:
        from roadinterp.interventions import get_family

        return get_family(self.family).lr if self.lr is None else float(self.lr)


@dataclass
class TrainResult:
    """Outcome of one DII run. ``iia`` is held-out interchange intervention accuracy over the
    task's answers (argmax among the answer tokens / classes), ``train_iia`` the same on the
    training counterfactuals, ``iia_vocab`` held-out IIA over the model's full vocabulary (the
    top-1 token at the last position is the counterfactual answer's; MIB's reading; ``None``
    for tasks without answer tokens, such as vector tasks)."""

    iia: float
    train_iia: float
    site: Site
    config: DIIConfig
    variables: tuple[str, ...]
    coords: list[list[int]]
    seconds: float
    losses: list[float] = field(default_factory=list)
    interventions: list = field(default_factory=list, repr=False)
    engine: str = "pyvene"  # the engine that ran the steps (kv, kv-bf16, replay or pyvene: a results column)
    iia_vocab: float | None = None
    engine_reason: str = ""  # why engine="auto" fell back from the faster engines ("" when it did not)

    def row(self) -> dict[str, Any]:
        return {
            "family": self.config.family, "layer": self.site.layer, "component": self.site.component,
            "position": str(self.site.positions), "size": self.config.size, "seed": self.config.seed,
            "hypothesis": self.config.hypothesis, "iia": self.iia, "train_iia": self.train_iia,
            "iia_vocab": self.iia_vocab, "seconds": self.seconds, "engine": self.engine,
            "engine_reason": self.engine_reason,
        }


def default_batch_size(n_train: int, steps: int = 32, least: int = 32, most: int = 256) -> int:
    """About ``steps`` steps an epoch, between ``least`` and ``most`` rows (never above ``n_train``)."""
    return min(n_train, max(least, min(most, n_train // steps)))


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
    allowed = task.hypothesis_variables(config.hypothesis)
    if config.variables is None:
        return allowed
    unknown = [v for v in config.variables if v not in allowed]
    if unknown:
        raise ConfigError(f"unknown variable {unknown[0]!r} for task {task.name}; its variables: {', '.join(allowed)}")
    return tuple(config.variables)


def check_cell(model, task, site: Site, config: DIIConfig) -> int:
    """Validate a cell before spending compute; return the site width."""
    from roadinterp.sites import validate_site

    width = validate_site(model, site)
    n_vars = len(cell_variables(task, config))
    if n_vars == 0:
        raise ConfigError(f"task {task.name} has no causal variables to align")
    from roadinterp.interventions import get_family

    check = get_family(config.family).check_site
    if check is not None:
        check(site)
    if config.size * n_vars > width:
        raise ConfigError(
            f"size {config.size} x {n_vars} variables = {config.size * n_vars} exceeds the site width {width} "
            f"at {site.label()}; use a size <= {width // n_vars}"
        )
    return width


def make_data(task, config: DIIConfig):
    """(train, test) counterfactual batches for a config (deterministic)."""
    variables = cell_variables(task, config)
    train = task.counterfactuals(config.n_train, split="train", seed=config.seed,
                                 hypothesis=config.hypothesis, variables=variables, mode=config.mode)
    test = task.counterfactuals(config.n_test, split="test", seed=config.test_seed,
                                hypothesis=config.hypothesis, variables=variables, mode=config.mode)
    return train, test
