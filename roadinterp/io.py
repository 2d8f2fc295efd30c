"""Saving and loading: safetensors for tensors, JSON for everything else. No pickle.

An object is saved as a directory::

    path/config.json        {"format": "roadinterp", "version": 1, "kind": ..., "config": {...}}
    path/weights.safetensors

Each saveable class declares a ``KIND`` string, ``to_state() -> (config, tensors)``
and a classmethod ``from_state(config, tensors)`` that validates both, and is
registered with :func:`register_kind`. Loading never executes code from the
file: a pickle, a truncated file, a JSON with wrong types or tensors of the wrong
shape each raise :class:`~roadinterp.errors.FileFormatError` naming the problem.
JSON is read through :func:`load_json` (size and nesting bounded), declared widths
through :func:`expect_width` (checked against the tensors before anything is built).

Writing never destroys what it replaces before the new copy is complete: :func:`save`
builds the directory beside the target and swaps it in (one atomic exchange on
Linux; :func:`replace_path`), single files go through :func:`write_text_atomic`, and :func:`prepare_output` refuses, before any work, to replace a file or a
non-empty directory roadinterp did not write unless the caller passes ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from roadinterp import bounds
from roadinterp.errors import FileFormatError, OutputError, RoadinterpError, unknown

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
# roadinterp's own kinds -> the module that registers each (imported when a file of that kind is loaded)
BUILTIN_KINDS = {"road_interchange": "roadinterp.interventions.road", "road_adapter": "roadinterp.adapters.adapter",
                 "pedro_adapter": "roadinterp.adapters.pedro", "subspace_basis": "roadinterp.subspace"}


def register_kind(cls: type) -> type:
    """Class decorator: make ``cls`` loadable by :func:`load`."""
    _KINDS[cls.KIND] = cls
    return cls


def save(obj: Saveable, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``obj`` to directory ``path`` atomically (temp dir beside it, then swap).

    An existing roadinterp save at ``path`` is replaced; anything else there (a file, a
    non-empty directory of other files) is refused unless ``overwrite``. The old copy
    is removed only after the new one is in place.
    """
    if not hasattr(obj, "to_state") or not hasattr(obj, "KIND"):
        raise FileFormatError(f"cannot save a {type(obj).__name__}: it has no to_state()/KIND")
    path = prepare_output(path, overwrite=overwrite, ours=is_saved)
    config, tensors = obj.to_state()
    bad = _non_finite(tensors)
    if bad:
        from roadinterp.errors import NonFiniteError

        raise NonFiniteError(f"refusing to save {obj.KIND} to {path}: tensor {bad} holds NaN or infinite values")
    _mkdir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; a save is as shareable as the user says
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        doc = {"format": FORMAT, "version": VERSION, "kind": obj.KIND, "config": config}
        (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True))
        replace_path(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _renameat2_exchange():
    """``renameat2(..., RENAME_EXCHANGE)`` from libc (Linux >= 3.15, glibc >= 2.28), or None."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def replace_path(new: Path, final: Path) -> None:
    """Move ``new`` (a file or directory) to ``final``, replacing what is there.

    The old copy is deleted only after ``new`` is in place. On Linux the two are swapped
    in one atomic ``renameat2(RENAME_EXCHANGE)``, so ``final`` always holds a complete
    copy; elsewhere the old copy is first renamed aside (a crash then leaves it as
    ``.NAME.old-*`` beside ``final``, never deleted).
    """
    new, final = Path(new), Path(final)
    if not os.path.lexists(final) or (final.is_file() and new.is_file()):
        os.replace(new, final)  # atomic for files, and for a directory onto nothing
        return
    fn = _renameat2_exchange()
    if fn is not None:
        AT_FDCWD, RENAME_EXCHANGE = -100, 2
        if fn(AT_FDCWD, os.fsencode(new), AT_FDCWD, os.fsencode(final), RENAME_EXCHANGE) == 0:
            _remove(new)  # now holds the old copy
            return
    old = final.parent / f".{final.name}.old-{os.getpid()}-{time.time_ns()}"
    os.replace(final, old)
    os.replace(new, final)
    _remove(old)


def write_text_atomic(path: str | os.PathLike, text: str, *, mode: int | None = None) -> Path:
    """Write ``text`` to file ``path`` atomically: a synced temporary file beside it, then one rename.

    Readers see the old content or the new, never a torn file. ``mode`` sets the
    permissions; by default the file gets what ``open()`` would give it (0666 less the
    user's umask), not the temporary file's 0600, so collaborators can read results.csv.
    """
    mode = (0o666 & ~current_umask()) if mode is None else mode
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_adapters(paths, weights: str | None = None) -> tuple[dict, dict[str, float] | None]:
    """(name -> loaded adapter, ``weights`` as name -> lambda or None) for ``compose``/``generate``.

    The names and weights are checked before any file is read: names are directory names
    (two directories with one name are refused), ``weights`` looks like ``op=1,format=0.5``
    with finite values, and every weighted name is one of the adapters.
    """
    names = adapter_names(paths)
    w = bounds.parse_weights("--weights", weights) or None
    unknown_names = sorted(set(w or ()) - set(names))
    if unknown_names:
        from roadinterp.errors import ConfigError

        raise ConfigError(f"--weights names {unknown_names} are not among the adapters {sorted(names)}")
    return {name: load(a) for name, a in names.items()}, w


def adapter_names(paths) -> dict[str, str]:
    """Adapter name (its directory's name) -> path; two directories with one name are refused."""
    from roadinterp.errors import ConfigError

    names: dict[str, str] = {}
    for a in paths or []:
        try:
            name = Path(bounds.nonempty("adapter path", a)).resolve().name
        except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13, OSError after)
            raise FileFormatError(f"adapter path {a} cannot be resolved ({e}); is it a symlink loop?") from None
        if name in names:
            raise ConfigError(f"adapters {names[name]} and {a} are both named {name!r} (names are directory "
                              "names); rename or copy one so every adapter has its own name")
        names[name] = a
    return names


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _mkdir(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create directory {d}: {e.strerror or e}; choose another --out") from None


def is_saved(path: str | os.PathLike) -> bool:
    """Is ``path`` a directory written by :func:`save` (its config.json says so)?"""
    try:
        doc = load_json(Path(path) / CONFIG_NAME, "config")  # missing, a directory, too large: FileFormatError
    except FileFormatError:
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def prepare_output(path: str | os.PathLike, *, overwrite: bool = False, ours=None, what: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be written; return it as a Path.

    Refuses an empty path, a parent that is not a directory or not writable, and an
    existing file or non-empty directory that ``ours(path)`` does not recognise as
    roadinterp's own output, unless ``overwrite``. Creates nothing, so a refused run
    leaves nothing behind.
    """
    bounds.nonempty(what, str(path) if isinstance(path, os.PathLike) else path)
    p = Path(path)
    if os.path.lexists(p) and not overwrite:
        mine = ours is not None and ours(p)
        empty_dir = p.is_dir() and not p.is_symlink() and not any(p.iterdir())
        if not mine and not empty_dir:
            kind = "directory" if p.is_dir() else "file"
            raise OutputError(f"{what} {p} is an existing {kind} that roadinterp did not write; "
                              "choose another path, or pass --overwrite to replace it")
    parent = p.absolute().parent
    while not parent.exists():
        if os.path.lexists(parent):  # a dangling symlink
            raise OutputError(f"cannot write {what} {p}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {p}: {parent} is not writable; choose another path")
    return p


def read_text_bounded(p: Path, label: str, *, limit: int, kind: str) -> str:
    """The UTF-8 text of file ``p`` (at most ``limit`` bytes); one FileFormatError naming ``label``
    for a directory, a missing or unreadable file, a file too large, or bytes that are not UTF-8."""
    try:
        if p.is_dir():
            raise FileFormatError(f"{label} is a directory, not a {kind} file")
        size = p.stat().st_size
        if size > limit:
            raise FileFormatError(f"{label} is {bounds.format_bytes(size)}; roadinterp reads {kind} up to "
                                  f"{bounds.format_bytes(limit)}")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise FileFormatError(f"{label} does not exist") from None
    except OSError as e:
        raise FileFormatError(f"cannot read {label}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{label} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_json(path: str | os.PathLike, what: str = "JSON file"):
    """Parse a JSON file with bounded size and nesting; FileFormatError on anything else.

    Unreadable paths (a directory, no permission), non-UTF-8 bytes, invalid JSON, a file
    over ``bounds.MAX_JSON_BYTES`` or nesting deeper than ``bounds.MAX_JSON_DEPTH`` are
    each one message (never a RecursionError or UnicodeDecodeError).
    """
    p = Path(path)
    text = read_text_bounded(p, f"{what} {p}", limit=bounds.MAX_JSON_BYTES, kind="JSON")
    depth = _max_depth(text)
    if depth > bounds.MAX_JSON_DEPTH:
        raise FileFormatError(f"{what} {p} nests {depth} levels deep; roadinterp reads JSON up to "
                              f"{bounds.MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise FileFormatError(f"{what} {p} is not valid JSON ({e})") from None


def _max_depth(text: str) -> int:
    """Deepest bracket nesting outside strings (stops counting past the limit)."""
    if "[" not in text and "{" not in text:
        return 0
    import re

    # drop string literals (escapes included), then count brackets
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    depth = best = 0
    for ch in re.sub(r"[^\[\]{}]", "", stripped):
        if ch in "[{":
            depth += 1
            if depth > best:
                best = depth
                if best > bounds.MAX_JSON_DEPTH:
                    return best
        else:
            depth -= 1
    return best


def _non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding a NaN or inf, else None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


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
    doc = load_json(cfg_path, "config")
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
    bad = _non_finite(tensors)
    if bad:
        raise FileFormatError(f"{w_path}: tensor {bad} holds NaN or infinite values (a diverged run's output?)")
    return doc["kind"], doc["config"], tensors


def load(path: str | os.PathLike):
    """Load any registered object saved with :func:`save`."""
    kind, config, tensors = read_state(path)
    if kind not in _KINDS and kind in BUILTIN_KINDS:  # roadinterp loads its modules on first use
        import importlib

        importlib.import_module(BUILTIN_KINDS[kind])  # registers the class (register_kind)
    if kind not in _KINDS:
        raise unknown("saved kind", kind, sorted(set(_KINDS) | set(BUILTIN_KINDS)))
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


def expect_width(config: dict, key: str, where: str) -> int:
    """A width (or other size) declared by a saved file: an int in ``[1, bounds.MAX_WIDTH]``.

    Checked before any module is built from it, so a file declaring width 10**12 is
    refused in microseconds instead of trying to allocate terabytes. Loaders also
    compare declared shapes with the tensors actually present (``tensors``) first.
    """
    val = expect(config, key, int, where)
    return check_width(val, f"{where}: field {key!r}")


def check_width(val, where: str) -> int:
    """``val`` as a declared width: an int in ``[1, bounds.MAX_WIDTH]``; FileFormatError naming ``where``."""
    if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= bounds.MAX_WIDTH:
        raise FileFormatError(f"{where} must be an int in [1, {bounds.MAX_WIDTH:,}], got {val!r}")
    return val


def expect_shape(tensors: dict[str, torch.Tensor], name: str, want: tuple[int, ...], where: str) -> torch.Tensor:
    """The tensor ``name`` with exactly shape ``want``, before anything of that shape is built."""
    t = tensors.get(name)
    if t is None:
        raise FileFormatError(f"weights have no tensor {name} (needed by {where})")
    if tuple(t.shape) != tuple(want):
        from roadinterp.errors import ShapeError

        raise ShapeError(f"{name} has shape {tuple(t.shape)} but {where} needs {tuple(want)} "
                         "(was it saved for another model width?)")
    return t
