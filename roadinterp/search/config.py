"""What a search runs: :class:`SearchConfig`, the grid of cells and how each is trained.

A search is a grid (task, model, layers, components, positions, families, sizes, seeds)
plus one nested :class:`~roadinterp.dii.config.DIIConfig` (``dii``) for how every cell
trains. It is validated once, here, at construction; it *is* ``run.json`` (:meth:`to_json`
/ :meth:`from_json`, which also loads run.json files from before the nesting) and the
``--config`` file, and it crosses into worker processes as this picklable dataclass.
How a search runs (executor, workers, device, ...) is not part of it: see
:class:`roadinterp.search.options.RunOptions`. This module imports no torch, so the
CLI builds its options from these fields at start-up.
"""

from __future__ import annotations

from dataclasses import InitVar, asdict, dataclass, field, fields, replace
from typing import Any

from roadinterp import bounds
from roadinterp.dii.config import DIIConfig
from roadinterp.errors import ConfigError

# DIIConfig fields a search used to hold flat, before the nested ``dii`` (old run.json, keywords)
FLAT_DII = ("n_train", "n_test", "epochs", "batch_size", "lr", "mode")
# DIIConfig fields each cell sets itself (variables: from the search's own field, main hypothesis only)
PER_CELL = ("family", "size", "seed", "hypothesis", "variables")


@dataclass
class SearchConfig:
    """A whole search: the grid of cells and how each is trained. Saved as run.json; the CLI
    builds the same object. Every field's help is in its metadata (:func:`roadinterp.search.options.field_help`)."""

    task: str = field(default="hierarchical-equality", metadata={
        "help": "Task: a registered name, path/to/file.py:NAME or package.module:NAME.", "short": "-t"})
    model: str | None = field(default=None, metadata={
        "help": "zoo:NAME, local HF dir, .gguf file or hub id (default: the task's zoo model).", "short": "-m"})
    layers: list[int] | None = field(default=None, metadata={"help": "Layers to search (default: all)."})
    components: list[str] = field(default_factory=lambda: ["block_output"], metadata={
        "help": "pyvene components, e.g. block_output, mlp_output.", "flag": "--component"})
    positions: list = field(default_factory=lambda: ["last"], metadata={
        "help": "Positions, one cell per (layer, position): last, all, an index or a task-named position, "
                "also one that differs per row (ravel-city's city, ioi's io, s1, s2), e.g. city,last."})
    families: list[str] = field(default_factory=lambda: ["butterfly", "das"], metadata={
        "help": "Intervention families: neuron, neuron-fixed, road, butterfly, das, lowrank, boundless.",
        "flag": "--family"})
    sizes: list[int] = field(default_factory=lambda: [8], metadata={
        "help": "Sizes (coordinates per variable).", "flag": "--size"})
    variables: list[str] | None = field(default=None, metadata={
        "help": "Causal variables of the task's main hypothesis to align, each in its own subspace (default: "
                "all; MIB aligns one at a time, e.g. io_position on ioi). The no-op, site-patch and "
                "random-model controls use the same counterfactuals; rival hypotheses align all their own."})
    template: str = field(default="auto", metadata={
        "help": "How prompt tasks write prompts: auto = the tokenizer's chat format when it has a chat template, "
                "else raw; chat insists on it; raw never uses it. run.json records the form used."})
    seeds: int = field(default=3, metadata={"help": "Seeds per cell (0..seeds-1).", "maximum": bounds.MAX_SEEDS})
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
        from roadinterp.sites import parse_positions

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
        for name, typ in (("layers", int), ("components", str), ("positions", None), ("families", str),
                          ("sizes", int), ("variables", str)):
            _list(name, typ)
        self.positions = [_position(p, parse_positions) for p in self.positions]
        if self.layers is not None and any(l < 0 for l in self.layers):
            raise ConfigError(f"layers must be >= 0, got {self.layers}")
        if any(s < 1 for s in self.sizes):
            raise ConfigError(f"sizes must be >= 1, got {self.sizes}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"seeds must be a positive int, got {self.seeds!r}")
        bounds.positive_int("seeds", self.seeds, maximum=bounds.MAX_SEEDS)
        from roadinterp.tasks.prompt import TEMPLATES

        if self.template not in TEMPLATES:
            raise ConfigError(f"template must be one of {', '.join(TEMPLATES)}, got {self.template!r}")
        if not isinstance(self.controls, bool):
            raise ConfigError(f"controls must be true or false, got {self.controls!r}")
        if isinstance(self.dii, dict):
            self.dii = _dii_from_json(self.dii)
        if not isinstance(self.dii, DIIConfig):
            raise ConfigError(f"dii must be a DIIConfig or a JSON object of its fields, got {self.dii!r}")
        given = {k: v for k, v in zip(FLAT_DII, flat) if v is not None}
        if given:
            self.dii = _replace(self.dii, given)  # validates them
        for fam in self.families:
            DIIConfig(family=fam)  # unknown family -> error listing the known ones

    def with_dii(self, **changes) -> SearchConfig:
        """This config with some training fields changed (validated): ``cfg.with_dii(epochs=1)``."""
        bad = sorted(set(changes) & set(PER_CELL))
        if bad:
            raise ConfigError(f"{bad} are set per cell, not for the whole search")
        return replace(self, dii=_replace(self.dii, changes))

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
        training = {k: v for k, v in d.pop("dii").items() if k not in PER_CELL}
        return {**d, **training}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchConfig:
        """Load a config (run.json, --config): training fields at the top level (run.json's form)
        or nested under ``dii`` (a JSON object or a DIIConfig); top-level ones win."""
        if not isinstance(d, dict):
            raise ConfigError(f"a search config must be a JSON object, got {type(d).__name__}")
        own = {f.name for f in fields(cls)}
        training = {f.name for f in fields(DIIConfig)} - set(PER_CELL)
        bad = sorted(set(d) - own - training)
        if bad:
            raise ConfigError(f"unknown search config fields {bad}; known: {sorted(own | training)}")
        d = dict(d)
        flat = {k: d.pop(k) for k in list(d) if k in training and k not in own}
        if flat:
            nested = d.get("dii")
            if nested is not None and not isinstance(nested, (dict, DIIConfig)):
                raise ConfigError(f"dii must be a JSON object of its fields, got {nested!r}")
            d["dii"] = _replace(nested, flat) if isinstance(nested, DIIConfig) else {**(nested or {}), **flat}
        try:
            return cls(**d)
        except TypeError as e:  # a value of the wrong shape that a check compared or hashed
            raise ConfigError(f"bad search config: {e}") from None


def _position(p, parse_positions):
    """One entry of ``positions``: a name or index (str/int) or a list of indices (JSON's tuple)."""
    if isinstance(p, str):
        return parse_positions(p)
    if isinstance(p, (list, tuple)) and p and all(isinstance(i, int) and not isinstance(i, bool) for i in p):
        return tuple(p)
    if isinstance(p, int) and not isinstance(p, bool):
        return p
    raise ConfigError(f"positions must hold names (last, all, a task position), indices or lists of indices, "
                      f"got {p!r} ({type(p).__name__})")


def _replace(dii: DIIConfig, changes: dict[str, Any]) -> DIIConfig:
    try:
        return replace(dii, **changes)
    except TypeError as e:  # a value of the wrong shape (a list where a number belongs, ...)
        raise ConfigError(f"bad training setting in {sorted(changes)}: {e}") from None


def _dii_from_json(d: dict[str, Any]) -> DIIConfig:
    known = {f.name for f in fields(DIIConfig)} - set(PER_CELL)
    bad = sorted(set(d) - known)
    if bad:
        raise ConfigError(f"unknown dii fields {bad}; known: {sorted(known)}")
    try:
        return DIIConfig(**d)
    except TypeError as e:
        raise ConfigError(f"bad dii settings: {e}") from None
