"""A screen's files and its terminal table.

``OUT/`` holds ``screen.json`` (the config, the meta -- timings, peak memory, AtP vs exact -- and
the grid; :meth:`ScreenResult.from_json` reads it back), ``screen.csv`` (the grid), ``screen.html``
(plotly heat maps, plotly.js inlined) and ``screen.png`` (the matplotlib twin). :func:`prepare`
decides, before any work, whether ``OUT`` may be written: a directory holding a screen is reused
with ``resume`` (same config only) or replaced with ``overwrite``; anything else roadinterp did not
write is refused (:func:`roadinterp.io.prepare_output`). The table fits 120 columns: one row per
layer (its best position by the exact patch and by AtP), then the no-op, AtP's rank correlation
and where it fails, timings and peak memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from roadinterp import io
from roadinterp.errors import FileFormatError, RunDirError
from roadinterp.screen.config import ScreenConfig
from roadinterp.screen.run import ScreenResult

FILES = ("screen.json", "screen.csv", "screen.html", "screen.png")
KIND = "roadinterp-screen"


def is_screen_dir(path: str | os.PathLike) -> bool:
    """Does ``path`` hold a screen roadinterp wrote (its screen.json says so)?"""
    try:
        doc = io.load_json(Path(path) / "screen.json", "screen.json")
    except FileFormatError:
        return False
    return isinstance(doc, dict) and doc.get("kind") == KIND


def prepare(out: str | os.PathLike, config: ScreenConfig, *, resume: bool, overwrite: bool) -> ScreenResult | None:
    """The finished screen to reuse (``resume`` and the same config), or None: compute and write.

    Refuses (one error) an existing screen without ``resume``/``overwrite``, a screen of another
    config under ``resume``, and a path roadinterp did not write unless ``overwrite``.
    """
    if resume and overwrite:
        from roadinterp.errors import ConfigError

        raise ConfigError("--resume and --overwrite contradict each other (reuse the screen, or replace it); "
                          "pass one of them")
    p = io.prepare_output(out, overwrite=overwrite, ours=is_screen_dir)
    if not is_screen_dir(p) or overwrite:
        return None
    if not resume:
        raise RunDirError(f"--out {p} already holds a screen; pass --resume to show it again or --overwrite "
                          "to replace it")
    stored = load(p)
    if stored.config.to_json() != config.to_json():
        diff = sorted(k for k, v in config.to_json().items() if stored.config.to_json().get(k) != v)
        raise RunDirError(f"--out {p} holds a screen of another config (differs in {', '.join(diff)}); "
                          "choose another --out or pass --overwrite")
    return stored


def load(path: str | os.PathLike) -> ScreenResult:
    doc = io.load_json(Path(path) / "screen.json", "screen.json")
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise FileFormatError(f"{path}/screen.json is not a roadinterp screen")
    try:
        return ScreenResult.from_json(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(f"{path}/screen.json is malformed: {e}") from None


def save(result: ScreenResult, out: str | os.PathLike) -> list[Path]:
    """Write the four files into ``out`` (each atomically); their paths."""
    from roadinterp.viz.screen import heatmap, heatmap_static

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [io.write_text_atomic(out / "screen.json", json.dumps(result.to_json(), indent=1, default=str)),
             io.write_text_atomic(out / "screen.csv", result.grid.to_csv(index=False))]
    fig = heatmap(result.grid, result.meta)
    paths.append(io.write_text_atomic(out / "screen.html", fig.to_html(full_html=True, include_plotlyjs=True,
                                                                        config={"displaylogo": False})))
    tmp = out / ".screen.png.tmp"
    heatmap_static(result.grid, result.meta).savefig(tmp, dpi=130, format="png")
    os.replace(tmp, out / "screen.png")
    paths.append(out / "screen.png")
    return paths


def _f(v, digits: int = 3) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def print_table(console, result: ScreenResult, out: str | None = None) -> None:
    """The per-layer table and the summary lines (120 columns)."""
    from rich.table import Table

    from roadinterp.screen.compare import describe

    g, m = result.grid, result.meta
    null = m["iia_null"]
    t = Table(title=f"screen: {m['task']} {','.join(m['variables'])} on {m['model']} ({m['component']}, "
                    f"n={m['n']}, no-op {null:.3f})")
    for col in ("layer", "best position (exact)", "IIA", "- no-op", "last IIA", "best position (AtP)",
                "AtP rank of exact best", "Spearman"):
        t.add_column(col, no_wrap=True, justify="left" if "position" in col else "right")
    by_layer = (m.get("compare") or {}).get("by_layer", {})
    for layer, d in g.groupby("layer", sort=True):
        ex = d.dropna(subset=["iia"])
        at = d.dropna(subset=["atp"])
        best = ex.loc[ex["iia"].idxmax()] if len(ex) else None
        last = d[d["offset"] == -1]["iia"]
        atp_best = at.loc[at["atp"].idxmax()]["position"] if len(at) else "-"
        rank = "-"
        if best is not None and len(at):
            rank = str(int(at["atp"].rank(ascending=False)[at["position"] == best["position"]].iloc[0]))
        t.add_row(str(layer), "-" if best is None else str(best["position"]),
                  "-" if best is None else _f(best["iia"]), "-" if best is None else f"{best['iia'] - null:+.3f}",
                  _f(last.iloc[0]) if len(last) else "-", str(atp_best), rank, _f(by_layer.get(str(layer)), 2))
    console.print(t)
    s = m["seconds"]
    lines = describe(m) + [
        f"time: exact {s['exact']:.1f} s ({m.get('engine') or 'not run'}), AtP {s['atp']:.1f} s, screen "
        f"{s['screen']:.1f} s (+ {s['load']:.1f} s loading and binding) on {m['torch_threads']} threads; "
        f"peak memory {m['peak_rss_mb']:.0f} MB"]
    for line in lines:  # wrapped at the console's width (120 in pipes and logs)
        console.print(line, markup=False, highlight=False)
    if out:  # paths are what a user copies: never split
        console.print(f"grid: {out}/screen.csv  heat map: {out}/screen.html, {out}/screen.png", markup=False,
                      highlight=False, soft_wrap=True)
