"""Causal tasks: a causal model, the inputs it reads, and counterfactual data.

A :class:`Task` owns a small *causal model*: named intermediate variables computed
from raw inputs (integers, entity ids), and an output label. Interchange semantics:
a counterfactual label is obtained by running the causal model on the *base* input
with some variables forced to the value they take on a *source* input; variables that
are not forced are recomputed from their parents (so forcing ``ones`` changes
``carry`` unless ``carry`` is forced too). A hypothesis ("main" or a rival) chooses
which variables may be forced and, for rivals, possibly a different output function.

Subclasses implement four small pieces: ``_sample`` (raw inputs of a split),
``_evaluate`` (the causal model with optional per-row interventions), ``encode``
(raw inputs -> model kwargs) and optionally ``_sample_source``. Everything else —
factual data, counterfactual batches in the three modes, seeding — lives here once.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from roadinterp.errors import ConfigError, UnknownNameError
from roadinterp.registry import Registry

Split = Literal["train", "test"]
Mode = Literal["each", "all", "mixed"]
SPLITS: tuple[str, ...] = ("train", "test")
MODES: tuple[str, ...] = ("each", "all", "mixed")

# Raw inputs: name -> int/bool numpy array of shape [n].
Raw = dict[str, np.ndarray]
# Per-row interventions handed to _evaluate: variable -> (mask [n] bool, values [n]).
Do = dict[str, tuple[np.ndarray, np.ndarray]]


def _unknown_variable(task: str, hypothesis: str, name: object, known: tuple[str, ...]) -> UnknownNameError:
    return UnknownNameError(f"unknown variable {name!r} of task {task!r}, hypothesis {hypothesis!r}; "
                            f"known variables: {', '.join(known)}")


def do(interventions: Do | None, name: str, natural: np.ndarray) -> np.ndarray:
    """Value of variable ``name``: the intervened value where masked, else ``natural``."""
    if interventions and name in interventions:
        mask, value = interventions[name]
        return np.where(mask, value, natural)
    return natural


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """Independent, reproducible numpy stream for (seed, keys...) — stable across runs."""
    words = [int(seed)] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(words)


def take(raw: Raw, idx: np.ndarray) -> Raw:
    return {k: v[idx] for k, v in raw.items()}


def where_raw(mask: np.ndarray, a: Raw, b: Raw) -> Raw:
    """Row-wise choice: ``a`` where mask, else ``b``."""
    return {k: np.where(mask, a[k], b[k]) for k in a}


@dataclass
class CounterfactualBatch:
    """Base inputs, one source per variable, which variables are swapped, and labels.

    ``base`` and every ``sources[i]`` are model kwargs with the same keys and shapes
    (``{"inputs_embeds": [n, 1, 16]}`` or ``{"input_ids": [n, seq]}``). Row ``r`` of
    ``sources[i]`` is a copy of the base input when ``intervened[r, i]`` is False.
    ``raw`` keeps the raw causal-model inputs (``{"base": Raw, "sources": [Raw, ...]}``)
    for tests and debugging; it is optional.
    """

    base: dict[str, torch.Tensor]
    sources: list[dict[str, torch.Tensor]]
    intervened: torch.Tensor  # bool [n, n_vars]
    labels: torch.Tensor  # long [n]
    base_labels: torch.Tensor  # long [n]
    variables: tuple[str, ...]
    raw: dict[str, Any] | None = field(default=None, repr=False)
    # Named positions that differ per row: name -> long [n, 1 + n_vars] (column 0 the base,
    # column 1 + i source i). None when the task's positions are fixed (task.positions).
    positions: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Any) -> CounterfactualBatch:
        """Rows ``idx`` (slice, index list/array/tensor or bool mask) of every field."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx_t = torch.as_tensor(idx)
        if idx_t.dtype == torch.bool:
            idx_t = idx_t.nonzero().flatten()
        idx_t = idx_t.long()
        idx_np = idx_t.numpy()
        raw = None
        if self.raw is not None:
            raw = {"base": take(self.raw["base"], idx_np),
                   "sources": [take(s, idx_np) for s in self.raw["sources"]]}
        return CounterfactualBatch(
            base={k: v[idx_t] for k, v in self.base.items()},
            sources=[{k: v[idx_t] for k, v in s.items()} for s in self.sources],
            intervened=self.intervened[idx_t],
            labels=self.labels[idx_t],
            base_labels=self.base_labels[idx_t],
            variables=self.variables,
            raw=raw,
            positions=None if self.positions is None else {k: v[idx_t] for k, v in self.positions.items()},
        )

    @classmethod
    def concat(cls, parts: Sequence[CounterfactualBatch]) -> CounterfactualBatch:
        """Rows of ``parts`` one after the other (``raw`` is dropped)."""
        first = parts[0]
        return cls(
            base={k: torch.cat([p.base[k] for p in parts]) for k in first.base},
            sources=[{k: torch.cat([p.sources[i][k] for p in parts]) for k in s} for i, s in enumerate(first.sources)],
            intervened=torch.cat([p.intervened for p in parts]),
            labels=torch.cat([p.labels for p in parts]),
            base_labels=torch.cat([p.base_labels for p in parts]),
            variables=first.variables,
            positions=None if first.positions is None else {
                k: torch.cat([p.positions[k] for p in parts]) for k in first.positions},  # type: ignore[index]
        )


class Task:
    """A causal task. Subclass, set the class attributes, implement the hooks, register.

    Attributes: ``name``, ``description``, ``kind`` ("vector" or "tokens"),
    ``variables`` (main hypothesis), ``rivals`` (name -> variables), ``n_classes``,
    ``positions`` (named positions -> index; ``None`` for a position that differs per
    example, given per row by :meth:`encode_rows`). Token tasks also have ``vocab``,
    ``answer_tokens`` and ``decode``. ``needs_tokenizer`` tasks run on a pretrained
    model's own tokenizer: :meth:`bind` them to it first (the search does).
    """

    name: str = ""
    description: str = ""
    kind: Literal["vector", "tokens"] = "vector"
    variables: tuple[str, ...] = ()
    rivals: ClassVar[dict[str, tuple[str, ...]]] = {}
    n_classes: int = 2
    positions: ClassVar[dict[str, int | None]] = {"last": 0}
    needs_tokenizer: ClassVar[bool] = False

    # ----- hooks for subclasses ---------------------------------------------------------
    def _sample(self, n: int, rng: np.random.Generator, split: str) -> Raw:
        """``n`` raw inputs of ``split``."""
        raise NotImplementedError

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        """Every variable of ``hypothesis`` plus ``"output"`` (the label index), per row."""
        raise NotImplementedError

    def encode(self, raw: Raw) -> dict[str, torch.Tensor]:
        """Raw inputs -> model kwargs."""
        raise NotImplementedError

    def _sample_source(self, base: Raw, variable: str, rng: np.random.Generator, split: str) -> Raw:
        """Source inputs used to swap ``variable`` into ``base``. Default: independent draws."""
        return self._sample(len(next(iter(base.values()))), rng, split)

    def encode_rows(self, raw: Raw) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray] | None]:
        """Model kwargs and the per-row named positions (name -> int array [n]), if any.

        Default: :meth:`encode` and no per-row positions. Tasks whose prompts differ in
        length (the LM prompt tasks) return where each named token sits in each row.
        """
        return self.encode(raw), None

    def bind(self, *, tokenizer: Any = None, model: Any = None, cache_dir: Any = None,
             template: str = "auto") -> Task:
        """This task, ready for ``model`` and its ``tokenizer``.

        Tasks on their own small vocabulary need neither and return themselves; tasks
        that read a pretrained model's tokenizer (``needs_tokenizer``) return a bound copy
        whose answer ids come from ``tokenizer`` and whose prompts are in its chat format or
        raw (``template``; see :class:`roadinterp.tasks.PromptTask`).
        """
        return self

    # ----- public API -----------------------------------------------------------------
    def hypothesis_variables(self, hypothesis: str = "main") -> tuple[str, ...]:
        if hypothesis == "main":
            return tuple(self.variables)
        if hypothesis not in self.rivals:
            known = ", ".join(["main", *self.rivals])
            raise UnknownNameError(f"unknown hypothesis {hypothesis!r} for task {self.name!r}; known hypotheses: {known}")
        return tuple(self.rivals[hypothesis])

    def causal_model(
        self,
        inputs_raw: Raw,
        *,
        hypothesis: str = "main",
        interventions: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Evaluate the causal model row by row: every variable and ``"output"``.

        ``interventions`` maps a variable to forced values (array [n] or scalar), or to
        ``(mask, values)`` to force only the rows where ``mask`` is True.
        """
        allowed = self.hypothesis_variables(hypothesis)
        n = len(next(iter(inputs_raw.values())))
        dos: Do = {}
        for var, spec in (interventions or {}).items():
            if var not in allowed:
                raise _unknown_variable(self.name, hypothesis, var, allowed)
            if isinstance(spec, tuple):
                mask, value = spec
            else:
                mask, value = np.ones(n, dtype=bool), spec
            dos[var] = (np.asarray(mask, dtype=bool), np.broadcast_to(np.asarray(value), (n,)))
        raw = {k: np.asarray(v) for k, v in inputs_raw.items()}
        return self._evaluate(raw, hypothesis, dos or None)

    def sample_raw(self, n: int, *, split: str = "train", seed: int = 0) -> Raw:
        """``n`` raw inputs (before encoding), the same ones :meth:`factual` encodes."""
        self._check(n, split)
        return self._sample(n, rng_for(seed, self.name, split, "factual"), split)

    def factual(self, n: int, *, split: str = "train", seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``n`` inputs (model kwargs) and their labels, for training and evaluating models."""
        raw = self.sample_raw(n, split=split, seed=seed)
        labels = torch.as_tensor(self._evaluate(raw, "main", None)["output"].astype(np.int64))
        return self.encode(raw), labels

    def counterfactuals(
        self,
        n: int,
        *,
        split: str = "train",
        seed: int = 0,
        hypothesis: str = "main",
        variables: tuple[str, ...] | list[str] | None = None,
        mode: str = "mixed",
    ) -> CounterfactualBatch:
        """Interchange-intervention data for ``hypothesis`` (labels from its causal model).

        ``mode``: "each" — one variable per row, round robin; "all" — every variable;
        "mixed" — a uniformly random non-empty subset.
        """
        self._check(n, split)
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        allowed = self.hypothesis_variables(hypothesis)
        if not allowed:
            raise ConfigError(f"task {self.name!r} has no causal variables; it is a behaviour task")
        if variables is None:
            variables = allowed
        variables = tuple(variables)
        if not variables:
            raise ConfigError("variables must name at least one variable")
        for v in variables:
            if v not in allowed:
                raise _unknown_variable(self.name, hypothesis, v, allowed)
        if len(set(variables)) != len(variables):
            raise ConfigError(f"variables must be distinct, got {variables}")

        rng = rng_for(seed, self.name, split, "counterfactual", hypothesis, variables, mode)
        k = len(variables)
        base = self._sample(n, rng, split)
        if mode == "each":
            mask = np.zeros((n, k), dtype=bool)
            mask[np.arange(n), np.arange(n) % k] = True
        elif mode == "all":
            mask = np.ones((n, k), dtype=bool)
        else:  # mixed: a uniform non-empty subset, as bits of an integer in [1, 2^k)
            codes = rng.integers(1, 2**k, size=n)
            mask = ((codes[:, None] >> np.arange(k)[None, :]) & 1).astype(bool)

        sources_raw: list[Raw] = []
        dos: Do = {}
        for i, var in enumerate(variables):
            drawn = self._sample_source(base, var, rng, split)
            src = where_raw(mask[:, i], drawn, base)
            sources_raw.append(src)
            dos[var] = (mask[:, i], self._evaluate(src, hypothesis, None)[var])
        labels = self._evaluate(base, hypothesis, dos)["output"].astype(np.int64)
        base_labels = self._evaluate(base, hypothesis, None)["output"].astype(np.int64)
        encoded = [self.encode_rows(r) for r in (base, *sources_raw)]
        positions = None
        if encoded[0][1] is not None:  # per-row positions: [n, 1 + n_vars], base first
            positions = {name: torch.as_tensor(np.stack([e[1][name] for e in encoded], 1), dtype=torch.long)
                         for name in encoded[0][1]}
        return CounterfactualBatch(
            base=encoded[0][0],
            sources=[e[0] for e in encoded[1:]],
            intervened=torch.as_tensor(mask),
            labels=torch.as_tensor(labels),
            base_labels=torch.as_tensor(base_labels),
            variables=variables,
            raw={"base": base, "sources": sources_raw},
            positions=positions,
        )

    def logits(self, model_output: Any) -> torch.Tensor:
        """[n, n_classes] class scores from a model output (HF output object or tuple)."""
        logits = model_output.logits if hasattr(model_output, "logits") else model_output[0]
        if logits.dim() == 3:  # [n, seq, classes]
            logits = logits[:, -1, :]
        return logits

    def _check(self, n: int, split: str) -> None:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"n must be a positive integer, got {n!r}")
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")

    def __repr__(self) -> str:
        return f"<Task {self.name!r} kind={self.kind} variables={self.variables}>"


class TokenTask(Task):
    """A task whose inputs are token ids over ``vocab``; the answer is read at the last
    position, restricted to ``answer_tokens`` (label ``i`` = ``answer_tokens[i]``)."""

    kind: Literal["vector", "tokens"] = "tokens"
    vocab: ClassVar[list[str]] = []
    answer_tokens: ClassVar[list[str]] = []

    @property
    def token_id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocab)}

    @property
    def answer_ids(self) -> list[int]:
        ids = self.token_id
        return [ids[t] for t in self.answer_tokens]

    def decode(self, ids: Any) -> str | list[str]:
        """Token ids -> space-separated string ([seq] -> str, [n, seq] -> list of str)."""
        ids_t = torch.as_tensor(ids)
        if ids_t.dim() == 2:
            return [self.decode(row) for row in ids_t]  # type: ignore[misc]
        return " ".join(self.vocab[int(i)] for i in ids_t)

    def logits(self, model_output: Any) -> torch.Tensor:
        logits = model_output.logits if hasattr(model_output, "logits") else model_output[0]
        return logits[:, -1, self.answer_ids]  # [n, n_classes]

    def answer_token_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Class labels -> vocabulary ids of the answer tokens (for LM training)."""
        return torch.as_tensor(self.answer_ids, dtype=torch.long)[labels]


# ----- registry -------------------------------------------------------------------------
_TASKS: Registry[Task] = Registry("task")


def register_task(task: Task, *, overwrite: bool = False) -> None:
    """Make ``task`` available to :func:`get_task` under ``task.name``."""
    if not isinstance(task, Task):
        raise ConfigError(f"register_task expects a Task instance, got {type(task).__name__}")
    if not task.name:
        raise ConfigError("task.name must be a non-empty string")
    if task.kind not in ("vector", "tokens"):
        raise ConfigError(f"task.kind must be 'vector' or 'tokens', got {task.kind!r}")
    _TASKS.register(task.name, task, overwrite=overwrite)


def get_task(name: str | Task) -> Task:
    """A task by name: registered, installed as a plugin, or a reference to user code.

    ``name`` may be a registered name (``"ioi"``), the name of an installed plugin (entry
    point group ``roadinterp.tasks``), ``"path/to/file.py:NAME"`` or
    ``"package.module:NAME"``, where ``NAME`` is a Task instance or a Task subclass (built
    with no arguments). A referenced task is registered under its own ``name`` too, and a
    search keeps the reference in its config, so worker processes import the same code.
    A Task instance is returned as is.
    """
    if isinstance(name, Task):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"a task is a name or a Task, got {type(name).__name__}")
    if name in _TASKS:
        return _TASKS.get(name)
    if ":" in name:
        return _load_reference(name)
    _load_plugins()
    return _TASKS.get(name)  # UnknownNameError listing the tasks


_REFERENCES: dict[str, Task] = {}


def _load_reference(ref: str) -> Task:
    """Import ``file.py:NAME`` or ``package.module:NAME`` once per process and register its task."""
    if ref in _REFERENCES:
        return _REFERENCES[ref]
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    where, _, attr = ref.rpartition(":")
    if not where or not attr.isidentifier():
        raise ConfigError(f"a task reference looks like path/to/file.py:NAME or package.module:NAME, got {ref!r}")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"task file {where!r} does not exist (from --task {ref!r})")
        mod_name = f"roadinterp_user_task_{zlib.crc32(str(path).encode()):08x}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[mod_name] = module  # dataclasses and pickling look classes up here
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ConfigError(f"cannot import module {where!r} for task {ref!r}: {err}") from None
    if not hasattr(module, attr):
        names = sorted(k for k, v in vars(module).items() if _is_task(v))
        raise ConfigError(f"{where} defines no {attr!r}; tasks it defines: {', '.join(names) or '(none)'}")
    task = _as_task(getattr(module, attr), ref)
    register_task(task, overwrite=True)
    _REFERENCES[ref] = task
    return task


def _is_task(obj: object) -> bool:
    return isinstance(obj, Task) or (isinstance(obj, type) and issubclass(obj, Task) and obj is not Task
                                     and bool(getattr(obj, "name", "")))


def _as_task(obj: object, where: str) -> Task:
    if isinstance(obj, type) and issubclass(obj, Task):
        obj = obj()
    if not isinstance(obj, Task):
        raise ConfigError(f"{where} is a {type(obj).__name__}, not a roadinterp Task; point it at a Task "
                          "instance or a Task subclass (roadinterp.tasks.Task, TokenTask or PromptTask)")
    return obj


_PLUGINS_LOADED = False


def _load_plugins() -> None:
    """Register the tasks of installed packages (entry point group ``roadinterp.tasks``), once."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="roadinterp.tasks"):
        if ep.name in _TASKS:
            continue
        try:
            obj = ep.load()
        except Exception as err:  # name the broken plugin in one error line
            raise ConfigError(f"task plugin {ep.name!r} ({ep.value}) failed to import: {err}") from err
        task = _as_task(obj, f"task plugin {ep.name!r} ({ep.value})")
        if task.name not in _TASKS:
            register_task(task)


def list_tasks() -> list[Task]:
    """Registered tasks (built-in, then installed plugins and user tasks), in registration order."""
    _load_plugins()
    return _TASKS.values()
