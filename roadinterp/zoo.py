"""A zoo of small models trained offline on the built-in tasks, and ``load_model``.

Every zoo entry names a task, an architecture with a tiny HF config, a training recipe
and a seed. ``load_model("zoo:NAME")`` returns the cached model or trains it on first
use (seconds to a few minutes on a laptop CPU), so tests, notebooks and experiments
never need the network. Training is deterministic for a given seed and recipe.

Cache layout (``$ROADINTERP_CACHE`` or ``~/.cache/roadinterp``)::

    zoo/NAME/model.safetensors   weights (safetensors only, never pickle)
    zoo/NAME/config.json         the HF config (with ``roadinterp_task``)
    zoo/NAME/meta.json           task, seed, held-out accuracy, train_seconds, version, recipe

A model directory is written to a temporary sibling and renamed into place, so a kill
mid-write never leaves something that looks complete. ``load_model`` also accepts a
local HF directory or a hub id (which fails with :class:`OfflineError` when offline).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from roadinterp._scoped import seeded, torch_threads
from roadinterp.errors import ConfigError, FileFormatError, unknown
from roadinterp.finite import check_step
from roadinterp.io import replace_path
from roadinterp.pretrained import (
    PRETRAINED,
    ensure_cached,
    list_pretrained,
    load_gguf,
    load_gguf_tokenizer,
    load_hf_tokenizer,
    load_hub,
    load_local_dir,
    n_params,
)
from roadinterp.registry import Registry
from roadinterp.tasks import get_task
from roadinterp.tasks.base import Task, TokenTask
from roadinterp.tasks.illusion import build_illusion_gpt2, gpt2_config

Arch = Literal["mlp", "gpt2", "llama"]
_ARCH_CLASSES = {  # arch -> (config class, model class), imported on first use
    "mlp": ("pyvene.models.mlp.modelings_mlp", "MLPConfig", "MLPForClassification"),
    "gpt2": ("transformers", "GPT2Config", "GPT2LMHeadModel"),
    "llama": ("transformers", "LlamaConfig", "LlamaForCausalLM"),
}
ARCHS: tuple[str, ...] = tuple(_ARCH_CLASSES)


@dataclass
class ZooEntry:
    """A named model: which task it solves, how it is built and how it is trained."""

    name: str  # zoo name, used as "zoo:NAME"
    task: str  # registered task name the model is trained on (its factual data)
    arch: Arch  # "mlp" (pyvene MLPForClassification), "gpt2" or "llama"
    config: dict[str, Any]  # HF config kwargs for the architecture
    steps: int = 2000  # optimiser steps
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100  # linear warm-up steps, then cosine decay to 10% of lr
    train_size: int = 50_000  # factual training examples drawn once from the train split
    eval_size: int = 4_000  # held-out (test split) examples for the reported accuracy
    seed: int = 0
    threads: int = 1  # torch CPU threads while training (tiny models run fastest on one)
    description: str = ""
    data: Callable[..., Any] | None = field(default=None, repr=False)  # (n, split, seed) -> (inputs, labels)
    weights: Callable[[torch.nn.Module], None] | None = field(default=None, repr=False)  # hand-set weights: no training

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(ARCHS)}; got {self.arch!r}")
        for key in ("steps", "batch_size", "train_size", "eval_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"zoo name must be a plain non-empty name, got {self.name!r}")

    def recipe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("data")
        d.pop("weights")
        d["hand_built"] = self.weights is not None
        return d


_ZOO: Registry[ZooEntry] = Registry("zoo model")


def register_zoo_model(entry: ZooEntry, *, overwrite: bool = False) -> None:
    """Add ``entry`` to the zoo (``load_model("zoo:" + entry.name)``)."""
    if entry.name not in _ZOO or overwrite:
        get_task(entry.task)  # fail early on an unknown task
    _ZOO.register(entry.name, entry, overwrite=overwrite)


def get_zoo_entry(name: str) -> ZooEntry:
    """The trainable zoo entry ``name`` (pretrained entries have none: they are loaded, not trained)."""
    if name in PRETRAINED:
        raise ConfigError(f"zoo model {name!r} is a pretrained model shipped as a wheel: there is nothing to "
                          f"train; load it with load_model('zoo:{name}') or --model zoo:{name}")
    if name not in _ZOO:
        raise unknown("zoo model", name, [*_ZOO, *PRETRAINED])  # pretrained names are zoo: names too
    return _ZOO.get(name)


# ----- cache ------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Root of the roadinterp cache: ``$ROADINTERP_CACHE`` or ``~/.cache/roadinterp``."""
    env = os.environ.get("ROADINTERP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "roadinterp"


def zoo_path(name: str) -> Path:
    return cache_dir() / "zoo" / name


def _is_complete(path: Path) -> bool:
    # meta.json is written last, and the directory only appears by rename.
    return all((path / f).is_file() for f in ("model.safetensors", "config.json", "meta.json"))


def is_cached(name: str) -> bool:
    return _is_complete(zoo_path(get_zoo_entry(name).name))


def zoo_meta(name: str) -> dict[str, Any]:
    """meta.json of a cached zoo model (task, seed, accuracy, train_seconds, recipe...)."""
    entry = get_zoo_entry(name)
    path = zoo_path(entry.name)
    if not _is_complete(path):
        raise FileFormatError(f"zoo model {name!r} is not cached at {path}; load_model('zoo:{name}') trains it")
    return json.loads((path / "meta.json").read_text())


# ----- building ---------------------------------------------------------------------------


def _classes(arch: str):
    import importlib

    module, config_name, model_name = _ARCH_CLASSES[arch]
    mod = importlib.import_module(module)
    return getattr(mod, config_name), getattr(mod, model_name)


def _config_class(arch: str):
    return _classes(arch)[0]


def _model_class(arch: str):
    return _classes(arch)[1]


def build_model(entry: ZooEntry) -> torch.nn.Module:
    """A freshly initialised (untrained) model for ``entry``; seed with torch.manual_seed first."""
    config = _config_class(entry.arch)(**entry.config)
    config.roadinterp_task = entry.task
    config.roadinterp_zoo = entry.name
    return _model_class(entry.arch)(config)


def _data(entry: ZooEntry, task: Task, n: int, split: str, seed: int):
    if entry.data is not None:
        return entry.data(n, split=split, seed=seed)
    return task.factual(n, split=split, seed=seed)


def _loss(task: Task, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor):
    out = model(**inputs, return_dict=True)
    if isinstance(task, TokenTask):
        # Full-vocabulary loss on the answer token, so greedy generation is right too.
        logits = out.logits[:, -1, :]  # [n, vocab]
        target = task.answer_token_ids(labels)
    else:
        logits, target = task.logits(out), labels
    return torch.nn.functional.cross_entropy(logits, target)


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, task: Task | str, inputs: dict[str, torch.Tensor],
                      labels: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Fraction of rows where argmax of ``task.logits`` equals the label."""
    from roadinterp.training import accuracy

    task = get_task(task)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return accuracy(lambda rows: task.logits(model(**{k: v[rows].to(device) for k, v in inputs.items()},
                                                       return_dict=True)), labels, batch_size=batch_size)
    finally:
        model.train(was_training)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


def train_zoo_model(name: str, *, seed: int | None = None, steps: int | None = None,
                    progress: bool = True, save: bool = True) -> torch.nn.Module:
    """Train zoo model ``name`` on CPU (deterministic for a seed), cache it, return it in eval mode.

    ``seed`` / ``steps`` override the entry's recipe (recorded in meta.json). With
    ``save=True`` the result replaces the cached copy atomically.
    """
    entry = get_zoo_entry(name)
    seed = entry.seed if seed is None else int(seed)
    steps = entry.steps if steps is None else int(steps)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    task = get_task(entry.task)

    with torch_threads(max(1, min(entry.threads, os.cpu_count() or 1))):
        return _train(entry, task, name, seed, steps, progress, save)


def _train(entry: ZooEntry, task: Task, name: str, seed: int, steps: int, progress: bool,
           save: bool) -> torch.nn.Module:
    start = time.perf_counter()
    inputs, labels = _data(entry, task, entry.train_size, "train", seed)
    gen = torch.Generator().manual_seed(seed)
    with seeded(seed):  # the init draws from torch's global generator; the caller's stream is kept
        model = build_model(entry)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": entry.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=entry.lr)
    warm = max(1, min(entry.warmup, steps // 10))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * t)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    if entry.weights is not None:  # built by hand (the illusion toys): set, do not train
        entry.weights(model)
        steps = 0
    bar = _progress(steps, progress, f"train {name}")
    try:
        for step in range(steps):
            idx = torch.randint(0, len(labels), (entry.batch_size,), generator=gen)
            loss = _loss(task, model, {k: v[idx] for k, v in inputs.items()}, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            check_step(loss, model.parameters(), what=f"zoo training ({name})", step=step,
                       hint="lower the entry's lr or change its seed")
            opt.step()
            sched.step()
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update(1)
    finally:
        bar.close()
    train_seconds = time.perf_counter() - start
    model.eval()
    test_inputs, test_labels = _data(entry, task, entry.eval_size, "test", 10_000 + seed)
    accuracy = evaluate_accuracy(model, task, test_inputs, test_labels)

    if save:
        from roadinterp._version import __version__

        recipe = entry.recipe() | {"seed": seed, "steps": steps}
        meta = {
            "name": entry.name, "task": entry.task, "arch": entry.arch, "seed": seed,
            "accuracy": accuracy, "accuracy_split": "test", "eval_size": entry.eval_size,
            "train_seconds": round(train_seconds, 3), "n_params": n_params(model),
            "roadinterp_version": __version__, "torch_version": torch.__version__,
            "threads": torch.get_num_threads(), "recipe": recipe,
        }
        _save_atomically(model, meta, zoo_path(entry.name))
    return model


def _save_atomically(model: torch.nn.Module, meta: dict[str, Any], final: Path) -> None:
    from safetensors.torch import save_model

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
        (tmp / "config.json").write_text(model.config.to_json_string())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        replace_path(tmp, final)  # the old copy goes only once the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_zoo_dir(entry: ZooEntry, path: Path) -> torch.nn.Module:
    from safetensors.torch import load_model as load_safetensors

    config = _config_class(entry.arch).from_json_file(str(path / "config.json"))
    config.roadinterp_task = entry.task
    config.roadinterp_zoo = entry.name
    model = _model_class(entry.arch)(config)
    try:
        load_safetensors(model, str(path / "model.safetensors"))
    except Exception as err:  # a corrupt or foreign file is a user-facing problem
        raise FileFormatError(f"cannot load zoo model {entry.name!r} from {path}: {err}; delete the "
                              "directory to retrain it") from err
    return model


# ----- public loading ---------------------------------------------------------------------
def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or a torch.device; got {device!r}") from err


def load_tokenizer(spec: str | os.PathLike):
    """The tokenizer that goes with ``load_model(spec)`` (``None`` for models without one, e.g. the toy zoo).

    Pretrained zoo entries and local HF directories carry theirs; a ``.gguf`` file embeds one.
    """
    text = os.fspath(spec)
    if text.startswith("zoo:") and text[len("zoo:"):] in PRETRAINED:
        path = ensure_cached(text[len("zoo:"):], cache_dir())
    elif text.startswith("zoo:"):
        get_zoo_entry(text[len("zoo:"):])
        return None
    elif text.endswith(".gguf"):
        return load_gguf_tokenizer(text)
    elif Path(text).expanduser().is_dir():
        path = Path(text).expanduser()
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            return None
    else:
        path = text  # type: ignore[assignment]
    return load_hf_tokenizer(path)


def load_model(spec: str | os.PathLike, *, device: str | torch.device = "auto",
               progress: bool = True) -> torch.nn.Module:
    """A model in eval mode on ``device`` from ``"zoo:NAME"``, a local directory or a hub id.

    ``zoo:NAME`` loads the cached model, training it on first use. A local directory
    loads with ``from_pretrained(local_files_only=True)`` (causal LM first, then
    ``AutoModel``). Anything else is a hub id; if the hub is unreachable this raises
    :class:`OfflineError`.
    """
    from roadinterp.sites import ensure_sites

    with _quiet_loading():
        model = _load_model(os.fspath(spec), _resolve_device(device), progress).eval()
    ensure_sites(model)  # an architecture pyvene has no card for gets its sites from its own modules
    return model


@contextlib.contextmanager
def _quiet_loading():
    """transformers' per-tensor "Loading weights" bars off while loading (an error stays one line)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _load_model(text: str, dev: torch.device, progress: bool) -> torch.nn.Module:
    if text.startswith("zoo:") and text[len("zoo:"):] in PRETRAINED:
        model = load_local_dir(ensure_cached(text[len("zoo:"):], cache_dir(), progress=progress))
    elif text.endswith(".gguf"):
        model, _ = load_gguf(text)
    elif text.startswith("zoo:"):
        name = text[len("zoo:"):]
        entry = get_zoo_entry(name)
        path = zoo_path(entry.name)
        model = _load_zoo_dir(entry, path) if _is_complete(path) else train_zoo_model(name, progress=progress)
    elif Path(text).expanduser().is_dir():
        model = load_local_dir(Path(text).expanduser())
    elif text.startswith((".", "/", "~")) or os.sep in text.replace("/", "") or text.count("/") > 1:
        raise ConfigError(f"model directory {text!r} does not exist; pass an existing directory, a zoo: name "
                          f"(known zoo models: {', '.join(sorted(_ZOO))}) or a hub id")
    else:
        model = load_hub(text, known=", ".join(f"zoo:{n}" for n in sorted([*_ZOO, *PRETRAINED])))
    return model.to(dev)


def default_model(task_name: str) -> str:
    """``zoo:NAME`` of the zoo model trained for ``task_name``."""
    for entry in list_zoo():
        if entry["task"] == task_name:
            return f"zoo:{entry['name']}"
    raise ConfigError(f"no zoo model is trained for task {task_name!r}; pass --model")


def model_task(model: torch.nn.Module) -> str | None:
    """The task a zoo model was trained for (``model.config.roadinterp_task``), if known."""
    return getattr(getattr(model, "config", None), "roadinterp_task", None)


def list_zoo() -> list[dict[str, Any]]:
    """One row per zoo model: name, task, arch, n_params, cached, accuracy, train_seconds."""
    rows = []
    for entry in _ZOO.values():
        with torch.device("meta"):
            size = n_params(build_model(entry))
        row: dict[str, Any] = {"name": entry.name, "task": entry.task, "arch": entry.arch, "n_params": size,
                               "cached": False, "accuracy": None, "train_seconds": None,
                               "description": entry.description}
        path = zoo_path(entry.name)
        if _is_complete(path):
            try:
                meta = json.loads((path / "meta.json").read_text())
                row.update(cached=True, accuracy=meta.get("accuracy"), train_seconds=meta.get("train_seconds"))
            except (OSError, ValueError):
                pass
        rows.append(row)
    return rows + list_pretrained(cache_dir())


# ----- built-in entries -------------------------------------------------------------------
def _behaviour_base_data(n: int, *, split: str, seed: int):
    from roadinterp.tasks import behaviour_data

    return behaviour_data(n, behaviours=(), split=split, seed=seed)


def _tiny_gpt2(vocab: int, positions: int, **kw: Any) -> dict[str, Any]:
    cfg = {"vocab_size": vocab, "n_positions": positions, "n_embd": 64, "n_layer": 2, "n_head": 4,
           "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 0, "eos_token_id": 0}
    cfg.update(kw)
    return cfg


_BUILTIN = [
    ZooEntry(
        name="hierarchical-equality-mlp", task="hierarchical-equality", arch="mlp",
        config={"h_dim": 16, "n_layer": 3, "num_classes": 2, "pdrop": 0.0, "include_emb": False,
                "squeeze_output": True},
        steps=4000, batch_size=512, lr=1e-2, warmup=100, train_size=100_000, eval_size=10_000,
        description="pyvene MLP (3 blocks of 16) for hierarchical equality, the DAS setting",
    ),
    ZooEntry(
        name="addition-carry-gpt2", task="addition-carry", arch="gpt2",
        config=_tiny_gpt2(23, 8),
        steps=5000, batch_size=128, lr=3e-3, weight_decay=0.01, train_size=8000,
        description="2-layer GPT-2 (d=64) predicting the tens digit of a two-digit sum",
    ),
    ZooEntry(
        name="interval-llama", task="interval", arch="llama",
        config={"vocab_size": 24, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 8,
                "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "tie_word_embeddings": False},
        steps=2000, batch_size=256, lr=3e-3, weight_decay=0.01, train_size=20_000,
        description="2-layer Llama (d=64) deciding X <= Z <= Y",
    ),
    ZooEntry(
        name="behaviour-base-gpt2", task="behaviour-base", arch="gpt2",
        config=_tiny_gpt2(23, 8),
        steps=4000, batch_size=128, lr=3e-3, weight_decay=0.01, train_size=8000, data=_behaviour_base_data,
        description="2-layer GPT-2 (d=64) computing (a0 + b0) mod 10; base model for the behaviour adapters",
    ),
    *(ZooEntry(
        name=f"{task}-gpt2", task=task, arch="gpt2", config=gpt2_config(), steps=1, train_size=64, eval_size=256,
        weights=partial(build_illusion_gpt2, faithful=faithful),
        description=("hand-built 1-block GPT-2 (d=8): the variable flows through the MLP hidden layer"
                     if faithful else "hand-built 1-block GPT-2 (d=8): a disconnected copy + a dormant "
                     "direction at the MLP hidden layer (Makelov et al. 2023)"),
    ) for task, faithful in (("illusion-toy", False), ("illusion-toy-faithful", True))),
]
for _entry in _BUILTIN:
    if _entry.name not in _ZOO:
        register_zoo_model(_entry)
del _entry
