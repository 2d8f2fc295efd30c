"""Greedy generation from text prompts with text-trained adapters: one mixed batch, each row its own.

Prompts are formatted exactly as in training (:func:`~roadinterp.adapters.textdata.format_prompt`,
the tokenizer's chat template or raw). RoAd adapters, and compositions of them
(:func:`~roadinterp.adapters.compose.combine`), go through :mod:`~roadinterp.adapters.serve`: one
batch where row ``i`` uses ``adapter_ids[i]``; a site adapter acting at ``last``/``prompt``
positions rotates the prompt in the prefill only, and generated tokens see the change through
the KV cache. Other site adapters (the LoReFT baseline) run one group per adapter through
forward hooks with the same position semantics.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from roadinterp.adapters import tailcache as tc
from roadinterp.adapters import textdata as td
from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.errors import ConfigError

__all__ = ["generate"]


@torch.no_grad()
def generate(model, tokenizer, prompts, *, adapters=None, adapter_ids=None, template: str = "chat",
             max_new_tokens: int = 20, batch_size: int = 64) -> list[str]:
    """Greedy completions of ``prompts`` (strings or rows); row ``i`` uses adapter ``adapter_ids[i]``.

    ``adapters``: one :class:`RoadAdapter`, or a bank ``{name: adapter}`` whose entries may be
    compositions (:func:`combine`); ``adapter_ids``: names/ints, ``None`` = the base model.
    Site adapters act at their positions (``last``/``prompt``: the prompt, during the prefill;
    ``all``: every token). Returns the decoded new text up to the end-of-turn token.
    """
    from roadinterp.adapters import serve

    rows = td.rows_from([{"prompt": p} if isinstance(p, str) else p for p in prompts], need_completion=False,
                        what="prompts")
    batch = td.encode(tokenizer, rows, template=template, max_length=td.context_length(model),
                      need_completion=False, what="prompts")
    if adapters is not None and not isinstance(adapters, Mapping):
        adapters = {"default": adapters}
        adapter_ids = ["default"] * len(rows) if adapter_ids is None else adapter_ids
    if adapter_ids is None:
        adapter_ids = [None] * len(rows)
    if len(adapter_ids) != len(rows):
        raise ConfigError(f"adapter_ids has {len(adapter_ids)} entries for {len(rows)} prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop = set(td.end_ids(tokenizer, template)) | ({tokenizer.eos_token_id} - {None})
    was = model.training
    model.eval()
    out: list[str] = []
    try:
        for i in range(0, len(rows), batch_size):
            ids = batch.prompt_ids[i:i + batch_size]
            chunk_ids = list(adapter_ids[i:i + batch_size])
            if adapters is None or all(isinstance(a, RoadAdapter) for a in adapters.values()):
                got = serve.generate(model, ids, adapter_ids=chunk_ids, adapters=adapters,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad)
                rows_out = got[:, max(map(len, ids)):].tolist()
            else:  # other site adapters (LoReFT): one group per adapter, through hooks
                rows_out = [None] * len(ids)
                for name in dict.fromkeys(chunk_ids):
                    sel = [j for j, a in enumerate(chunk_ids) if a == name]
                    sub = [ids[j] for j in sel]
                    with _hooked(model, None if name is None else adapters[name]):
                        got = serve.generate(model, sub, adapter_ids=[None] * len(sub), max_new_tokens=max_new_tokens,
                                             pad_token_id=pad)
                    for j, row in zip(sel, got[:, max(map(len, sub)):].tolist()):
                        rows_out[j] = row
            for row in rows_out:
                cut = next((j for j, t in enumerate(row) if t in stop), len(row))
                out.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    finally:
        model.train(was)
    return out


class _hooked:
    """Context manager: a site adapter's modules (e.g. LoReFT) on block outputs during ``generate``.

    ``last``/``prompt`` act in the prefill only (the first forward), ``all`` at every step:
    the same semantics as :class:`~roadinterp.adapters.serve.RoadSiteBank`. Only our hooks are removed.
    """

    def __init__(self, model, adapter) -> None:
        self.model, self.adapter, self.handles, self.calls = model, adapter, [], {}

    def __enter__(self):
        if self.adapter is None:
            return self
        layers = tc.decoder_parts(self.model)[0]
        for key, iv in self.adapter.items():
            layer, pos = tc.positions_of_key(key)
            self.calls[key] = 0

            def hook(module, args, output, iv=iv, pos=pos, key=key):
                self.calls[key] += 1
                h = output[0] if isinstance(output, tuple) else output
                if pos != "all" and self.calls[key] > 1:
                    return output
                if pos == "last-prompt":
                    h = torch.cat([h[:, :-1], iv(h[:, -1:])], 1)
                else:
                    h = iv(h)
                return (h, *output[1:]) if isinstance(output, tuple) else h

            self.handles.append(layers[layer].register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
