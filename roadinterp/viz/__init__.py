"""Figures of learned RoAd maps and alignment-search results.

``roadinterp.viz.<name>`` are interactive plotly figures; ``roadinterp.viz.static.<name>``
are matplotlib twins with the same names and arguments (for .png/.pdf). Both draw
the same tidy tables (``angle_table``, ``iia_grid``, ...), which you can also use
directly. ``roadinterp.viz.learned`` reads what a run's rotations learned (angles per
seed, subspace agreement, the layer sweep). ``roadinterp.viz.report`` turns a run
directory into one self-contained HTML page. :func:`plot_angles` is what ``roadinterp plot angles PATH --out F`` calls.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from roadinterp.errors import ConfigError, FileFormatError
from roadinterp.viz import static
from roadinterp.viz.figures import (
    alphas,
    angle_heatmap,
    angle_table,
    angles,
    block_angle_grid,
    composition,
    examples,
    iia_grid,
    iia_heatmap,
    lambda_sweep,
    ownership,
    ownership_grid,
    save_html,
)
from roadinterp.viz.learned import layer_sweep, seed_angles, seed_subspaces
from roadinterp.viz.static import save_static

HTML_SUFFIXES = (".html", ".htm")


def _saved_objects(root: Path) -> dict[str, object]:
    """Every roadinterp save with learned angles (a dir with config.json + weights) under ``root``,
    loaded by name (saved subspaces, which hold no angles, are left out)."""
    from roadinterp import io
    from roadinterp.subspace import SubspaceBasis

    found = {}
    for cfg in sorted(root.rglob(io.CONFIG_NAME)):
        d = cfg.parent
        if not (d / io.WEIGHTS_NAME).is_file():
            continue
        try:
            doc = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and doc.get("format") == io.FORMAT and doc.get("kind") != SubspaceBasis.KIND:
            found[str(d.relative_to(root)) or d.name] = io.load(d)
    return found


def load_angles_source(path: str | os.PathLike):
    """A saved adapter directory -> the adapter; a run directory -> {name: adapter} of the saves inside it."""
    from roadinterp import io

    p = Path(path)
    if (p / io.CONFIG_NAME).is_file():
        return io.load(p)
    if (p / "run.json").is_file():
        found = _saved_objects(p)
        if not found:
            raise ConfigError(
                f"run directory {p} holds no saved adapters (no */{io.CONFIG_NAME} with weights); "
                "pass a saved adapter directory instead"
            )
        return found
    raise FileFormatError(f"{p} is neither a saved adapter directory ({io.CONFIG_NAME}) nor a run directory (run.json)")


def plot_angles(path: str | os.PathLike, out: str | os.PathLike, *, kind: str = "histogram") -> Path:
    """Plot the learned angles of an adapter (or of every adapter saved in a run directory).

    ``out`` ending in .html: interactive plotly page (self-contained, plotly.js inlined);
    .png/.pdf/.svg: matplotlib. Any other suffix raises ``ConfigError``.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in HTML_SUFFIXES + static.STATIC_SUFFIXES:
        raise ConfigError(
            f"--out must end in .html (interactive) or {', '.join(static.STATIC_SUFFIXES)} (static), got {out.name!r}"
        )
    obj = load_angles_source(path)
    if suffix in HTML_SUFFIXES:
        return save_html(angles(obj, kind), out)
    return save_static(static.angles(obj, kind), out)


def write_report(run_dir, out_html, cells=()):
    """See :func:`roadinterp.viz.report.write_report`."""
    from roadinterp.viz.report import write_report as _write

    return _write(run_dir, out_html, cells)


def write_figures(run_dir, out_dir, cells=()):
    """See :func:`roadinterp.viz.report.write_figures`."""
    from roadinterp.viz.report import write_figures as _write

    return _write(run_dir, out_dir, cells)


def write_adapter_report(adapters, out_html, owners=None):
    """See :func:`roadinterp.viz.adapter_report.write_adapter_report`."""
    from roadinterp.viz.adapter_report import write_adapter_report as _write

    return _write(adapters, out_html, owners=owners)


__all__ = [
    "alphas", "angle_heatmap", "angle_table", "angles", "block_angle_grid", "composition", "examples",
    "iia_grid", "iia_heatmap", "lambda_sweep", "layer_sweep", "load_angles_source", "ownership", "ownership_grid",
    "plot_angles", "save_html", "save_static", "seed_angles", "seed_subspaces", "static", "write_adapter_report",
    "write_figures", "write_report",
]
