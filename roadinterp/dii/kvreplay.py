"""KV replay: DII steps on a causal LM that run only the intervened positions.

Under causal attention, an intervention at positions ``p0, p0+1, ...`` of a block's
residual stream cannot change anything at earlier positions: their hidden states,
and so the keys and values every later layer computes from them, are those of the
clean run. A DII step at the last token therefore only has to run the *tail*: the
positions from ``p0`` to the end (one position for a last-token site), through the
layers after the site, attending to the clean run's cached keys/values of positions
``< p0`` (:class:`roadinterp.dii._kvtable.CleanRuns`, one table per model shared by a
whole scan). And the task reads a few answer logits, not the whole vocabulary.

A step (:class:`KVReplayRunner`) gathers base and source residuals at the site,
applies the interventions (:func:`roadinterp.dii._tables.interchange`, what the replay
engine does), runs the model's own decoder layers after the site on ``[N, T, d]``,
then the final norm and the rows of the unembedding the task reads
(``task.answer_ids``). The output's ``logits`` are ``[N, 1, vocab]``, zero outside those
columns, so ``task.logits`` reads it unchanged; ``runner(parts, vocab=True)`` (held-out
evaluation only) fills every column.

**Per-row positions.** A task-named position that differs per example (RAVEL's ``city``,
IOI's ``io``/``s1``/``s2``) comes with the batch (``CounterfactualBatch.positions``,
``[n, 1 + V]``: the base's index, then each source's). The tail then starts at the
earliest such index of all the runner's datasets (bases and sources): every row
reads each source's state at that source's own index, and writes the mixed state at
its base's own index; the positions of a row between ``p0`` and its own index rerun
clean (they see only clean states), so the result is exact, and the tail is still the
few positions after the entity rather than the whole model on base and sources.
:func:`make_kv_runner` verifies a runner on a few rows against plain forwards before
use; ``make_runner`` otherwise falls back to replay or pyvene.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from roadinterp.dii._kvtable import DEFAULT_MAX_BYTES, CleanRuns, clean_runs, clear_tables
from roadinterp.dii._lm import lm_parts
from roadinterp.dii._tables import ReplayRows, answer_columns, forward_kwargs, interchange
from roadinterp.errors import ConfigError, SiteError
from roadinterp.sites import Site, check_left_padded, sequence_length

__all__ = ["DEFAULT_MAX_BYTES", "INPUT_KEYS", "KV_COMPONENTS", "KV_ENGINES", "CleanRuns", "KVReplayRunner",
           "clean_runs", "clear_tables", "make_kv_runner", "unsupported_reason"]

KV_ENGINES: dict[str, torch.dtype] = {"kv": torch.float32, "kv-bf16": torch.bfloat16}
KV_COMPONENTS: tuple[str, ...] = ("block_output", "block_input")
INPUT_KEYS: tuple[str, ...] = ("input_ids", "inputs_embeds", "attention_mask", "position_ids")


# ------------------------------------------------------------------ the runner
def unsupported_reason(model, site: Site, inputs: Mapping[str, torch.Tensor] | None = None) -> str | None:
    """Why the KV engine cannot run this model/site/inputs (``None``: it can)."""
    if site.component not in KV_COMPONENTS:
        return f"component {site.component!r}: the KV engine needs the residual stream ({', '.join(KV_COMPONENTS)})"
    parts = lm_parts(model)
    if isinstance(parts, str):
        return parts
    if inputs is not None:
        bad = sorted(set(inputs) - set(INPUT_KEYS))
        if bad:
            return f"inputs {bad} are not model inputs the KV engine knows ({', '.join(INPUT_KEYS)})"
    return None


class KVReplayRunner:
    """DII through :class:`CleanRuns`: look up residuals, intervene, run the tail only."""

    def __init__(self, model, site: Site, task, interventions: Sequence, coords, *, engine: str = "kv",
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if engine not in KV_ENGINES:
            raise ConfigError(f"KV engine must be one of {', '.join(KV_ENGINES)}, got {engine!r}")
        parts = lm_parts(model)
        if isinstance(parts, str):
            raise ConfigError(f"the KV engine cannot run this model: {parts}")
        self.model, self.parts, self.site, self.engine = model, parts, site, engine
        for p in model.parameters():  # frozen, as pyvene's disable_model_gradients leaves it: no weight grads
            p.requires_grad_(False)
        self.interventions, self.coords = list(interventions), [list(c) for c in coords]
        self.named_positions, self.max_bytes, self.reason = task.positions, max_bytes, ""
        self.columns = answer_columns(task)  # the unembedding rows a training step computes
        # the tail starts at the site's block (block_input) or the next one (block_output)
        self.start = site.layer + (site.component == "block_output")
        self.table: CleanRuns | None = None
        self._generation = 0
        self._per_row: bool | None = None  # set by the first prepare: per-row positions or one for every row

    def _positions(self, seq: int) -> list[int]:
        return self.site.position_indices(seq, self.named_positions)

    def _row_positions(self, datasets, seq: int) -> list[torch.Tensor] | None:
        """Each dataset's per-row site indices (``[n, 1 + V]``: base, then each source), or ``None``
        when the site's position is the same for every row."""
        name = self.site.positions
        have = [isinstance(name, str) and name in (getattr(d, "positions", None) or {}) for d in datasets]
        if not any(have):
            return None
        if not all(have):
            raise ConfigError(f"position {name!r} comes per row in some of the datasets only; give every dataset "
                              "its per-row positions (CounterfactualBatch.positions)")
        out = []
        for d in datasets:
            at = torch.as_tensor(d.positions[name], dtype=torch.long)
            if at.shape != (len(d.labels), 1 + len(d.sources)) or bool(((at < 0) | (at >= seq)).any()):
                raise SiteError(f"per-row position {name!r} must be [rows, 1 + sources] = "
                                f"[{len(d.labels)}, {1 + len(d.sources)}] indices in 0..{seq - 1}, got shape "
                                f"{list(at.shape)}, values {int(at.min())}..{int(at.max())}")
            out.append(at)
        return out

    def prepare(self, data) -> ReplayRows:
        return self.prepare_all([data])[0]

    def concat(self, handles: Sequence[ReplayRows]) -> ReplayRows:
        at = None if handles[0].at is None else torch.cat([h.at for h in handles])
        return ReplayRows(torch.cat([h.rows for h in handles]), at)

    def prepare_all(self, datasets) -> list[ReplayRows]:
        """Table rows of every base and source input of ``datasets`` (one pass over all of them).

        With per-row positions the tail starts at the earliest index of all of them: prepare a
        runner's datasets in one call (a later call may not reach further back)."""
        parts: list[Mapping[str, torch.Tensor]] = []
        seqs = set()
        for data in datasets:
            for inputs in (data.base, *data.sources):
                check_left_padded(inputs)  # a SiteError: "last" must be every row's last token
            if len(data.sources) != len(self.interventions):
                raise ConfigError(f"{len(data.sources)} sources for {len(self.interventions)} interventions")
            seqs.add(sequence_length(data.base))
            parts.extend([data.base, *data.sources])
        if len(seqs) != 1:
            raise ConfigError(f"KV replay datasets must have one sequence length, got {sorted(seqs)}")
        keys = sorted(parts[0])
        if any(sorted(p) != keys for p in parts):
            raise ConfigError("KV replay datasets must all have the same input keys")
        bad = sorted(set(keys) - set(INPUT_KEYS))
        if bad:
            raise ConfigError(f"inputs {bad} are not model inputs the KV engine knows ({', '.join(INPUT_KEYS)})")
        seq = seqs.pop()
        per_row = self._row_positions(datasets, seq)
        if self._per_row is not None and self._per_row != (per_row is not None):
            raise ConfigError("one KV runner takes either per-row positions or one position for every row")
        pos = self._positions(seq) if per_row is None else None
        p0 = min(pos) if per_row is None else int(min(int(at.min()) for at in per_row))
        if self.table is None:
            self.table = clean_runs(self.model, self.parts, seq, p0, KV_ENGINES[self.engine],
                                    max_bytes=self.max_bytes)
        elif self.table.seq != seq:
            raise ConfigError("KV replay datasets must have one sequence length")
        elif p0 < self.table.p0:
            raise ConfigError(f"position {self.site.positions!r} reaches index {p0}, before this runner's tail "
                              f"start {self.table.p0}: prepare every dataset in one prepare_all call")
        self._per_row = per_row is not None
        if per_row is None:
            self._pos = torch.as_tensor([p - self.table.p0 for p in pos])  # site positions within the tail
        ids = self.table.add({k: torch.cat([p[k] for p in parts]) for k in keys}, max_bytes=self.max_bytes)
        self._generation = self.table.generation
        chunks = iter(ids.split([len(next(iter(p.values()))) for p in parts]))
        rows = [torch.stack([next(chunks) for _ in range(1 + len(d.sources))], 1) for d in datasets]
        if per_row is None:
            return [ReplayRows(r) for r in rows]
        return [ReplayRows(r, at - self.table.p0) for r, at in zip(rows, per_row)]

    def __call__(self, parts: Sequence[tuple[ReplayRows, torch.Tensor]], *, vocab: bool = False):
        """The intervened output of ``parts``; ``vocab``: every unembedding row, not only the answers'."""
        from transformers.modeling_outputs import CausalLMOutput

        table = self.table
        if table is None or table.generation != self._generation:
            raise ConfigError("this runner's clean-run table was cleared (another run needed the memory); "
                              "prepare its data again")
        rows = torch.cat([r.rows.index_select(0, i) for r, i in parts]) if len(parts) > 1 \
            else parts[0][0].rows.index_select(0, parts[0][1])
        res = table.res[:, self.start]  # [m, T, d] (a view)
        n, V = rows.shape[0], len(self.coords)
        dev = res.device
        h = res.index_select(0, rows[:, 0].to(dev))  # [N, T, d] fresh: written in place
        if self._per_row:  # each input's own index: the sources' states at theirs, written at the base's
            at = torch.cat([r.at.index_select(0, i) for r, i in parts]).to(dev)  # [N, 1 + V]
            X = res[rows.to(dev), at][:, :, None]  # [N, 1 + V, 1, d]
            h[torch.arange(n, device=dev), at[:, 0]] = interchange(self.interventions, self.coords, X)[:, 0].to(h.dtype)
        else:
            pos = self._pos.to(dev)
            X = res.index_select(0, rows.reshape(-1).to(dev)).view(n, 1 + V, table.T, -1)[:, :, pos]  # [N, 1+V, u, d]
            h[:, pos] = interchange(self.interventions, self.coords, X).to(h.dtype)
        h = table.tail(h.to(self.parts.head.weight.dtype), self.start, rows[:, 0].to(dev))
        cols = None if vocab or self.columns is None else self.columns.to(dev)
        return CausalLMOutput(logits=table.logits(h, cols))

    @torch.no_grad()
    def verify(self, data, read, *, rows: int = 4, atol: float = 1e-4) -> float:
        """Max |KV-replayed - plain| of what ``read`` takes, without interventions, on ``rows`` inputs."""
        from transformers.modeling_outputs import CausalLMOutput

        part = {k: v[:rows] for k, v in data.base.items()}
        ids = self.table.add(part, max_bytes=self.max_bytes)
        if self.table.generation != self._generation:
            raise ConfigError("the clean-run table was cleared while verifying")
        h = self.table.res[:, self.start].index_select(0, ids)
        h = self.table.tail(h.to(self.parts.head.weight.dtype), self.start, ids)
        got = read(CausalLMOutput(logits=self.table.logits(h, self.columns)))
        ref = read(self.model(**part, **forward_kwargs(self.model)))
        if ref.shape != got.shape:
            raise ConfigError(f"KV-replayed reading has shape {list(got.shape)}, the model's {list(ref.shape)}")
        err = float((ref.float() - got.float()).abs().max())
        scale = max(float(ref.float().abs().max()), 1.0)
        if not err <= atol * scale:
            raise ConfigError(f"KV-replayed outputs differ from plain forwards by {err:.2e} (> {atol:g} x {scale:.3g})")
        return err


def make_kv_runner(model, site: Site, task, interventions, coords, *, datasets, engine: str = "kv"):
    """A verified :class:`KVReplayRunner` and its handles, or raise ConfigError saying why not."""
    reason = unsupported_reason(model, site, datasets[0].base)
    if reason:
        raise ConfigError(reason)
    runner = KVReplayRunner(model, site, task, interventions, coords, engine=engine)
    handles = runner.prepare_all(datasets)
    # a half-precision model (or cache) rounds differently along the tail than along a full forward
    exact = engine == "kv" and runner.parts.head.weight.dtype == torch.float32
    runner.verify(datasets[0], task.logits, atol=1e-4 if exact else 2e-2)
    return runner, handles
