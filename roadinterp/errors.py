"""Errors that are part of roadinterp's interface.

Every mistake a user can make at a public entry point raises a subclass of
:class:`RoadinterpError` whose message names the bad value and how to fix it.
The CLI turns these into a single ``error: ...`` line with exit status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RoadinterpError(Exception):
    """Base class: a user-facing problem with a message that says what to do."""


class ConfigError(RoadinterpError, ValueError):
    """An argument or configuration value is invalid (wrong type, range or name)."""


class ShapeError(RoadinterpError, ValueError):
    """A tensor or adapter does not fit the width or layout it is used with."""


class SiteError(RoadinterpError, ValueError):
    """A site (layer, component, positions) does not exist on the model."""


class UnknownNameError(RoadinterpError, KeyError):
    """A task, model, family, architecture or component name is not registered.

    The message lists what exists.
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class FileFormatError(RoadinterpError, ValueError):
    """A file is missing, truncated, of the wrong kind (e.g. a pickle) or inconsistent."""


class OverlapError(RoadinterpError, ValueError):
    """Adapters or causal variables claim the same 2D blocks / rotated axes."""


class RunDirError(RoadinterpError):
    """A run directory cannot be used (unwritable, holds a different config, or another run writes to it)."""


class OutputError(RoadinterpError):
    """An output path cannot be written, or writing it would replace something roadinterp did not make."""


class NonFiniteError(RoadinterpError, FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; nothing from that run is saved."""


class OfflineError(RoadinterpError):
    """A model or dataset would need the network, which is unreachable."""


class TokenizerError(RoadinterpError, ValueError):
    """A tokenizer does not fit a task or a model (a multi-token entity, another model's vocabulary)."""


class DependencyError(RoadinterpError, ImportError):
    """An optional dependency (or a model wheel) is not installed; the message gives the install command."""


def unknown(kind: str, name: object, known: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the standard 'unknown X' error listing the known names."""
    options = ", ".join(sorted(map(str, known))) or "(none registered)"
    return UnknownNameError(f"unknown {kind} {name!r}; known {kind}s: {options}")
