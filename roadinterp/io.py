"""Saving and loading: safetensors for tensors, JSON for everything else. No pickle.

An object is saved as a directory::

    path/config.json        {"format": "roadinterp", "version": 1, "kind": ..., "config": {...}}
    path/weights.safetensors

Each saveable class declares a ``KIND`` string, ``to_state() -> (config, tensors)``
and a classmethod ``from_state(config, tensors)`` that validates both, and is
registered with :func:`register_kind`. Loading never executes code from the
file: a pickle, a truncated file, a JSON with wrong types or tensors of the wrong
shape each raise :class:`~roadinterp.errors.FileFormatError` naming the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from roadinterp.errors import FileFormatError, RoadinterpError, unknown

FORMAT = "roadinterp"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"


class Saveable(Protocol):
    KIND: str

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]: ...

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any: ...


_KINDS: dict[str, type] = {}


def register_kind(cls: type) -> type:
    """Class decorator: make ``cls`` loadable by :func:`load`."""
    _KINDS[cls.KIND] = cls
    return cls


def save(obj: Saveable, path: str | os.PathLike) -> Path:
    """Write ``obj`` to directory ``path`` atomically (temp dir, then rename)."""
    if not hasattr(obj, "to_state") or not hasattr(obj, "KIND"):
        raise FileFormatError(f"cannot save a {type(obj).__name__}: it has no to_state()/KIND")
    config, tensors = obj.to_state()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        doc = {"format": FORMAT, "version": VERSION, "kind": obj.KIND, "config": config}
        (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True))
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _looks_pickled(p: Path) -> bool:
    """A pickle (protocol 2-5 starts b"\x80" + protocol byte) or a torch.save zip, and not safetensors.

    safetensors starts with an 8-byte little-endian header length followed by ``{``,
    and that length's first byte can itself be 0x80, so check for safetensors first.
    """
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) == 9 and head[8:9] == b"{":
        return False
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return True
    return head.startswith(b"PK\x03\x04")


def read_state(path: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Validated (kind, config, tensors) from a saved directory."""
    path = Path(path)
    if path.is_file():
        if _looks_pickled(path):
            raise FileFormatError(
                f"{path} looks like a pickle/torch.save file; roadinterp never unpickles "
                "(it could run arbitrary code). Save with roadinterp.save() instead"
            )
        raise FileFormatError(f"{path} is a file; roadinterp saves to a directory with {CONFIG_NAME}")
    if not path.is_dir():
        raise FileFormatError(f"{path} does not exist")
    cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileFormatError(f"{path} has no {p.name}: not a roadinterp save (or an interrupted one)")
    try:
        doc = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FileFormatError(f"{cfg_path} is not a roadinterp config (no 'format': 'roadinterp')")
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise FileFormatError(
            f"{cfg_path} has version {doc.get('version')!r}; this roadinterp reads up to {VERSION}"
        )
    if not isinstance(doc.get("kind"), str) or not isinstance(doc.get("config"), dict):
        raise FileFormatError(f"{cfg_path} needs a string 'kind' and an object 'config'")
    if _looks_pickled(w_path):
        raise FileFormatError(f"{w_path} is a pickle, not safetensors; roadinterp never unpickles")
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FileFormatError(f"{w_path} is truncated or not safetensors ({e})") from None
    return doc["kind"], doc["config"], tensors


def load(path: str | os.PathLike):
    """Load any registered object saved with :func:`save`."""
    kind, config, tensors = read_state(path)
    if kind not in _KINDS:
        raise unknown("saved kind", kind, list(_KINDS))
    try:
        return _KINDS[kind].from_state(config, tensors)
    except RoadinterpError as e:
        if isinstance(e, FileFormatError):
            raise
        raise FileFormatError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(f"{path}: config or tensors do not fit a {kind} ({type(e).__name__}: {e})") from None


def expect(config: dict, key: str, typ, where: str):
    """Fetch ``config[key]`` checking its JSON type; FileFormatError otherwise."""
    if key not in config:
        raise FileFormatError(f"{where}: missing field {key!r}")
    val = config[key]
    ok = isinstance(val, typ) and not (typ is int and isinstance(val, bool))
    if not ok:
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise FileFormatError(f"{where}: field {key!r} must be {name}, got {type(val).__name__} {val!r}")
    return val
