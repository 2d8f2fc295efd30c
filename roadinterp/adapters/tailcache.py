"""Teacher forcing through the tail of a decoder LM, computing once what an adapter cannot change.

An adapter at the output of block ``L`` (the residual stream) changes nothing below it:
the residual stream entering block ``L + 1`` is the same with or without it, so
:func:`prepare` computes it once and training runs only blocks ``L + 1 ..``. When the
adapter acts at the **last prompt token only** (``positions="last-prompt"``, the RoAd
paper's composition protocol), causal attention adds a second saving: every earlier
position is untouched at *every* layer, so the keys and values of prompt positions
``0 .. P-2`` are computed once too (per distinct prompt) and each step runs the tail on
the last prompt token and the completion only — about a third of the tokens.

Layout of a :class:`TailData`: prompts left-padded to ``P`` columns (the last prompt
token at column ``P - 1`` in every row), completions right-padded after them, the
next-token target of each column in ``targets`` (-100 = no loss). Positions are
padding-aware (``cumsum(mask) - 1``), as in HF ``generate``, so training sees the same
rotary positions as serving. Works for HF Llama-style decoders (``model.model.layers``,
``norm``, ``rotary_emb``, ``lm_head``); the forward is a plain loop over the decoder
layers with our own 4D mask and key/value prefix, checked against the full model in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from roadinterp.errors import ConfigError

POSITIONS: tuple[str, ...] = ("last-prompt", "prompt", "all")
_KEY_POSITIONS = {"last-prompt": "last", "prompt": "prompt", "all": "all"}

__all__ = ["POSITIONS", "TailData", "decoder_parts", "positions_of_key", "prepare", "run_layers", "site_key",
           "tail_hidden"]


def site_key(layer: int, positions: str) -> str:
    """The adapter target key of a residual-stream site: ``"15:block_output:last"`` for last-prompt."""
    if positions not in POSITIONS:
        raise ConfigError(f"positions must be one of {POSITIONS}, got {positions!r}")
    return f"{int(layer)}:block_output:{_KEY_POSITIONS[positions]}"


def positions_of_key(key: str) -> tuple[int, str]:
    """``"15:block_output:last"`` -> ``(15, "last-prompt")``; ConfigError for other sites."""
    try:
        layer, comp, pos = key.split(":")
        layer = int(layer)
    except ValueError:
        raise ConfigError(f"site key must look like 'layer:block_output:last|prompt|all', got {key!r}") from None
    back = {v: k for k, v in _KEY_POSITIONS.items()}
    if comp != "block_output" or pos not in back:
        raise ConfigError(f"text adapters act on 'block_output' at last|prompt|all positions, got {key!r}")
    return layer, back[pos]


def decoder_parts(model):
    """``(layers, norm, rotary_emb, embed_tokens, lm_head)`` of a HF Llama-style causal LM."""
    inner = getattr(model, "model", None)
    parts = [getattr(inner, n, None) for n in ("layers", "norm", "rotary_emb", "embed_tokens")]
    head = getattr(model, "lm_head", None)
    if inner is None or any(p is None for p in parts) or head is None:
        raise ConfigError(f"training from text supports HF Llama-style decoders (model.model.layers, norm, rotary_emb, "
                          f"lm_head: Llama, Qwen2, SmolLM2, ...), not {type(model).__name__}")
    return (*parts, head)


class _Prefix:
    """A key/value prefix in the shape of an HF cache: ``update`` records (prepare) or prepends (training)."""

    def __init__(self, kv: dict | None = None) -> None:
        self.record = kv is None
        self.kv = {} if kv is None else kv

    def update(self, k, v, layer_idx, *args, **kwargs):
        if self.record:
            self.kv[layer_idx] = (k, v)
            return k, v
        pk, pv = self.kv[layer_idx]
        return torch.cat([pk, k], 2), torch.cat([pv, v], 2)


def _mask4d(key_mask: torch.Tensor, q_cols: torch.Tensor, dtype) -> torch.Tensor:
    """Additive mask ``[b, 1, q, K]``: causal over absolute columns and padding-aware.

    A large finite negative (not -inf) keeps fully padded query rows finite.
    """
    k_cols = torch.arange(key_mask.shape[1], device=key_mask.device)
    ok = key_mask[:, None, None, :].bool() & (k_cols[None, None, None, :] <= q_cols[None, None, :, None])
    return torch.zeros(ok.shape, dtype=dtype, device=key_mask.device).masked_fill(~ok, torch.finfo(dtype).min)


def run_layers(model, h: torch.Tensor, *, first: int, stop: int | None = None, key_mask: torch.Tensor,
               q_cols: torch.Tensor, position_ids: torch.Tensor, prefix: _Prefix | None = None,
               after: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Decoder layers ``first .. stop-1`` on ``h`` ``[b, q, d]`` (the query columns ``q_cols`` of ``key_mask``).

    ``after(i, h)`` runs after layer ``i`` (where adapters act). Returns the hidden states before the norm.
    """
    layers = decoder_parts(model)[0]
    stop = len(layers) if stop is None else stop
    mask = _mask4d(key_mask, q_cols, h.dtype)
    pe = decoder_parts(model)[2](h, position_ids=position_ids)
    for i in range(first, stop):
        h = layers[i](h, attention_mask=mask, position_embeddings=pe, position_ids=position_ids, cache=prefix,
                      use_cache=prefix is not None)
        if isinstance(h, tuple):
            h = h[0]
        if after is not None:
            h = after(i, h)
    return h


@dataclass
class TailData:
    """Tail inputs for teacher forcing (see the module docstring for the layout)."""

    start: int  # first tail layer (= site layer + 1)
    positions: str  # what the cached part allows: "last-prompt" caches prompt keys/values too
    resid: torch.Tensor  # [n, t, d] residual stream entering `start` at the run columns
    key_mask: torch.Tensor  # [n, T] attention mask over every column (cached prefix + run)
    position_ids: torch.Tensor  # [n, t] rotary positions of the run columns
    q_cols: torch.Tensor  # [t] absolute column of each run column
    targets: torch.Tensor  # [n, t] next token predicted at each run column, -100 = no loss
    prompt_width: int  # P: the last prompt token is column P - 1
    kv: dict | None  # layer -> (k, v) [u, heads, P-1, hd] per distinct prompt (last-prompt only)
    prompt_row: torch.Tensor  # [n] row of `kv` holding each row's prompt

    def __len__(self) -> int:
        return self.resid.shape[0]

    def subset(self, idx) -> TailData:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return replace(self, resid=self.resid[idx], key_mask=self.key_mask[idx], position_ids=self.position_ids[idx],
                       targets=self.targets[idx], prompt_row=self.prompt_row[idx])

    def prompt_cols(self) -> torch.Tensor:
        """``[t]`` bool: which run columns are prompt positions."""
        return self.q_cols < self.prompt_width

    def prefix(self, idx) -> _Prefix | None:
        if self.kv is None:
            return None
        rows = self.prompt_row[idx]
        return _Prefix({layer: (k[rows], v[rows]) for layer, (k, v) in self.kv.items()})


@torch.no_grad()
def prepare(model, batch, *, start: int, positions: str, pad_id: int | None = None, chunk: int = 16) -> TailData:
    """Encode a :class:`~roadinterp.adapters.textdata.TextBatch` for training blocks ``start ..``.

    ``positions``: the widest positions any adapter of the run acts at; ``"last-prompt"``
    also caches the prompt's keys and values (one copy per distinct prompt).
    """
    layers, *_ = decoder_parts(model)
    embed = decoder_parts(model)[3]
    if positions not in POSITIONS:
        raise ConfigError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if not 0 < start <= len(layers):
        raise ConfigError(f"the tail must start at a layer in 1..{len(layers)}, got {start}")
    if pad_id is None:
        pad_id = 0
    ids, mask, labels, p_width = batch.padded(pad_id)
    n, width = ids.shape
    t_in = width - 1 if width > p_width else width  # the last completion token predicts nothing
    targets = torch.full((n, t_in), -100, dtype=torch.long)
    targets[:, : width - 1] = labels[:, 1:]
    ids, mask = ids[:, :t_in], mask[:, :t_in]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cols = torch.arange(t_in)
    resid = []
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        h = embed(ids[sl])
        resid.append(run_layers(model, h, first=0, stop=start, key_mask=mask[sl], q_cols=cols, position_ids=pos[sl]))
    resid = torch.cat(resid)
    kv, prompt_row = None, torch.arange(n)
    cut = p_width - 1
    if positions == "last-prompt" and cut > 0:
        keys = [tuple(p) for p in batch.prompt_ids]
        first_of: dict = {}
        for r, k in enumerate(keys):
            first_of.setdefault(k, r)
        uniq = torch.tensor(list(first_of.values()))
        slot = {k: j for j, k in enumerate(first_of)}
        prompt_row = torch.tensor([slot[k] for k in keys])
        parts: dict[int, list] = {}
        for i in range(0, len(uniq), chunk):
            rows = uniq[i:i + chunk]
            rec = _Prefix()
            run_layers(model, resid[rows, :cut], first=start, key_mask=mask[rows, :cut], q_cols=cols[:cut],
                       position_ids=pos[rows, :cut], prefix=rec)
            for layer, kvs in rec.kv.items():
                parts.setdefault(layer, []).append(kvs)
        kv = {layer: (torch.cat([a for a, _ in ps]), torch.cat([b for _, b in ps])) for layer, ps in parts.items()}
        return TailData(start, positions, resid[:, cut:].contiguous(), mask, pos[:, cut:].contiguous(), cols[cut:],
                        targets[:, cut:].contiguous(), p_width, kv, prompt_row)
    return TailData(start, positions, resid, mask, pos, cols, targets, p_width, None, prompt_row)


def tail_hidden(model, data: TailData, idx, after: Callable[[int, torch.Tensor], torch.Tensor] | None = None):
    """Final hidden states ``[b, t, d]`` (after the norm) of rows ``idx``; ``after(i, h)`` acts after layer ``i``.

    ``after(start - 1, h)`` is called first, on the cached residual stream: the site at
    the output of block ``start - 1``.
    """
    norm = decoder_parts(model)[1]
    h = data.resid[idx]
    if after is not None:
        h = after(data.start - 1, h)
    h = run_layers(model, h, first=data.start, key_mask=data.key_mask[idx], q_cols=data.q_cols,
                   position_ids=data.position_ids[idx], prefix=data.prefix(idx), after=after)
    return norm(h)
