"""The adapter report: one self-contained HTML page of trained RoAd adapters.

For each adapter (``{name: RoadAdapter}``, or anything :func:`roadinterp.viz.angle_table`
accepts) its facts (variant, placement, targets, subspace, trainable entries, meta) and
its learned angles (histogram, polar), alphas and the angle heat map; for a composed
adapter (or with ``owners``) the block-ownership map first. The page is built with the
run report's HTML helpers (:mod:`roadinterp.viz.report`) and opens offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from roadinterp.viz import figures as F
from roadinterp.viz.report import _e, _figure_div, _page, _stamp, _table, _write_atomic


def _n_blocks(adapter) -> int | None:
    widths = list(getattr(adapter, "targets", {}).values())
    return min(widths) // 2 if widths else None


def write_adapter_report(adapters: Mapping[str, Any], out_html: str | os.PathLike,
                         owners: Mapping[str, Sequence[int]] | None = None) -> Path:
    """One page showing each adapter's angles and alphas; with ``owners`` also the block-ownership map.

    ``adapters``: ``{name: RoadAdapter}`` (anything :func:`roadinterp.viz.angle_table` accepts).
    ``owners``: ``{adapter_name: [block, ...]}`` of a composed adapter.
    """
    title = "roadinterp adapters"
    body = [f"<h1>{_e(title)}</h1>", f'<p class="meta">{len(adapters)} adapter(s) · report written {_e(_stamp())}</p>']
    figs = []
    if owners is None:  # a composed adapter carries its ownership map
        owners = next((ad.meta["owners"] for ad in adapters.values() if (getattr(ad, "meta", None) or {}).get("owners")),
                      None)
    if owners:
        first = next(iter(adapters.values()), None)
        n = _n_blocks(first) if first is not None else None
        body.append("<h2>Block ownership</h2>")
        fig = F.ownership(owners, n)
        figs.append(fig)
        body.append(_figure_div(fig, "block ownership"))
    if not adapters:
        body.append('<p class="empty">No adapters given.</p>')
    for name, ad in adapters.items():
        body.append(f"<h2>{_e(name)}</h2>")
        facts = [["variant", getattr(ad, "variant", "")], ["placement", getattr(ad, "placement", "")]]
        if hasattr(ad, "targets"):
            facts.append(["targets", ", ".join(f"{k} ({w})" for k, w in ad.targets.items())])
            blocks = getattr(ad, "blocks", None)
            facts.append(["subspace", "all blocks" if blocks is None else f"{len(blocks)} blocks"])
        if hasattr(ad, "n_trainable"):
            facts.append(["trainable entries used", ad.n_trainable()])
        for k, v in (getattr(ad, "meta", None) or {}).items():
            facts.append([f"meta.{k}", json.dumps(v, default=str)])
        body.append(_table(["", ""], facts))
        for what, fig in (("angles", F.angles(ad)), ("angles (polar)", F.angles(ad, "polar")),
                          ("alphas", F.alphas(ad)), ("angle heat map", F.angle_heatmap(ad))):
            fig.update_layout(title=f"{name}: {fig.layout.title.text}")
            figs.append(fig)
            body.append(_figure_div(fig, f"{name} {what}"))
    return _write_atomic(Path(out_html), _page(title, body, with_plotly=bool(figs)))
