"""What a screen runs: :class:`ScreenConfig` (the model, the task, the grid, the data, the engines).

It is ``screen.json``'s ``config`` block and what ``roadinterp screen`` builds from its options;
validated once, here. Imports no torch, so the CLI can read it at start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from roadinterp import bounds
from roadinterp.errors import ConfigError

EXACT = ("all", "named", "none")  # where the exact whole-vector patch runs
ENGINES = ("auto", "kv", "hooks")  # how the exact patch runs
COMPONENTS_KV = ("block_output", "block_input")  # the residual stream: what the KV tail engine patches
TEST_SEED = 1_000_003  # DIIConfig.test_seed: the screen scores the held-out counterfactuals every DII cell is scored on


@dataclass
class ScreenConfig:
    """A screen of every layer x every prompt position. Every field's help is in its metadata."""

    task: str = field(default="ioi", metadata={"help": "Task: a registered name, path/to/file.py:NAME or module:NAME."})
    model: str | None = field(default=None, metadata={
        "help": "zoo:NAME, local HF dir, .gguf file or hub id (default: the task's zoo model)."})
    variables: list[str] | None = field(default=None, metadata={
        "help": "Causal variables of the task's main hypothesis (default: all). Several: every one is taken "
                "from one source (the whole-site patch control's counterfactuals)."})
    layers: list[int] | None = field(default=None, metadata={"help": "Layers to screen (default: all)."})
    component: str = field(default="block_output", metadata={"help": "pyvene component patched at each layer."})
    n: int = field(default=64, metadata={"help": "Held-out counterfactuals (test split) the grid is scored on."})
    batch_size: int = field(default=64, metadata={
        "help": "Counterfactuals per forward (memory is bounded by this, not by n)."})
    seed: int = field(default=TEST_SEED, metadata={
        "help": "Seed of the counterfactuals (default: the held-out set every DII cell is scored on)."})
    template: str = field(default="auto", metadata={
        "help": "Prompt tasks: auto (the tokenizer's chat format if it has one), chat or raw."})
    exact: Literal["all", "named", "none"] = field(default="all", metadata={
        "help": "Where the exact whole-vector patch runs: all (every cell), named (named positions and last) "
                "or none (AtP only)."})
    atp: bool = field(default=True, metadata={"help": "Compute the attribution-patching estimate of every cell."})
    engine: Literal["auto", "kv", "hooks"] = field(default="auto", metadata={
        "help": "Exact patch engine: kv (causal LMs, residual stream: only the positions after the patch "
                "run, on cached keys/values), hooks (full forwards with a hook; any model) or auto."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (none: leave as is)."})

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"task must be a non-empty string, got {self.task!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ConfigError(f"model must be a non-empty string, got {self.model!r}")
        for name, typ in (("variables", str), ("layers", int)):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, (list, tuple)) or not v or any(not isinstance(x, typ) or isinstance(x, bool)
                                                               for x in v):
                raise ConfigError(f"{name} must be a non-empty list of {typ.__name__}s, got {v!r}")
            if len(set(v)) != len(v):
                raise ConfigError(f"{name} must be distinct, got {list(v)}")
            setattr(self, name, list(v))
        if self.layers is not None and min(self.layers) < 0:
            raise ConfigError(f"layers must be >= 0, got {self.layers}")
        if not isinstance(self.component, str) or not self.component:
            raise ConfigError(f"component must be a pyvene component name, got {self.component!r}")
        bounds.positive_int("n", self.n, maximum=bounds.MAX_EXAMPLES)
        bounds.positive_int("batch_size", self.batch_size, maximum=bounds.MAX_EXAMPLES)
        bounds.positive_int("seed", self.seed, minimum=0, maximum=bounds.MAX_SEED)
        from roadinterp.tasks.prompt import TEMPLATES

        for name, allowed in (("template", TEMPLATES), ("exact", EXACT), ("engine", ENGINES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.atp, bool):
            raise ConfigError(f"atp must be true or false, got {self.atp!r}")
        if self.exact == "none" and not self.atp:
            raise ConfigError("exact='none' and atp=False leave nothing to compute; keep one of them")
        if self.threads is not None:
            bounds.positive_int("threads", self.threads, maximum=1024)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScreenConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"a screen config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown screen config fields {bad}; known: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad screen config: {e}") from None


def field_help(name: str) -> str:
    """The help text of one field (the CLI's option help)."""
    return next(f.metadata["help"] for f in fields(ScreenConfig) if f.name == name)
