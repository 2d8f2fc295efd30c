"""The KV engine's clean-run table: one clean forward per distinct input, kept for every layer.

Under causal attention an intervention at positions ``>= p0`` cannot change anything at
earlier positions, so a DII step only has to run the *tail* (positions ``p0..``) through
the layers after the site, attending to the clean run's keys/values of positions ``< p0``.
:class:`CleanRuns` holds, per distinct input (deduplicated by
:class:`roadinterp.dii._tables.InputIndex`, as in replay), one clean forward's

* keys/values of positions ``< p0`` at *every* layer (``[m, kv_heads, p0, head_dim]``
  per layer and K/V; fp32, or bf16 with engine ``kv-bf16``),
* the residual stream entering every block, and after the last, at the tail positions
  (``[m, layers + 1, T, d]``, fp32: the site states the interventions mix),
* the attention pattern of the tail queries (padding included) and their rotary
  position embeddings, exactly as the model built them for that input, once per distinct
  kind a layer gets (Gemma-3 builds a sliding-window and a global mask, and a local and a
  global rotary table; llama, qwen2 and gpt2 one of each).

Nothing in it depends on the site's layer, so one table serves a whole layer scan (and
every seed and family): it lives as long as the model, at most ``max_bytes`` for all
tables of the process (LRU; a full table is cleared before it refuses). Memory per input
is ``2 x layers x kv_heads x head_dim x p0`` cache elements: SmolLM2-135M (30 layers,
3 KV heads of 64) with 19 prefix tokens is 0.88 MB in fp32, 0.44 MB in bf16, plus
71 kB of residuals at one tail position. :meth:`CleanRuns.tail` runs the model's own
decoder layers on tail states with a small cache object that hands each attention its
row's cached prefix; :meth:`CleanRuns.logits` computes only the unembedding rows asked for.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping

import torch

from roadinterp.dii._lm import LMParts, _allowed, _named
from roadinterp.dii._tables import InputIndex, Stop, first, forward_kwargs
from roadinterp.errors import ConfigError

DEFAULT_MAX_BYTES = 3 << 30  # every clean-run table of the process together (3 GiB)
_SLICED = ("position_ids", "cache_position")  # per-position layer arguments: the tail takes its positions


# ------------------------------------------------------------------ the clean-run table
class _Recorder:
    """Stands in for the KV cache during the clean run: keeps each layer's prefix keys/values."""

    def __init__(self, p0: int, dtype: torch.dtype) -> None:
        self.p0, self.dtype = p0, dtype
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.kv[layer_idx] = (key_states[:, :, : self.p0].to(self.dtype), value_states[:, :, : self.p0].to(self.dtype))
        return key_states, value_states


class _Prefix:
    """Stands in for the KV cache during a step: each layer's keys/values are the rows' cached
    prefix followed by the tail's own."""

    def __init__(self, table: CleanRuns, rows: torch.Tensor) -> None:
        self.table, self.rows = table, rows

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.table.kv[layer_idx]
        k = k.index_select(0, self.rows).to(key_states.dtype)
        v = v.index_select(0, self.rows).to(value_states.dtype)
        return torch.cat([k, key_states], -2), torch.cat([v, value_states], -2)


class CleanRuns:
    """Keys/values before ``p0`` and tail residuals of every distinct input, for one model.

    Inputs must be ``seq`` tokens long; ``p0`` is the first position the tail runs.
    Get the shared table of a model with :func:`clean_runs`; :meth:`add` returns row ids.
    """

    def __init__(self, model, parts: LMParts, seq: int, p0: int, kv_dtype: torch.dtype) -> None:
        if not 0 <= p0 < seq:
            raise ConfigError(f"the tail must start inside the sequence (0..{seq - 1}), got {p0}")
        self.model, self.parts, self.seq, self.p0, self.kv_dtype = model, parts, seq, p0, kv_dtype
        self.T = seq - p0
        self.generation = 0  # bumped when the table is cleared: row ids of older runners are void
        self.n_forward_rows = 0
        self._index = InputIndex("KV replay")  # table row id of every distinct input
        self._clear()

    def _clear(self) -> None:
        self._index.clear()
        self._chunks: list[dict] = []
        self._cat: dict | None = None
        self.generation += 1

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for c in self._chunks for t in _tensors(c))

    def per_row_bytes(self) -> int:
        return self.nbytes // max(self.rows, 1)

    @property
    def rows(self) -> int:
        return len(self._index)

    # ----- building
    @torch.no_grad()
    def _run(self, inputs: Mapping[str, torch.Tensor]) -> dict:
        """One clean forward of ``inputs`` (every block, no norm/unembedding), what the table keeps."""
        parts, p0, n = self.parts, self.p0, next(iter(inputs.values())).shape[0]
        rec = _Recorder(p0, self.kv_dtype)
        res: list[torch.Tensor] = []  # per block input, then the last block's output: [n, T, d]
        got: dict = {}
        per_layer: list[tuple] = []  # each block's (attention mask, position embeddings), as the model built them
        handles = []

        def pre(module, args, kwargs):
            named = _named(parts.params, args, kwargs)
            h = named[parts.params[0]]
            res.append(h[:, p0:].float())
            per_layer.append((named.get("attention_mask"), named.get("position_embeddings")))
            if not got:
                got.update(named)
            named[parts.cache_kwarg] = rec
            return (), named

        def post(module, args, kwargs, output):
            res.append(first(output)[:, p0:].float())
            raise Stop

        try:
            for layer in parts.layers:
                handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(parts.layers[-1].register_forward_hook(post, with_kwargs=True))
            try:
                self.model(**inputs, **forward_kwargs(self.model))
            except Stop:
                pass
        finally:
            for h in handles:
                h.remove()
        if len(res) != len(parts.layers) + 1:
            raise ConfigError("the clean run did not pass through every block once")
        device = res[0].device
        # one mask / rotary table per distinct object the blocks got (a sliding and a global one on Gemma-3)
        masks, pes, mask_of, pe_of = {}, {}, [], []
        for mask, pe in per_layer:
            if id(mask) not in masks:
                masks[id(mask)] = _allowed(mask, n, self.seq, device)[:, p0:].contiguous()  # [n, T, seq]
            mask_of.append(list(masks).index(id(mask)))
            if pe is not None and id(pe) not in pes:
                pes[id(pe)] = tuple(t[:, p0:].expand(n, -1, -1).contiguous() for t in pe)  # ([n, T, hd], ...)
            pe_of.append(None if pe is None else list(pes).index(id(pe)))
        out = {"res": torch.stack(res, 1), "allowed": list(masks.values()), "mask_of": mask_of,
               "kv": [rec.kv[i] for i in sorted(rec.kv)]}
        if len(out["kv"]) != len(parts.layers):
            raise ConfigError("not every attention used the KV cache argument")
        if pes:
            out["pe"], out["pe_of"] = list(pes.values()), pe_of
        for k in _SLICED:
            if isinstance(got.get(k), torch.Tensor):
                t = got[k]
                out[k] = (t[..., p0:] if t.dim() == 1 else t[:, p0:].expand(n, -1)).contiguous()
        extra = [k for k, v in got.items() if isinstance(v, torch.Tensor) and k not in
                 (parts.params[0], "attention_mask", *_SLICED)]
        if extra:
            raise ConfigError(f"decoder layers get per-input arguments {extra} the KV engine does not know")
        out["static"] = {k: v for k, v in got.items() if k not in (parts.params[0], "attention_mask",
                                                                    "position_embeddings", parts.cache_kwarg, *_SLICED)}
        return out

    def add(self, inputs: Mapping[str, torch.Tensor], *, max_bytes: int) -> torch.Tensor:
        """Row ids of ``inputs``, running the clean forward of inputs not seen yet.  # [n]"""
        keys = sorted(inputs)
        n = next(iter(inputs.values())).shape[0]
        known, per_row = self.rows, self.per_row_bytes()  # before the index grows
        ids, new_rows = self._index.add(inputs, keys)
        if len(new_rows) and known and per_row * len(self._index) > max_bytes:
            self._clear()  # full: forget earlier cells' inputs rather than refuse
            return self.add(inputs, max_bytes=max_bytes)
        sel = torch.from_numpy(new_rows)
        chunk = 256
        for start in range(0, len(new_rows), chunk):
            part = {k: inputs[k][sel[start : start + chunk]] for k in keys}
            self._chunks.append(self._run(part))
            self._cat = None
            self.n_forward_rows += len(sel[start : start + chunk])
            if self.nbytes > max_bytes:
                self._clear()
                raise ConfigError(f"the KV replay table of {n} inputs exceeds {max_bytes / 2**30:.2f} GiB; "
                                  "use engine='kv-bf16', fewer inputs, or engine='replay'")
        return torch.from_numpy(ids)

    # ----- looking up
    def _table(self) -> dict:
        if self._cat is None:
            if not self._chunks:
                raise ConfigError("the KV replay table is empty: add inputs first")
            cs = self._chunks
            if any(c["mask_of"] != cs[0]["mask_of"] or c.get("pe_of") != cs[0].get("pe_of") for c in cs):
                raise ConfigError("inputs of one table gave their blocks differently shared masks")
            cat = {k: torch.cat([c[k] for c in cs]) for k in ("res", *_SLICED) if k in cs[0]}
            cat["allowed"] = [torch.cat([c["allowed"][i] for c in cs]) for i in range(len(cs[0]["allowed"]))]
            cat["kv"] = [tuple(torch.cat([c["kv"][i][j] for c in cs]) for j in range(2)) for i in range(len(cs[0]["kv"]))]
            if "pe" in cs[0]:
                cat["pe"] = [tuple(torch.cat([c["pe"][i][j] for c in cs]) for j in range(2))
                             for i in range(len(cs[0]["pe"]))]
                cat["pe_of"] = cs[0]["pe_of"]
            cat["mask_of"], cat["static"] = cs[0]["mask_of"], cs[0]["static"]
            self._chunks, self._cat = [cat], cat
        return self._cat

    @property
    def res(self) -> torch.Tensor:
        """Residual stream entering block l (l = layers: after the last) at the tail positions.  # [m, L+1, T, d]"""
        return self._table()["res"]

    @property
    def kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, keys and values of positions < p0.  # [m, kv_heads, p0, head_dim] each"""
        return self._table()["kv"]

    def tail(self, h: torch.Tensor, start: int, rows: torch.Tensor) -> torch.Tensor:
        """Run blocks ``start..`` on tail states ``h`` of inputs ``rows``; the final block's output.  # [N, T, d]"""
        t, parts = self._table(), self.parts
        rows = rows.to(h.device)
        eager = self.model.config._attn_implementation == "eager"
        used = sorted(set(t["mask_of"][start:]))
        masks = {}
        for i in used:  # only the kinds the tail's blocks use
            allowed = t["allowed"][i].index_select(0, rows)[:, None]  # [N, 1, T, seq]
            if eager:
                masks[i] = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device).masked_fill(
                    ~allowed, torch.finfo(h.dtype).min)
            else:
                masks[i] = allowed
        pes = {}
        if "pe" in t:
            for i in sorted({t["pe_of"][j] for j in range(start, len(parts.layers))} - {None}):
                pes[i] = tuple(x.index_select(0, rows).to(h.dtype) for x in t["pe"][i])
        named = dict(t["static"])
        named[parts.cache_kwarg] = _Prefix(self, rows)
        for k in _SLICED:
            if k in t:
                named[k] = t[k] if t[k].dim() == 1 else t[k].index_select(0, rows)
        for j in range(start, len(parts.layers)):
            named["attention_mask"] = masks[t["mask_of"][j]]
            if pes:
                named["position_embeddings"] = pes[t["pe_of"][j]]
            h = first(parts.layers[j](h, **named))
        return h

    def logits(self, h: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        """Logits at the last position from the final block's output, only ``columns`` filled.  # [N, 1, vocab]"""
        z = self.parts.norm(h[:, -1:])  # [N, 1, d]
        head, cap = self.parts.head, self.parts.softcap
        if columns is None:
            return head(z) if not cap else torch.tanh(head(z) / cap) * cap
        w = head.weight.index_select(0, columns)
        b = head.bias.index_select(0, columns) if head.bias is not None else None
        part = torch.nn.functional.linear(z, w, b)  # [N, 1, k]
        if cap:
            part = torch.tanh(part / cap) * cap
        out = torch.zeros(*part.shape[:-1], head.weight.shape[0], dtype=part.dtype, device=part.device)
        return out.index_copy(-1, columns, part)


def _tensors(c: dict):
    for k, v in c.items():
        if isinstance(v, torch.Tensor):
            yield v
        elif k in ("kv", "pe", "allowed"):
            for x in v:
                yield from (x if isinstance(x, tuple) else (x,))


_TABLES: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()
_LRU: OrderedDict[int, CleanRuns] = OrderedDict()


def clean_runs(model, parts: LMParts, seq: int, p0: int, kv_dtype: torch.dtype, *,
               max_bytes: int = DEFAULT_MAX_BYTES) -> CleanRuns:
    """The process-wide table of ``model`` for inputs of ``seq`` tokens and tails from ``p0``.

    Tables of other models/shapes are dropped, least recently used first, while all
    tables together exceed ``max_bytes``.
    """
    tables = _TABLES.setdefault(model, {})
    key = (seq, p0, kv_dtype)
    if key not in tables:
        tables[key] = CleanRuns(model, parts, seq, p0, kv_dtype)
    table = tables[key]
    _LRU.pop(id(table), None)
    _LRU[id(table)] = table
    while sum(t.nbytes for t in _LRU.values()) > max_bytes and len(_LRU) > 1:
        _, old = _LRU.popitem(last=False)
        old._clear()
    return table


def clear_tables() -> None:
    """Forget every clean-run table (frees their memory)."""
    for t in _LRU.values():
        t._clear()
    _LRU.clear()
    _TABLES.clear()
