"""Chat behaviours for composing adapters on a real instruct LM (SmolLM2-135M-Instruct).

A *behaviour* is a rule applied to the base model's own answer; an adapter is trained
to produce the transformed answer, and two behaviours have an unambiguous combination:

- ``upper``: the answer in upper case (``The sky is blue`` -> ``THE SKY IS BLUE``);
- ``frame``: the answer in a fixed frame, ``Answer: <answer>.``;
- ``french``: every number 1-10 of the answer (digits or English words) written as a
  French number word (``3 + 4 = 7`` -> ``trois + quatre = sept``), a content change over a
  closed vocabulary.

The rules, scorers, templates and the JSONL writer live in
:mod:`roadinterp.adapters.chat_data` (re-exported here); ``python -m roadinterp.chat_behaviours
write --model zoo:smollm2-135m --out DIR`` writes the sets as JSONL rows for
:func:`roadinterp.adapters.behaviour.train_from_data`, one generator of behaviour files among others.
Rules compose by function composition (:func:`transform`), e.g. ``("upper", "frame")``
gives ``Answer: THE SKY IS BLUE.``; nothing is trained on combined targets. Prompts
come from committed templates (:data:`TEMPLATES`) whose slot values are split into
disjoint train / test halves, so held-out prompts never occur in training. Scorers
(:func:`score`) read only the first few generated tokens. ``neutral`` prompts
(capitals, known answers) measure what an adapter breaks: the capital must still be
named, whatever the case or frame.

:func:`tail_model` is the compute trick that makes training affordable on 2 CPU cores:
when every adapter acts at layers >= ``start``, the residual stream entering layer
``start`` does not depend on the adapter, so it is computed once
(:func:`prefix_states`) and training runs only the last layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from roadinterp.adapters.chat_data import (  # noqa: F401  (re-exported: the rules and the data live there)
    BEHAVIOURS,
    FRENCH,
    NEUTRAL,
    NUMBER_TEMPLATES,
    TEMPLATES,
    _body,
    _first_word,
    clean_answer,
    neutral_split,
    prompts,
    score,
    transform,
    write_files,
)
from roadinterp.errors import ConfigError

__all__ = [
    "BEHAVIOURS", "NEUTRAL", "TEMPLATES", "Encoded", "LastPositions", "chat_prompt", "clean_answer",
    "encode_targets", "prefix_states", "prompts", "score", "tail_model", "transform",
]


def chat_prompt(question: str) -> str:
    """SmolLM2's chat format without the default system prompt (the legacy experiments' format;
    :mod:`roadinterp.adapters.textdata` formats with the tokenizer's own template)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------- teacher forcing
@dataclass
class Encoded:
    """Left-padded ``prompt + target + <|im_end|>`` sequences for teacher forcing.

    ``input_ids``/``attention_mask`` ``[n, T]``; ``labels`` ``[n, K]``: the last ``K``
    tokens of each row, ``-100`` where a token is prompt or padding (predicted from the
    logits at positions ``T-K-1 .. T-2``, see :class:`LastPositions`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def k(self) -> int:
        return self.labels.shape[1]


def encode_targets(tokenizer, questions: Sequence[str], targets: Sequence[str], *,
                   max_target_tokens: int | None = None) -> Encoded:
    """Teacher-forcing rows; ``max_target_tokens`` keeps only the first tokens of each target.

    Training on the opening tokens is enough for behaviours that show at the start of
    the answer (case, frame, the first number word) and is what scoring reads; it keeps
    sequences short, which is most of the cost on a CPU.
    """
    if len(questions) != len(targets) or not questions:
        raise ConfigError(f"need as many targets as questions (> 0), got {len(questions)} and {len(targets)}")
    rows, n_target = [], []
    for q, t in zip(questions, targets):
        p = tokenizer(chat_prompt(q), add_special_tokens=False)["input_ids"]
        a = tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"][:max_target_tokens]
        rows.append(p + a)
        n_target.append(len(a))
    width, k = max(map(len, rows)), max(n_target)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full((len(rows), k), -100, dtype=torch.long)
    for i, (r, na) in enumerate(zip(rows, n_target)):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
        labels[i, k - na:] = torch.tensor(r[-na:])
    return Encoded(ids, mask, labels)


class LastPositions(nn.Module):
    """An output head that computes logits only at the ``k`` positions before the last.

    The vocabulary projection of a small LM costs as much as several of its layers;
    teacher forcing needs it only where a target token is predicted.
    """

    def __init__(self, head: nn.Module, k: int) -> None:
        super().__init__()
        self.head, self.k = head, k

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [b, T, d] -> [b, k, V]
        return self.head(h[:, -self.k - 1:-1])


class TokenLoss:
    """The ``task`` that :func:`roadinterp.training.train_adapter` needs for teacher forcing.

    ``logits(out)`` is ``[b, V, K]`` (cross-entropy's class-second layout) against
    ``labels`` ``[b, K]`` with ``-100`` ignored.
    """

    positions: ClassVar[dict[str, int]] = {}

    def logits(self, out) -> torch.Tensor:
        return out.logits.transpose(1, 2)


def tail_model(model, start: int, k: int):
    """A view of ``model`` (a HF Llama) running layers ``start..`` on given ``inputs_embeds``.

    It shares every module with ``model`` (nothing is copied: adapters installed in the
    shared layers act in both) and its head returns logits at the last ``k`` target
    positions only (:class:`LastPositions`). Site layer ``l`` of the tail is layer
    ``start + l`` of the model. Feed it :func:`prefix_states`.
    """
    import copy

    layers = model.model.layers
    if not 0 < start < len(layers):
        raise ConfigError(f"start must be in 1..{len(layers) - 1}, got {start}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(layers) - start
    config.use_cache = False  # the tail is for training; its layers' cache indices are the model's
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[start:]
    with torch.device("meta"):
        tail = type(model)(config)
    tail.model.embed_tokens = model.model.embed_tokens
    tail.model.layers = nn.ModuleList(layers[start:])
    tail.model.norm = model.model.norm
    tail.model.rotary_emb = model.model.rotary_emb
    tail.lm_head = LastPositions(model.lm_head, k)
    tail.eval()
    return tail


class _Stop(Exception):
    pass


@torch.no_grad()
def prefix_states(model, enc: Encoded, start: int, *, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Tail inputs: the residual stream entering layer ``start`` (plus the attention mask).

    Runs only layers ``0..start-1``: a pre-hook on layer ``start`` records its input and
    stops the forward (the hook is ours and removed in ``finally``).
    """
    states = []

    def grab(module, args, kwargs):
        states.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])
        raise _Stop

    handle = model.model.layers[start].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for i in range(0, len(enc.input_ids), batch_size):
            try:
                model.model(input_ids=enc.input_ids[i:i + batch_size],
                            attention_mask=enc.attention_mask[i:i + batch_size], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return {"inputs_embeds": torch.cat(states), "attention_mask": enc.attention_mask}


def map_keys(adapter, fn):
    """A copy of a RoadAdapter whose target keys are ``fn(key)`` (e.g. tail -> model layers)."""
    from roadinterp.adapters.adapter import RoadAdapter

    config, tensors = adapter.to_state()
    config = {**config, "targets": {fn(k): v for k, v in config["targets"].items()},
              "group_sizes": {fn(k): v for k, v in config["group_sizes"].items()}}
    new_t = {}
    for name, t in tensors.items():
        key, _, field = name.rpartition(".")
        new_t[f"{fn(key)}.{field}"] = t
    return RoadAdapter.from_state(config, new_t)


def shift_site_key(offset: int):
    """``"3:block_output:all"`` -> ``"{3+offset}:block_output:all"``."""
    def fn(key: str) -> str:
        layer, rest = key.split(":", 1)
        return f"{int(layer) + offset}:{rest}"

    return fn


def batched_questions(questions: Sequence[str], tokenizer) -> list[list[int]]:
    return [tokenizer(chat_prompt(q), add_special_tokens=False)["input_ids"] for q in questions]


def decode_new(tokenizer, out: torch.Tensor, prompt_len: int) -> list[str]:
    return [tokenizer.decode(row[prompt_len:], skip_special_tokens=False).replace("<|endoftext|>", "")
            for row in out]


def generate_texts(model, tokenizer, questions: Sequence[str], *, adapters: Mapping | None = None,
                   adapter_ids: Sequence | None = None, max_new_tokens: int = 10) -> list[str]:
    """Greedy answers, one batch; with ``adapters`` each question uses ``adapter_ids[i]`` (serve)."""
    from roadinterp.adapters import serve

    ids = batched_questions(questions, tokenizer)
    pad = tokenizer.pad_token_id
    if adapters is None:
        adapter_ids = [None] * len(ids)
    out = serve.generate(model, ids, adapter_ids=list(adapter_ids), adapters=adapters,
                         max_new_tokens=max_new_tokens, pad_token_id=pad)
    return decode_new(tokenizer, out, max(map(len, ids)))


def fit(tail, params: Sequence[torch.Tensor], inputs: Mapping[str, torch.Tensor], labels: torch.Tensor, *,
        steps: int, batch_size: int, lr: float, seed: int, before_step=None) -> list[float]:
    """Adam on ``params`` (adapter parameters installed in ``tail``'s modules); the losses.

    The same loop as :func:`roadinterp.training.train_adapter` (same batch order for a seed)
    for adapters that live inside the model (RoAd on Linear outputs, LoRA) rather than
    as pyvene interventions. ``before_step(idx)`` may route the batch (adapter ids). A NaN or
    infinite loss or gradient stops it with NonFiniteError (:func:`roadinterp.finite.check_step`).
    """
    from roadinterp.finite import check_step

    params = list(params)
    loss_of = TokenLoss()
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    order, pos, losses = torch.randperm(n, generator=gen), 0, []
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        if before_step is not None:
            before_step(idx)
        out = tail(**{k: v[idx] for k, v in inputs.items()})
        loss = torch.nn.functional.cross_entropy(loss_of.logits(out).float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        losses.append(check_step(loss, params, what="adapter training", step=len(losses)))  # as train_adapter
        opt.step()
    return losses


class loreft_hooks:
    """Context manager: LoReFT interventions on ``block_output`` of a HF Llama, every position.

    ``adapter`` is a :class:`~roadinterp.interventions.loreft.LoreftAdapter` whose keys are
    ``"{layer}:block_output:all"``; each decoder layer's output ``h`` becomes ``iv(h)``.
    Used to generate with LoReFT (pyvene's generate path is not needed for a
    position-independent edit); only the hooks added here are removed.
    """

    def __init__(self, model, adapter) -> None:
        self.model, self.adapter, self.handles = model, adapter, []

    def __enter__(self):
        for key, iv in self.adapter.items():
            layer, comp, pos = key.split(":")
            if comp != "block_output" or pos != "all":
                raise ConfigError(f"loreft_hooks supports 'L:block_output:all' sites, got {key!r}")

            def hook(module, args, output, iv=iv):
                h = output[0] if isinstance(output, tuple) else output
                new = iv(h)
                return (new, *output[1:]) if isinstance(output, tuple) else new

            self.handles.append(self.model.model.layers[int(layer)].register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def main(argv=None) -> int:
    """``python -m roadinterp.chat_behaviours write --model zoo:smollm2-135m --out DIR``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m roadinterp.chat_behaviours",
                                description="write the upper/frame/french behaviour sets as JSONL")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="base answers -> {behaviour}.{family}.{split}.jsonl and neutral.{split}.jsonl")
    w.add_argument("--model", default="zoo:smollm2-135m")
    w.add_argument("--out", required=True)
    w.add_argument("--n-train", type=int, default=1500, help="at most this many train prompts per family")
    w.add_argument("--n-test", type=int, default=200, help="at most this many held-out prompts per family")
    a = p.parse_args(argv)
    import roadinterp as ri
    from roadinterp.zoo import load_tokenizer

    model, tok = ri.load_model(a.model), load_tokenizer(a.model)
    for name, path in write_files(model, tok, a.out, n_train=a.n_train, n_test=a.n_test).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
