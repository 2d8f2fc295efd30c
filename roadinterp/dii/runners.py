"""DII runners: one call runs a batch of counterfactual rows through the intervened model.

Both trainers (``train_dii``, ``train_dii_batched``, through :mod:`roadinterp.dii.fit`) see
only this interface: ``runner.prepare(data)`` (or ``make_runner(..., datasets=...)``) turns
each dataset into a *handle*, and ``runner([(handle, row_ids), ...])`` returns the model
output for those rows with the interventions applied at the site. ``runner(..., vocab=True)``
promises logits over the whole vocabulary at the last position (the held-out
full-vocabulary IIA); without it a runner may compute only the task's answer columns (the
KV engine does, the others always return the model's full output).
:class:`~roadinterp.dii.kvreplay.KVReplayRunner` (causal LMs: only the intervened positions
run, on cached keys/values) and :class:`ReplayRunner` (cached site states,
:class:`~roadinterp.dii.replay.SiteReplay`; only what follows the site runs) are the fast
paths; :class:`PyveneRunner` is the reference path through pyvene's hooks.
:func:`make_runner` picks one (``engine``: auto, kv, kv-bf16, replay or pyvene).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from roadinterp._pyvene import pv  # noqa: F401  (first: imports pyvene quietly)
from roadinterp.dii._tables import ReplayRows, ReplayUnavailable, interchange, per_row_reason
from roadinterp.dii.config import ENGINES, Engine
from roadinterp.dii.kvreplay import make_kv_runner
from roadinterp.dii.replay import SiteReplay, unsupported_reason
from roadinterp.errors import ConfigError, RoadinterpError
from roadinterp.interventions import attach_dii, run_dii
from roadinterp.sites import Site, sequence_length
from roadinterp.tasks.base import CounterfactualBatch


class PyveneRunner:
    """The reference path: pyvene runs base + one source per variable on every call."""

    engine = "pyvene"

    def __init__(self, model, site: Site, interventions: Sequence, coords, *, shared: bool, named_positions=None,
                 reason: str = "") -> None:
        self.site, self.coords, self.named_positions, self.reason = site, coords, named_positions, reason
        self.pvm = attach_dii(model, site, list(interventions), shared=shared)

    def prepare(self, data: CounterfactualBatch) -> CounterfactualBatch:
        return replace(data, raw=None)  # numpy copies on every subset are pure overhead here

    def concat(self, handles: Sequence[CounterfactualBatch]) -> CounterfactualBatch:
        """One handle holding the rows of ``handles`` one after the other."""
        return CounterfactualBatch.concat(handles)

    def __call__(self, parts: Sequence[tuple[CounterfactualBatch, torch.Tensor]], *, vocab: bool = False):
        subs = [d.subset(idx) for d, idx in parts]
        b = subs[0] if len(subs) == 1 else CounterfactualBatch.concat(subs)
        return run_dii(self.pvm, self.site, b.base, b.sources, self.coords, named_positions=self.named_positions,
                       row_positions=b.positions)


class ReplayRunner:
    """DII through :class:`SiteReplay`: look up states, intervene, run the suffix only.

    The interventions are applied exactly as pyvene's setter hooks apply them (one
    ``do_intervention`` per variable, each on the previous one's output), at the
    site's positions of the looked-up states.
    """

    engine = "replay"

    def __init__(self, replay: SiteReplay, interventions: Sequence, coords, *, named_positions=None) -> None:
        self.replay, self.interventions, self.coords = replay, list(interventions), [list(c) for c in coords]
        self.named_positions = named_positions
        self.reason = ""
        self._pos: torch.Tensor | None = None
        self._units: torch.Tensor | None = None  # [m, u, d] site positions of every table row
        self._tail: torch.Tensor | None = None  # [m, s', d] what the tail runs on (all or kept positions)
        self._tail_pos: torch.Tensor | None = None  # site positions within the tail's positions

    def prepare(self, data: CounterfactualBatch) -> ReplayRows:
        return self.prepare_all([data])[0]

    def concat(self, handles: Sequence[ReplayRows]) -> ReplayRows:
        """One handle holding the rows of ``handles`` one after the other."""
        return ReplayRows(torch.cat([h.rows for h in handles]))

    def prepare_all(self, datasets: Sequence[CounterfactualBatch]) -> list[ReplayRows]:
        """Table rows of every base and source input of ``datasets`` (one pass over all of them)."""
        parts: list[Mapping[str, torch.Tensor]] = []
        for data in datasets:
            if len(data.sources) != len(self.interventions):
                raise ConfigError(f"{len(data.sources)} sources for {len(self.interventions)} interventions")
            seq = sequence_length(data.base)
            pos = torch.as_tensor(self.replay.site.position_indices(seq, self.named_positions))
            if self._pos is not None and not torch.equal(pos, self._pos):
                raise ReplayUnavailable("replay datasets must resolve the site to the same positions")
            self._pos, self._units = pos, None
            parts.extend([data.base, *data.sources])
        keys = sorted(parts[0])
        if any(sorted(p) != keys for p in parts):
            raise ReplayUnavailable("replay datasets must all have the same input keys")
        ids = self.replay.add({k: torch.cat([p[k] for p in parts]) for k in keys})
        chunks = iter(ids.split([len(next(iter(p.values()))) for p in parts]))
        return [ReplayRows(torch.stack([next(chunks) for _ in range(1 + len(data.sources))], 1))
                for data in datasets]

    @property
    def units(self) -> torch.Tensor:
        """Every table row's state at the site positions.  # [m, u, d]"""
        self._views()
        return self._units

    def _views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(states the tail runs on ``[m, s', d]``, the site positions within them)."""
        table = self.replay.table
        if self._units is None or self._units.shape[0] != table.shape[0]:
            self._units = table[:, self._pos].contiguous()
            keep = self.replay.keep
            if keep is None:
                self._tail, self._tail_pos = table, self._pos
            else:
                self._tail = table[:, keep].contiguous()
                self._tail_pos = torch.as_tensor([keep.index(int(p)) for p in self._pos])
        return self._tail, self._tail_pos

    def __call__(self, parts: Sequence[tuple[ReplayRows, torch.Tensor]], *, vocab: bool = False):
        tail, tail_pos = self._views()
        units = self._units
        rows = torch.cat([r.rows.index_select(0, i) for r, i in parts]) if len(parts) > 1 \
            else parts[0][0].rows.index_select(0, parts[0][1])  # index_select: faster than rows[i] on CPU
        base_rows = rows[:, 0]  # [N]
        n, V, (u, d) = rows.shape[0], len(self.coords), units.shape[1:]
        # base and every source, one gather (index_select: ~3x faster than units[rows] on CPU)
        X = units.index_select(0, rows.reshape(-1).to(units.device)).view(n, 1 + V, u, d)  # [N, 1 + V, u, d]
        b = interchange(self.interventions, self.coords, X).to(tail.dtype)
        if tail.shape[1] == u and torch.equal(tail_pos, torch.arange(u)):  # the tail is the site positions
            return self.replay.run(b)
        h = tail.index_select(0, base_rows.to(tail.device))  # [N, seq or kept, d], fresh: written in place
        h[:, tail_pos.to(h.device)] = b
        return self.replay.run(h)


def make_runner(model, site: Site, task, interventions: Sequence, coords, *, shared: bool,
                datasets: Sequence[CounterfactualBatch], engine: Engine = "auto"):
    """A DII runner for ``datasets`` and the prepared handle of each, in order.

    ``engine="auto"`` uses :class:`roadinterp.dii.kvreplay.KVReplayRunner` on causal LMs
    (only the intervened positions run, on cached keys/values), else :class:`ReplayRunner`
    when the site and inputs allow it, each only once its check against plain forwards
    passes, else :class:`PyveneRunner` (``runner.reason`` says why); ``"kv"``,
    ``"kv-bf16"`` (its cache in bf16) and ``"replay"`` raise instead of falling back;
    ``"pyvene"`` always uses pyvene.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    named = task.positions
    reason = ""
    if engine in ("auto", "kv", "kv-bf16"):
        try:
            return make_kv_runner(model, site, task, interventions, coords, datasets=datasets,
                                  engine="kv" if engine == "auto" else engine)
        except RoadinterpError as err:  # e.g. a component other than the residual stream
            if engine != "auto":
                raise ConfigError(f"engine={engine!r} is not possible here: {err}") from None
            reason = f"kv: {err}; "
    if engine != "pyvene":
        why = unsupported_reason(model, site, datasets[0].base) or per_row_reason(site, datasets[0], "replay") or ""
        reason += why
        if not why:
            try:
                replay = SiteReplay(model, site)
                base = datasets[0].base
                if not replay.prune(base, site.position_indices(sequence_length(base), named), task.logits):
                    replay.verify(base)
                runner = ReplayRunner(replay, interventions, coords, named_positions=named)
                return runner, runner.prepare_all(datasets)
            except ReplayUnavailable as err:
                reason += str(err)
        if engine == "replay":
            raise ConfigError(f"engine='replay' is not possible here: {reason}")
    runner = PyveneRunner(model, site, interventions, coords, shared=shared, named_positions=named, reason=reason)
    return runner, [runner.prepare(d) for d in datasets]
