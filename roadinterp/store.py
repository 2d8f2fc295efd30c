"""The run directory: a crash-safe record of an alignment search.

    runs/NAME/run.json       the full search config (loads back into SearchConfig)
    runs/NAME/results.db     SQLite, one committed transaction per finished cell
    runs/NAME/results.csv    one row per finished cell, rewritten atomically after each; its
                             ``warnings`` column holds the cell's codes (roadinterp.controls)
    runs/NAME/report.html    written at the end (roadinterp.viz.report)
    runs/NAME/cells/SLUG/    each learned RoAd interchange (road, butterfly), roadinterp.io format
    runs/NAME/subspaces/SLUG/  each learned subspace of a rotated family (roadinterp.subspace)

``SLUG`` is :func:`cell_slug` of the cell; the random-init control's learned
parameters sit beside it under ``SLUG-random_model``. Reports read these back
(:func:`saved_path`) without the model.

    runs/NAME/.lock          the writer lock (see below)

SQLite in WAL mode makes each finished cell durable the moment its transaction
commits: a Ctrl-C or SIGKILL loses only cells still running, and ``--resume``
skips every cell whose key is already stored. Opening a directory that holds a
*different* config is refused unless ``overwrite=True``, so one directory never
mixes two experiments; so is a non-empty directory that holds no run at all.

**One writer.** A run directory has one writer at a time: :func:`lock_run` takes an
exclusive ``flock`` on ``.lock`` (and writes the holder's pid, host and command into
it) before anything in the directory is read, wiped or written, and a second
writer is refused with a message naming the holder. The kernel drops the lock when
its process dies however it dies (SIGKILL included), so a stale ``.lock`` left by a
killed run is simply taken over. ``--overwrite`` takes the same lock first, so it
can never wipe a live run. (``flock`` is per host: two machines sharing a run
directory over NFS are not protected.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from roadinterp.cellid import CELL_FIELDS, CONTROL_SUFFIXES, CellId, cell_slug  # noqa: F401  (re-exported)
from roadinterp.errors import FileFormatError, RunDirError
from roadinterp.io import load_json, write_text_atomic

RESULT_COLUMNS = [
    "task", "model", "family", "layer", "component", "position", "size", "seed", "iia", "train_iia",
    "iia_vocab", "iia_random_model", "iia_rival", "rival", "seconds", "iia_null", "iia_rival_null",
    "seed_agreement", "seed_agreement_chance",
]
SAVED_KINDS = {"cell": "cells", "subspace": "subspaces"}  # what -> folder of the run directory


def row_slug(row, control: str | None = None) -> str:
    """:func:`cell_slug` of a results row (a dict or a DataFrame row)."""
    return CellId.from_row(row).slug(control)


def saved_path(run_dir: str | os.PathLike, slug: str, what: str = "cell") -> Path:
    """Where a run keeps a cell's learned interchange (``what="cell"``) or subspace (``"subspace"``)."""
    if what not in SAVED_KINDS:
        raise RunDirError(f"what must be one of {sorted(SAVED_KINDS)}, got {what!r}")
    return Path(run_dir) / SAVED_KINDS[what] / slug


LOCK_NAME = ".lock"
# what a run directory holds before its run.json is written (the store writes run.json last)
EARLY_RUN_FILES = ("results.db", "results.db-wal", "results.db-shm", "results.db-journal", LOCK_NAME, ".write-test")
_HELD: dict[str, list] = {}  # realpath -> [fd, depth]: locks this process holds (re-entrant)


def is_run_dir(path: str | os.PathLike) -> bool:
    """Is ``path`` a run directory (run.json, or only files a run writes, e.g. an interrupted one)?"""
    d = Path(path)
    if not d.is_dir():
        return False
    if (d / "run.json").is_file():
        return True
    return all(p.name in EARLY_RUN_FILES or p.name.startswith(".run.json.") for p in d.iterdir())


def _holder(fd: int) -> str:
    try:
        doc = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        cmd = " ".join(doc.get("argv") or [])[:120]
        return (f"process {doc.get('pid')} on {doc.get('host')}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(doc.get('started', 0)))}"
                + (f": {cmd}" if cmd else ""))
    except (OSError, ValueError, TypeError, AttributeError):
        return "another process"


@contextlib.contextmanager
def lock_run(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive writer lock of run directory ``out`` (created if missing).

    Re-entrant within a process (the CLI holds it around ``search`` and the report;
    :class:`RunStore` takes it again). Raises :class:`RunDirError` naming the process
    that holds it. If this call created the directory and it is left holding only
    the lock (a refused run), the directory is removed on exit.
    """
    import fcntl

    d = Path(out)
    key = os.path.realpath(d)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield d
        finally:
            _HELD[key][1] -= 1
        return
    created = not os.path.lexists(d)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {d}: {e.strerror or e}; choose another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(fd)
        os.close(fd)
        raise RunDirError(f"{d} is in use by another roadinterp run ({holder}); wait for it to finish "
                          "or stop it, or choose another --out") from None
    # ours now; a previous holder that was killed left its record here, which we replace
    doc = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(doc).encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield d
    finally:
        del _HELD[key]
        try:
            if created and {p.name for p in d.iterdir()} <= {LOCK_NAME}:
                shutil.rmtree(d, ignore_errors=True)  # a refused run leaves nothing behind
        finally:
            os.close(fd)  # releases the flock (the file stays: unlinking it would race a new writer)


class RunStore:
    """Results of one search, keyed by cell key (a stable string)."""

    def __init__(self, out: str | os.PathLike, config: dict[str, Any], *, resume: bool = False,
                 overwrite: bool = False) -> None:
        if resume and overwrite:
            raise RunDirError("resume and overwrite contradict each other (continue the run, or discard it); "
                              "pass one of them")
        self.dir = Path(out)
        if os.path.lexists(self.dir) and not self.dir.is_dir():
            raise RunDirError(f"run directory {self.dir} is an existing file; choose another --out")
        if not overwrite and self.dir.is_dir() and not is_run_dir(self.dir):
            raise RunDirError(f"{self.dir} is a non-empty directory that holds no roadinterp run; choose another "
                              "--out, or pass --overwrite to write the run into it")
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(lock_run(self.dir))  # before anything in the directory is read or wiped
        try:
            self._open(config, resume, overwrite)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, config: dict[str, Any], resume: bool, overwrite: bool) -> None:
        try:
            probe = self.dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"cannot write to run directory {self.dir}: {e.strerror or e}; choose another --out") from None
        self.run_json = self.dir / "run.json"
        self.db_path = self.dir / "results.db"
        self.csv_path = self.dir / "results.csv"
        self.created_config = not self.run_json.exists()
        existing = self._read_config()
        if existing is not None and existing != config:
            if not overwrite:
                diff = sorted(k for k in set(existing) | set(config) if existing.get(k) != config.get(k))
                raise RunDirError(
                    f"{self.dir} holds a run with a different config (differs in: {', '.join(diff)}); "
                    "use another --out, or --overwrite to discard it"
                )
            self._wipe()
        elif existing is not None and not resume and not overwrite and self._count() > 0:
            raise RunDirError(
                f"{self.dir} already has {self._count()} finished cells of this config; "
                "pass --resume to continue it or --overwrite to start again"
            )
        elif existing is not None and overwrite:
            self._wipe()
        self._db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, row TEXT NOT NULL)")
        # run.json last: a directory with run.json always has a usable database
        write_text_atomic(self.run_json, json.dumps(config, indent=2, sort_keys=True))

    def _read_config(self) -> dict | None:
        if not self.run_json.exists():
            return None
        try:
            doc = load_json(self.run_json, "run.json")
        except FileFormatError:
            return None  # a half-written run.json cannot exist (atomic writes); treat as foreign
        return doc if isinstance(doc, dict) else None

    def _count(self) -> int:
        if not self.db_path.exists():
            return 0
        con = sqlite3.connect(self.db_path, timeout=30)
        try:
            return con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        except sqlite3.DatabaseError:
            return 0
        finally:
            con.close()

    def _wipe(self) -> None:
        for p in (self.db_path, Path(f"{self.db_path}-wal"), Path(f"{self.db_path}-shm"), self.csv_path,
                  self.dir / "report.html"):
            p.unlink(missing_ok=True)

    # ------------------------------------------------------------ cells
    def done_keys(self) -> set[str]:
        return {k for (k,) in self._db.execute("SELECT key FROM cells")}

    def add(self, key: str, row: dict[str, Any]) -> None:
        """Record one finished cell durably, then refresh results.csv."""
        self.update({key: row})

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(r) for (r,) in self._db.execute("SELECT row FROM cells ORDER BY rowid")]

    def table(self) -> pd.DataFrame:
        return rows_to_frame(self.rows())

    def update(self, rows: dict[str, dict[str, Any]]) -> None:
        """Replace several stored rows (by key) in one transaction, then refresh results.csv."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for key, row in rows.items():
                self._db.execute("INSERT OR REPLACE INTO cells (key, row) VALUES (?, ?)", (key, json.dumps(row)))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.write_csv()

    def write_csv(self) -> None:
        write_text_atomic(self.csv_path, self.table().to_csv(index=False))

    def close(self) -> None:
        try:
            # WAL only while the run writes: back in rollback mode, the run directory holds results.db alone,
            # and a later read-only reader (read_run, the report) leaves no -wal/-shm files behind
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.close()
        finally:
            self._lock.close()

    def discard_if_empty(self) -> None:
        """After a failed start: remove what this store created if no cell was stored."""
        if self._db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 0 and self.created_config:
            self._db.close()
            self._wipe()
            self.run_json.unlink(missing_ok=True)
            shutil.rmtree(self.dir / "cells", ignore_errors=True)


def rows_to_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for c in RESULT_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype=float)
    extra = [c for c in df.columns if c not in RESULT_COLUMNS]
    df = df[RESULT_COLUMNS + extra]
    if len(df):
        df = df.sort_values(["family", "layer", "component", "position", "size", "seed"], kind="stable")
    from roadinterp.summary import annotate

    return annotate(df.reset_index(drop=True))


def read_run(path: str | os.PathLike) -> tuple[dict[str, Any], pd.DataFrame]:
    """(config, table) of a finished or partial run directory (read-only)."""
    d = Path(path)
    if not (d / "run.json").is_file():
        raise RunDirError(f"{d} is not a run directory (no run.json)")
    config = load_json(d / "run.json", "run.json")
    if not isinstance(config, dict):
        raise FileFormatError(f"{d / 'run.json'} must hold a JSON object, got {type(config).__name__}")
    db = d / "results.db"
    rows = []
    if db.exists():
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                rows = [json.loads(r) for (r,) in con.execute("SELECT row FROM cells ORDER BY rowid")]
            finally:
                con.close()
        except (sqlite3.DatabaseError, ValueError, TypeError) as e:
            raise FileFormatError(f"{db} is not a readable results store ({e}); the run's results.csv may "
                                  "still hold its cells") from None
    if not all(isinstance(r, dict) for r in rows):
        raise FileFormatError(f"{db} holds rows that are not JSON objects")
    return config, rows_to_frame(rows)
