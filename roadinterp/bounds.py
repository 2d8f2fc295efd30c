"""Bounds on user input, checked once at the boundary (CLI options, config files, saved files).

A value that crosses into roadinterp from outside (a command-line option, a field of a
``--config`` file or a saved ``config.json``) is checked here before anything is
allocated or written: counts are positive ints below a stated maximum, rates are
finite, and a request whose tensors would not fit in memory is refused with the
estimate. Each check raises :class:`~roadinterp.errors.ConfigError` naming the option,
the value and the allowed range, which the CLI prints as one ``error:`` line.

Library dataclasses call the plain checks (:func:`positive_int`, :func:`finite_float`,
:func:`check_memory`); the CLI adds Typer callbacks built from the same checks
(:func:`int_option`, :func:`float_option`, :func:`text_option`) and the list parsers
(:func:`parse_ints`, :func:`parse_blocks`, :func:`parse_weights`). The limits are
listed in docs/cli.md#bounds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from roadinterp.errors import ConfigError

# Limits on counts (time, not memory: memory is checked against the machine by check_memory)
MAX_EPOCHS = 10_000  # DII passes over the training counterfactuals
MAX_STEPS = 10_000_000  # adapter optimiser steps
MAX_SEEDS = 10_000  # seeds per cell of a search
MAX_CELLS = 1_000_000  # cells of one search grid (families x layers x ... x seeds)
MAX_EXAMPLES = 1_000_000_000  # n_train / n_test before the memory estimate is even tried
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_WORKERS = 256  # local executor processes
MAX_WIDTH = 1 << 20  # a width declared by a saved file (largest real hidden size is ~5e4)
MAX_JSON_DEPTH = 64  # nesting of any JSON roadinterp reads (configs, run.json, saved files)
MAX_JSON_BYTES = 64 << 20  # size of a JSON file roadinterp reads


def positive_int(name: str, value: Any, *, maximum: int | None = None, minimum: int = 1) -> int:
    """``value`` as an int in ``[minimum, maximum]``; ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum:,}" if maximum is not None else ""
        raise ConfigError(f"{name} must be >= {minimum}{upper}, got {value:,}")
    return value


def finite_float(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                 open_minimum: bool = False) -> float:
    """``value`` as a finite float in range (``open_minimum``: strictly above ``minimum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (v < minimum or (open_minimum and v == minimum)):
        raise ConfigError(f"{name} must be {'>' if open_minimum else '>='} {minimum:g}, got {v:g}")
    if maximum is not None and v > maximum:
        raise ConfigError(f"{name} must be <= {maximum:g}, got {v:g}")
    return v


def nonempty(name: str, value: Any) -> str:
    """A non-blank string (``--out ''`` and ``--model ''`` are mistakes, not defaults)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise ConfigError(f"{name} must not contain a NUL byte, got {value!r}")
    return value


# ------------------------------------------------------------------- memory
def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def available_memory() -> int:
    """Bytes this process can still allocate (Linux MemAvailable; else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 1 << 62


def check_memory(nbytes: float, what: str, fix: str) -> None:
    """Refuse a request whose tensors (estimated at ``nbytes``) would not fit in memory."""
    avail = available_memory()
    if nbytes > avail:
        raise ConfigError(f"{what} needs about {format_bytes(nbytes)} of memory (estimate), more than the "
                          f"{format_bytes(avail)} available; {fix}")


def tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors in ``obj`` (tensors, arrays, dicts, lists, dataclass-like objects)."""
    seen: set[int] = set()

    def walk(o: Any) -> int:
        if id(o) in seen:
            return 0
        seen.add(id(o))
        nbytes = getattr(o, "nbytes", None)
        if isinstance(nbytes, int) and hasattr(o, "shape"):
            return nbytes
        if hasattr(o, "element_size") and hasattr(o, "numel"):  # torch.Tensor
            return o.element_size() * o.numel()
        if isinstance(o, dict):
            return sum(walk(v) for v in o.values())
        if isinstance(o, (list, tuple)):
            return sum(walk(v) for v in o)
        if hasattr(o, "__dict__"):
            return sum(walk(v) for v in vars(o).values())
        return 0

    return walk(obj)


def check_rows_memory(name: str, n: int, make: Callable[[int], Any], *, extra_per_row: float = 0,
                      copies: int = 1, what: str = "rows") -> None:
    """Refuse ``n`` rows (examples, counterfactuals) whose tensors would not fit in memory.

    ``make(k)`` builds ``k`` rows; their measured size per row (plus ``extra_per_row``,
    e.g. cached hidden states) times ``n`` times ``copies`` is the estimate.
    """
    k = 8
    per_row = tensor_bytes(make(k)) / k + extra_per_row
    total = per_row * n * copies
    times = f" x {copies:,}" if copies > 1 else ""
    check_memory(total, f"{name}={n:,} ({format_bytes(per_row)} per {what.rstrip('s')}{times})",
                 f"use a smaller {name}")


# ------------------------------------------------------------- CLI parsing
def parse_ints(name: str, text: str | None, *, minimum: int | None = 0) -> list[int] | None:
    """``"0,2,5"`` -> ``[0, 2, 5]`` (None stays None); at least one value, each >= ``minimum``."""
    if text is None:
        return None
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{name} must list at least one integer, got {text!r}")
    bad = [v for v in values if minimum is not None and v < minimum]
    if bad:
        raise ConfigError(f"{name} values must be >= {minimum}, got {bad[0]}")
    return values


def parse_strs(name: str, text: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]`` (None stays None); at least one name."""
    if text is None:
        return None
    values = [t.strip() for t in text.split(",") if t.strip()]
    if not values:
        raise ConfigError(f"{name} must list at least one name, got {text!r}")
    return values


def parse_blocks(name: str, text: str | None, *, maximum: int = MAX_WIDTH) -> list[int] | None:
    """``"0-15,32,40-47"`` -> ``[0..15, 32, 40..47]``; ranges must be non-empty (a <= b)."""
    if text is None:
        return None
    out: list[int] = []
    form = f"{name} must look like 0-15,32,40-47"
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        a, dash, b = part.partition("-")
        try:
            lo, hi = (int(a), int(b)) if dash else (int(part), int(part))
        except ValueError:
            raise ConfigError(f"{form}, got {text!r}") from None
        if lo < 0 or hi < lo:
            raise ConfigError(f"{form} (non-negative ranges with start <= end), got {part!r}")
        if hi >= maximum:
            raise ConfigError(f"{name}: block {hi} is beyond any model width (< {maximum:,})")
        out.extend(range(lo, hi + 1))
    if not out:
        raise ConfigError(f"{form}, got {text!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{name} lists a block twice: {text!r}")
    return out


def parse_weights(name: str, text: str | None) -> dict[str, float] | None:
    """``"op=1,format=0.5"`` -> ``{"op": 1.0, "format": 0.5}``; finite values, each name once."""
    if text is None:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        key, eq, val = part.partition("=")
        key = key.strip()
        try:
            if not eq or not key:
                raise ValueError
            v = float(val)
        except ValueError:
            raise ConfigError(f"{name} must look like name=1.0,other=0.5, got {text!r}") from None
        if key in out:
            raise ConfigError(f"{name} gives {key!r} twice")
        out[key] = finite_float(f"{name} {key}", v)
    return out


# ----------------------------------------------------------- Typer callbacks
def _callback(check: Callable[[str, Any], Any]):
    """A Typer option callback running ``check(option_name, value)`` (None passes through)."""
    import typer

    def callback(param, value):
        if value is None or isinstance(value, bool):
            return value
        return check(param.opts[0] if param.opts else param.name, value)

    callback.__annotations__ = {"param": typer.CallbackParam}  # real classes: Typer reads them to pass param
    return callback


def int_option(*, minimum: int = 1, maximum: int | None = None):
    """Callback for an int option: ``typer.Option(300, "--steps", callback=int_option(maximum=MAX_STEPS))``."""
    return _callback(lambda name, v: positive_int(name, v, minimum=minimum, maximum=maximum))


def float_option(*, minimum: float | None = None, maximum: float | None = None, open_minimum: bool = False):
    """Callback for a float option: finite, in range (``open_minimum``: strictly above ``minimum``)."""
    return _callback(lambda name, v: finite_float(name, v, minimum=minimum, maximum=maximum,
                                                  open_minimum=open_minimum))


def text_option():
    """Callback for a string option that may be omitted but not given empty (``--out ''``)."""
    return _callback(nonempty)
