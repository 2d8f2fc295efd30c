"""The exact whole-vector patch at every cell: two engines, one answer.

A cell ``(layer, position)`` is patched by setting the site's whole vector at that position of
each base row to the source row's vector there (``b + I (s - b)``, what the whole-site control
:func:`roadinterp.controls.site_patch_iia` does with ``ProjectionInterchange.whole``) and reading
the task's answer logits. Both engines yield ``(layer, label, rows, logits)``: the task's class
scores ``[len(rows), n_classes]`` of the patched run of the counterfactual rows ``rows``, and first,
with ``layer=None``, the clean run's.

* :func:`kv_cells` (causal LMs, residual stream): a patch at position ``p`` cannot change any
  earlier position, so only positions ``p..end`` of the blocks after the site run, attending to
  the clean run's cached keys and values of the prefix (:class:`roadinterp.dii.kvreplay.CleanRuns`,
  the DII fast path's table, one per patched position and row batch; the rows' tails from it
  are checked against plain forwards once). A last-token cell costs one token through the
  blocks after the site; a cell at the first name of an IOI prompt costs the whole tail.
* :func:`hook_cells` (any model and component): full forwards with a hook at the site module,
  every position of a chunk in one forward (the base rows repeated once per position).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import torch

from roadinterp.errors import ConfigError
from roadinterp.screen._hooks import as3d, capturing, patching
from roadinterp.screen.grid import GridPosition

Cell = tuple  # (layer | None, label | None, rows: slice, logits [b, n_classes])
KV_MAX_BYTES = 2 << 30  # one clean-run table (one position, one row batch)


def model_kwargs(model) -> dict:
    """Plain-forward keywords: no KV cache built, logits at the last position only where supported."""
    params = inspect.signature(model.forward).parameters
    out = {"use_cache": False} if "use_cache" in params else {}
    if "logits_to_keep" in params:
        out["logits_to_keep"] = 1
    return out


def _rows(inputs: dict, rows: slice) -> dict:
    return {k: v[rows] for k, v in inputs.items()}


def kv_reason(model, component: str) -> str | None:
    """Why the KV engine cannot patch this model's ``component`` (None: it can)."""
    from roadinterp.dii._lm import lm_parts
    from roadinterp.screen.config import COMPONENTS_KV

    if component not in COMPONENTS_KV:
        return f"component {component!r} is not the residual stream ({', '.join(COMPONENTS_KV)})"
    parts = lm_parts(model)
    return parts if isinstance(parts, str) else None


@torch.no_grad()
def kv_cells(model, task, batch, layers: Sequence[int], component: str, positions: Sequence[GridPosition],
             batch_size: int) -> Iterator[Cell]:
    """The exact patch of every (layer, position) through KV tails (see the module docstring)."""
    from transformers.modeling_outputs import CausalLMOutput

    from roadinterp.dii._lm import lm_parts
    from roadinterp.dii._tables import answer_columns
    from roadinterp.dii.kvreplay import CleanRuns
    from roadinterp.sites import check_left_padded, sequence_length

    parts = lm_parts(model)
    if isinstance(parts, str):
        raise ConfigError(f"the KV engine cannot run this model: {parts}")
    base_all, src_all = batch.base, batch.sources[0]
    check_left_padded(base_all)
    check_left_padded(src_all)
    seq, n = sequence_length(base_all), len(batch.labels)
    columns = answer_columns(task)
    shift = int(component == "block_output")  # block_output at l is the residual entering block l + 1
    dtype = parts.head.weight.dtype
    verified = False

    def read(table, h, start, rows):
        out = table.tail(h.to(dtype), start, rows)
        return task.logits(CausalLMOutput(logits=table.logits(out, columns))).float()

    for r0 in range(0, n, batch_size):
        rows = slice(r0, min(n, r0 + batch_size))
        base, src = _rows(base_all, rows), _rows(src_all, rows)
        b = rows.stop - rows.start
        ar = torch.arange(b)
        clean = None
        for pos in positions:
            bi, si = pos.base[rows], pos.source[rows]
            p0 = int(torch.minimum(bi, si).min())
            table = CleanRuns(model, parts, seq, p0, torch.float32)
            ids = table.add({k: torch.cat([base[k], src[k]]) for k in sorted(base)}, max_bytes=KV_MAX_BYTES)
            bid, sid = ids[:b], ids[b:]
            res = table.res  # [m, layers + 1, T, d]
            if clean is None:
                clean = read(table, res[bid, len(parts.layers)], len(parts.layers), bid)
                if not verified:
                    _verify(model, task, base, clean)
                    verified = True
                yield None, None, rows, clean
            for layer in layers:
                slot = layer + shift
                h = res[bid, slot].clone()  # [b, T, d]
                new = res[sid, slot][ar, si - p0]  # [b, d]
                if torch.equal(h[ar, bi - p0], new):  # the source's vector is the base's: the clean run
                    yield layer, pos.label, rows, clean
                    continue
                h[ar, bi - p0] = new
                yield layer, pos.label, rows, read(table, h, slot, bid)
            del table, res


def _verify(model, task, base: dict, clean: torch.Tensor, rows: int = 4) -> None:
    """The tail's clean logits against a plain forward (as the DII KV runner checks itself)."""
    ref = task.logits(model(**_rows(base, slice(0, rows)), **model_kwargs(model))).float()
    err = float((ref - clean[:rows]).abs().max())
    scale = max(float(ref.abs().max()), 1.0)
    if not err <= 1e-4 * scale:
        raise ConfigError(f"the KV tails differ from plain forwards by {err:.2e} (> 1e-4 x {scale:.3g}); "
                          "use engine='hooks'")


@torch.no_grad()
def hook_cells(model, task, batch, layers: Sequence[int], component: str, positions: Sequence[GridPosition],
               batch_size: int) -> Iterator[Cell]:
    """The exact patch of every (layer, position) by full forwards with a hook at the site."""
    base_all, src_all = batch.base, batch.sources[0]
    n, kw = len(batch.labels), model_kwargs(model)
    for r0 in range(0, n, batch_size):
        rows = slice(r0, min(n, r0 + batch_size))
        base, src = _rows(base_all, rows), _rows(src_all, rows)
        b = rows.stop - rows.start
        ar = torch.arange(b)
        with capturing(model, component, layers) as states:
            model(**src, **kw)
        yield None, None, rows, task.logits(model(**base, **kw)).float()
        per = max(1, batch_size // b)  # positions per forward: about batch_size rows
        for layer in layers:
            s = as3d(states[layer])
            for c0 in range(0, len(positions), per):
                chunk = positions[c0:c0 + per]
                rep = {k: torch.cat([v] * len(chunk)) for k, v in base.items()}
                index = torch.cat([p.base[rows] for p in chunk])
                values = torch.cat([s[ar, p.source[rows]] for p in chunk])
                with patching(model, component, layer, torch.arange(len(index)), index, values):
                    z = task.logits(model(**rep, **kw)).float()
                for j, p in enumerate(chunk):
                    yield layer, p.label, rows, z[j * b:(j + 1) * b]
        del states
