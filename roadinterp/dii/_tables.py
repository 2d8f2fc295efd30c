"""What both cached engines share: one row per *distinct* model input, their hooks' plumbing, the interchange.

:class:`roadinterp.dii.replay.SiteReplay` (site states) and
:class:`roadinterp.dii.kvreplay.CleanRuns` (keys/values and tail residuals) both run the
frozen model once per distinct input and look rows up by id afterwards. :class:`InputIndex`
assigns those ids: rows are matched by a 64-bit hash of their bytes (fast to sort), then
checked byte for byte; on a collision the exact (slow) match on the raw bytes decides.
Both apply the interventions to looked-up states with :func:`interchange`, as pyvene's
setter hooks would, and raise :class:`ReplayUnavailable` when they cannot serve a run.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from roadinterp._pyvene import pv  # imports pyvene quietly
from roadinterp.errors import ConfigError

do_intervention = pv.models.modeling_utils.do_intervention  # through roadinterp._pyvene: its import prints


class ReplayUnavailable(ConfigError):
    """A cached engine cannot serve this model, site or data. The private signal on which
    :func:`roadinterp.dii.runners.make_runner` falls back to pyvene (and only on it, so a
    genuine mistake elsewhere still surfaces as an error); a ``ConfigError`` for callers
    who use the engines directly."""


class Stop(Exception):
    """Raised by a collecting hook: nothing after it is needed."""


def first(output):
    """The hidden state of a module output (the first item of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def forward_kwargs(model) -> dict:
    """Keyword arguments of a plain forward that only the caller reads (no KV cache built)."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def per_row_reason(site, data, engine: str) -> str | None:
    """Why ``engine`` cannot serve a site at a named position that differs per row (None: it can)."""
    rows = getattr(data, "positions", None) or {}
    if isinstance(site.positions, str) and site.positions in rows:
        return f"position {site.positions!r} differs per row ({engine} takes one position for every row)"
    return None


def answer_columns(task) -> torch.Tensor | None:
    """The vocabulary id of each answer of ``task`` (label ``i`` -> ``answer_columns(task)[i]``).  # long [n_classes]

    ``None`` for a task that reads no vocabulary (vector tasks: ``task.logits`` are class
    scores). Token tasks read the last position's logits at these columns; the KV engine
    computes only them while training, and every engine's full-vocabulary IIA compares the
    top-1 token against them.
    """
    ids = getattr(task, "answer_ids", None)
    return None if ids is None else torch.as_tensor(list(ids), dtype=torch.long)


def _row_hash(raw: np.ndarray) -> np.ndarray:
    """64-bit hash of every row of a ``[n, bytes]`` uint8 array.  # [n] uint64"""
    n, w = raw.shape
    pad = (-w) % 8
    if pad:
        raw = np.concatenate([raw, np.zeros((n, pad), dtype=np.uint8)], 1)
    words = raw.view(np.uint64)  # [n, words]
    h = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h = (h ^ words[:, j]) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
    return h


def _first_occurrence(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct key its first index, and every row's distinct-key number (order unspecified).

    ``np.unique(..., return_index=True)`` needs a stable sort; torch's unique + an ``amin``
    scatter is ~2x faster on the 250k-row tables of a batched search.
    """
    flat = np.ascontiguousarray(keys).reshape(-1)
    if flat.dtype.kind == "V":  # raw rows (the exact fallback): torch has no void dtype
        _, first_idx, inverse = np.unique(flat, return_index=True, return_inverse=True)
        return first_idx, inverse.reshape(-1)
    t = torch.from_numpy(flat.view(np.int64))  # only equality matters: the sign bit is harmless
    _, inverse = torch.unique(t, sorted=True, return_inverse=True)
    n = len(t)
    first_idx = torch.full((int(inverse.max()) + 1 if n else 0,), n, dtype=torch.long)
    first_idx = first_idx.scatter_reduce(0, inverse, torch.arange(n), "amin")
    return first_idx.numpy(), inverse.numpy()


def _match(keys: np.ndarray, known_keys: np.ndarray, raw: np.ndarray, known_raw: np.ndarray):
    """Table id of every row and the rows to add, matching ``keys`` against ``known_keys``.

    Returns ``(ids [n], new_rows [k], keys of the grown table, raw rows of the grown
    table)``, or four ``None`` when two different rows share a key (a hash collision).
    """
    m = len(known_keys)
    both = np.concatenate([known_keys, keys])
    first_idx, inverse = _first_occurrence(both)
    is_new = first_idx >= m  # distinct keys first seen among the new rows (known keys come first, distinct)
    seen = np.zeros(len(keys), dtype=bool)  # by position among the new rows: first sight of a new key
    seen[first_idx[is_new] - m] = True
    new_first = np.flatnonzero(seen) + m  # in order of first appearance, no sort needed
    table_id = first_idx.copy()  # a known key's first index is its table id
    table_id[is_new] = m + (np.cumsum(seen) - 1)[first_idx[is_new] - m]
    ids = table_id[inverse[m:]]
    new_rows = new_first - m
    grown_raw = np.concatenate([known_raw, raw[new_rows]])
    if not np.array_equal(grown_raw[ids], raw):
        return None, None, None, None
    return ids, new_rows, both[np.concatenate([np.arange(m), new_first])], grown_raw


class InputIndex:
    """Table row ids of model inputs: every distinct input gets the next id, in order of first sight."""

    def __init__(self, what: str) -> None:
        self.what = what  # names the engine in errors ("replay", "KV replay")
        self.clear()

    def clear(self) -> None:
        self._raw: np.ndarray | None = None  # [m, bytes] the input of every table row, in table order
        self._hash = np.zeros(0, dtype=np.uint64)  # [m] their hashes

    def __len__(self) -> int:
        return 0 if self._raw is None else len(self._raw)

    def add(self, inputs: Mapping[str, torch.Tensor], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [n], new_rows [k])``: every row's table id, and the rows not seen before (in id order)."""
        n = next(iter(inputs.values())).shape[0]
        flat = torch.cat([inputs[k].reshape(n, -1).contiguous().cpu().view(torch.uint8) for k in keys], 1)
        raw = np.ascontiguousarray(flat.numpy())  # [n, bytes per row]
        if self._raw is not None and self._raw.shape[1] != raw.shape[1]:
            raise ReplayUnavailable(f"{self.what} inputs must all have the same keys, shapes and dtypes")
        known = self._raw if self._raw is not None else raw[:0]
        ids, new_rows, hashes, grown = _match(_row_hash(raw), self._hash, raw, known)
        if ids is None:
            as_void = np.dtype((np.void, raw.shape[1]))
            ids, new_rows, _, grown = _match(raw.view(as_void).ravel(), known.view(as_void).ravel(), raw, known)
            hashes = _row_hash(grown)  # the table now holds two rows with one hash: later adds re-check
        self._raw, self._hash = grown, hashes
        return ids, new_rows


@dataclass(frozen=True)
class ReplayRows:
    """One dataset in a replay table: the table row of each base and source input."""

    rows: torch.Tensor  # long [n, 1 + V]: base, then one source per variable
    # per-row positions only (KV engine): each input's site index within the tail, same layout  # long [n, 1 + V]
    at: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def interchange(interventions: Sequence, coords, X: torch.Tensor) -> torch.Tensor:
    """Base states after every variable's interchange, as pyvene's setter hooks apply them.

    ``X`` holds the base and one source per variable at the site positions
    (``[N, 1 + V, u, d]``); returns ``[N, u, d]``. One ``do_intervention`` per variable,
    each on the previous one's output, or all variables in one ``mix`` when they share
    one intervention that has it.
    """
    n, V, u, d = X.shape[0], X.shape[1] - 1, X.shape[2], X.shape[3]
    subspaces = [[list(c)] * n for c in coords]  # pyvene's per-row form (one list object repeated)
    first = interventions[0]
    if hasattr(first, "mix") and all(iv is first for iv in interventions):
        return first.mix(X.transpose(1, 2).reshape(n, u, (1 + V) * d), subspaces)  # all variables at once
    b = X[:, 0]
    for v, (iv, sp) in enumerate(zip(interventions, subspaces)):  # as pyvene's hooks, in turn
        b = do_intervention(b, X[:, 1 + v], iv, sp)
    return b
