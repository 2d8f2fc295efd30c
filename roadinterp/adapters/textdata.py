"""Behaviours from the user's own data: JSONL rows -> chat-formatted, loss-masked token rows.

A *behaviour* is taught by examples, one JSON object per line, in either form::

    {"prompt": "What is the opposite of hot?", "completion": "COLD"}
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "COLD"}]}

In the ``messages`` form the last message must be the assistant's: it is the
completion, everything before it the prompt. Prompts are formatted by the tokenizer's
own chat template (``apply_chat_template(..., add_generation_prompt=True)``), so the
adapter learns on exactly the text the model sees when it is served; ``template="raw"``
uses the prompt text as is (base models without a template). The completion is followed
by the template's end-of-turn token (``<|im_end|>`` for ChatML) or, raw, by the EOS
token, and the loss covers only those completion tokens (:class:`TextBatch.labels`).

Everything is checked before any training: :func:`read_jsonl` names the 1-based row of
a malformed line, :func:`encode` refuses an empty completion, a prompt that does not fit
the model's context and a model without a tokenizer, each with one message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from roadinterp import bounds
from roadinterp.errors import ConfigError, FileFormatError, TokenizerError

Template = Literal["chat", "raw"]
TEMPLATES: tuple[str, ...] = ("chat", "raw")
MAX_JSONL_BYTES = 256 * 2**20  # a behaviour file is text examples; refuse anything larger before reading it

__all__ = ["TEMPLATES", "TextBatch", "TextRow", "encode", "format_prompt", "read_jsonl", "rows_from", "write_jsonl"]


@dataclass(frozen=True)
class TextRow:
    """One example: the chat ``messages`` before the answer (or a raw prompt) and the answer."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), the last one the user's
    completion: str

    @property
    def prompt(self) -> str:
        """The text of the last prompt message (what a ``{"prompt": ...}`` row gave)."""
        return self.messages[-1][1]

    def to_json(self) -> dict:
        if len(self.messages) == 1 and self.messages[0][0] == "user":
            return {"prompt": self.prompt, "completion": self.completion}
        return {"messages": [{"role": r, "content": c} for r, c in self.messages]
                + [{"role": "assistant", "content": self.completion}]}


def _row(obj, where: str, *, need_completion: bool) -> TextRow:
    if not isinstance(obj, dict):
        raise FileFormatError(f"{where}: expected a JSON object with 'prompt' and 'completion' or 'messages', "
                              f"got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise FileFormatError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
        pairs = []
        for j, m in enumerate(msgs, 1):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise FileFormatError(f"{where}: message {j} must be an object with string 'role' and 'content', "
                                      f"got {m!r:.80}")
            pairs.append((m["role"], m["content"]))
        completion = ""
        if pairs[-1][0] == "assistant":
            completion = pairs.pop()[1]
        elif need_completion:
            raise FileFormatError(f"{where}: the last message must be the assistant's (the completion), "
                                  f"got role {pairs[-1][0]!r}")
        if not pairs:
            raise FileFormatError(f"{where}: 'messages' has no prompt message before the assistant's answer")
    elif "prompt" in obj:
        prompt, completion = obj["prompt"], obj.get("completion", "")
        if not isinstance(prompt, str):
            raise FileFormatError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
        if "completion" not in obj and need_completion:
            raise FileFormatError(f"{where}: missing field 'completion'")
        if not isinstance(completion, str):
            raise FileFormatError(f"{where}: 'completion' must be a string, got {type(completion).__name__}")
        pairs = [("user", prompt)]
    else:
        raise FileFormatError(f"{where}: needs 'prompt' and 'completion', or 'messages'; got keys {sorted(obj)}")
    if not pairs[-1][1].strip():
        raise FileFormatError(f"{where}: the prompt is empty")
    if need_completion and not completion.strip():
        raise FileFormatError(f"{where}: the completion is empty; every training row needs a completion to learn")
    return TextRow(tuple(pairs), completion)


def rows_from(items: Iterable, *, need_completion: bool = True, what: str = "rows") -> list[TextRow]:
    """Rows from Python objects: TextRows, ``(prompt, completion)`` pairs or JSON-like dicts."""
    out = []
    for i, obj in enumerate(items, 1):
        if isinstance(obj, TextRow):
            row = obj
            if need_completion and not row.completion.strip():
                raise FileFormatError(f"{what} row {i}: the completion is empty")
        elif isinstance(obj, (tuple, list)) and len(obj) == 2:
            row = _row({"prompt": obj[0], "completion": obj[1]}, f"{what} row {i}", need_completion=need_completion)
        else:
            row = _row(obj, f"{what} row {i}", need_completion=need_completion)
        out.append(row)
    if not out:
        raise FileFormatError(f"{what}: no rows")
    return out


def read_jsonl(path: str | os.PathLike, *, need_completion: bool = True) -> list[TextRow]:
    """Validated rows of a JSONL file; FileFormatError naming the first bad row (1-based).

    Blank lines are skipped (they keep their number). ``need_completion=False`` reads
    prompt-only files (``--preserve``): the completion may be absent.
    """
    from roadinterp.io import read_text_bounded

    p = Path(path)
    text = read_text_bounded(p, str(p), limit=MAX_JSONL_BYTES, kind="JSONL")
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p} row {i}"
        if len(line) > bounds.MAX_JSON_BYTES:
            raise FileFormatError(f"{where}: the line is longer than {bounds.format_bytes(bounds.MAX_JSON_BYTES)}")
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError) as e:
            raise FileFormatError(f"{where} is not valid JSON ({e})") from None
        rows.append(_row(obj, where, need_completion=need_completion))
    if not rows:
        raise FileFormatError(f"{p} holds no rows (an empty file?)")
    return rows


def write_jsonl(path: str | os.PathLike, rows: Sequence[TextRow | Mapping]) -> Path:
    """Write rows as JSONL atomically (one object per line, UTF-8)."""
    from roadinterp.io import write_text_atomic

    lines = [json.dumps(r.to_json() if isinstance(r, TextRow) else dict(r), ensure_ascii=False) for r in rows]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, "\n".join(lines) + "\n", mode=0o644)


# ------------------------------------------------------------------ formatting
def _check_tokenizer(tokenizer, template: str) -> None:
    if template not in TEMPLATES:
        raise ConfigError(f"template must be one of {TEMPLATES}, got {template!r}")
    if tokenizer is None:
        raise TokenizerError("this model has no tokenizer (a toy zoo model?); training from text needs a language "
                             "model with a tokenizer, e.g. zoo:smollm2-135m or a local HF directory")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise TokenizerError("the tokenizer has no chat template; pass template='raw' (--template raw) for a base model")


def format_prompt(tokenizer, row: TextRow, template: Template = "chat") -> str:
    """The prompt text the model sees: the chat template with the assistant's turn opened, or raw."""
    _check_tokenizer(tokenizer, template)
    if template == "raw":
        return "\n".join(c for _, c in row.messages)
    msgs = [{"role": r, "content": c} for r, c in row.messages]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def end_ids(tokenizer, template: Template = "chat") -> list[int]:
    """Tokens that close a completion: the template's end-of-turn token, or EOS (raw); may be empty."""
    _check_tokenizer(tokenizer, template)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if template == "raw":
        return eos
    probe = "xyzzy"
    base = [{"role": "user", "content": "hi"}]
    head = tokenizer.apply_chat_template(base, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(base + [{"role": "assistant", "content": probe}], tokenize=False)
    if not full.startswith(head) or probe not in full[len(head):]:
        return eos
    tail = full[len(head):].split(probe, 1)[1]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = _ids(tokenizer, tail, False)
    for j, t in enumerate(ids):
        if t in special:
            return ids[: j + 1]
    return eos


@dataclass
class TextBatch:
    """Token rows for teacher forcing, loss on completion tokens only.

    ``prompt_ids[i]`` (formatted prompt) and ``completion_ids[i]`` (completion + end token)
    are lists of ints; :meth:`padded` lays them out as one tensor.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    rows: list[TextRow]
    template: str

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def padded(self, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """``(input_ids, attention_mask, labels, P)``: prompts left-padded to ``P`` columns, completions
        right-padded after them; ``labels`` ``[n, T]`` is ``-100`` except at completion tokens.

        The last prompt token of every row sits at column ``P - 1`` (the ``last-prompt`` position).
        """
        n = len(self)
        p_width = max(map(len, self.prompt_ids))
        c_width = max(map(len, self.completion_ids))
        ids = torch.full((n, p_width + c_width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (p, c) in enumerate(zip(self.prompt_ids, self.completion_ids)):
            ids[i, p_width - len(p):p_width] = torch.tensor(p)
            ids[i, p_width:p_width + len(c)] = torch.tensor(c, dtype=torch.long)
            mask[i, p_width - len(p):p_width + len(c)] = 1
            labels[i, p_width:p_width + len(c)] = torch.tensor(c, dtype=torch.long)
        return ids, mask, labels, p_width


def context_length(model) -> int | None:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def encode(tokenizer, rows: Sequence[TextRow], *, template: Template = "chat", max_length: int | None = None,
           max_completion_tokens: int | None = None, need_completion: bool = True, what: str = "rows") -> TextBatch:
    """Tokenise rows; refuse (before any training) what cannot be trained.

    ``max_length``: the model's context (:func:`context_length`); a row whose prompt (or prompt
    plus completion) is longer raises ConfigError naming the row. ``max_completion_tokens`` keeps
    only the first tokens of each completion (the end token is then dropped too).
    """
    _check_tokenizer(tokenizer, template)
    if not rows:
        raise FileFormatError(f"{what}: no rows")
    end = end_ids(tokenizer, template)
    prompts, completions = [], []
    for i, row in enumerate(rows, 1):
        p = _ids(tokenizer, format_prompt(tokenizer, row, template), template == "raw")
        c = _ids(tokenizer, row.completion, False) if row.completion else []
        if need_completion and not c:
            raise FileFormatError(f"{what} row {i}: the completion {row.completion!r} has no tokens")
        c = c + end if c else []
        if max_completion_tokens is not None:
            c = c[:max_completion_tokens]
        if not p:
            raise FileFormatError(f"{what} row {i}: the prompt has no tokens")
        if max_length is not None and len(p) >= max_length:
            raise ConfigError(f"{what} row {i}: the prompt is {len(p)} tokens but the model's context is "
                              f"{max_length}; shorten it or drop the row")
        if max_length is not None and len(p) + len(c) > max_length:
            raise ConfigError(f"{what} row {i}: prompt + completion are {len(p) + len(c)} tokens but the model's "
                              f"context is {max_length}; shorten the completion")
        prompts.append(p)
        completions.append(c)
    return TextBatch(prompts, completions, list(rows), template)
