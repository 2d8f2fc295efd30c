"""Prompt tasks for pretrained language models, on the model's own tokenizer.

A :class:`PromptTask` writes each example as text pieces from a template (``"When"``,
``" Mary"``, ``" and"``, ...), some of which are *named* (their last token is a named
position, such as ``"io"``). It has no vocabulary of its own: :meth:`PromptTask.bind`
returns a copy tied to a tokenizer, which

* checks that every answer and every entity at a named position is **one token** (else
  one :class:`~roadinterp.errors.TokenizerError` naming the first multi-token string);
* takes the answer ids from the tokenizer (label ``i`` is ``answer_tokens[i]``);
* left-pads every prompt to the longest prompt of the task, with ``attention_mask`` and
  ``position_ids``, so a row computes exactly what it computes unpadded, ``"last"`` is
  every row's last real token and named positions come per row (``encode_rows``);
* with ``model=``, keeps only the candidate prompts the model answers correctly (top-1
  over the full vocabulary), per split, and records ``kept`` / ``base_accuracy``. Bases
  and sources are both drawn from the kept prompts, so IIA is measured on examples the
  model gets right, as in MIB;
* writes each prompt in the model's **chat format** when its tokenizer has a chat template
  (``template="auto"``, the default; ``"chat"`` insists, ``"raw"`` opts out): the user turn
  is an instruction (:attr:`PromptTask.chat_instruction`) and the assistant's answer is
  pre-filled with the prompt, so the model continues it inside its own turn and the answer
  tokens stay what they are in the raw form (MCQA puts its question in the user turn and
  pre-fills ``Answer:``, :meth:`PromptTask._chat_split`). The raw form starts with the
  tokens the tokenizer puts before any text (Gemma's ``<bos>``; none for SmolLM2).

Each split is a fixed pool of ``pool_size`` candidate prompts; train and test pools are
built from disjoint entities (names, cities, number pairs), so held-out IIA is held out.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from roadinterp.errors import ConfigError, TokenizerError
from roadinterp.io import write_text_atomic
from roadinterp.tasks.base import SPLITS, Raw, TokenTask, take

Piece = tuple[str, "str | None"]  # (text, name of the position at its last token, or None)
TEMPLATES: tuple[str, ...] = ("auto", "chat", "raw")  # how prompts are written (PromptTask.bind)
_USER, _ANSWER = "\ue000user\ue000", "\ue000answer\ue000"  # stand-ins located in the rendered chat template


class PromptTask(TokenTask):
    """A task on a pretrained LM. Subclass: ``_pool`` (candidate raw rows of a split),
    ``_pieces`` (one row's prompt as text pieces), ``_evaluate`` as for every task; set
    ``answer_tokens`` (answer strings, e.g. ``" Mary"``) and ``row_positions`` (names of
    the named pieces). :func:`held_out` splits entities between train and test pools;
    :func:`template_pieces` turns a ``"{slot}"`` template into pieces."""

    needs_tokenizer: ClassVar[bool] = True
    answer_tokens: ClassVar[list[str]] = []  # answer strings; each must be one token of the bound tokenizer
    row_positions: ClassVar[tuple[str, ...]] = ()  # named pieces: positions that differ per row
    single_token_pieces: ClassVar[tuple[str, ...]] = ()  # named pieces that must be one token (entities)
    pool_size: ClassVar[int] = 256  # candidate prompts per split before filtering by the model
    min_kept: ClassVar[int] = 8  # fewer kept prompts than this in a split is an error
    batch_size: ClassVar[int] = 64  # prompts per forward when filtering
    chat_instruction: ClassVar[str] = "Continue the text."  # the user turn of the chat form

    def __init__(self) -> None:
        self.positions = {"last": -1, **{p: None for p in self.row_positions}}  # type: ignore[misc]
        self.tokenizer: Any = None
        self.seq_len: int | None = None  # every encoded prompt is left-padded to this length
        self.kept: dict[str, np.ndarray] | None = None  # pool indices the model answers correctly
        self.stats: dict[str, dict[str, float]] = {}  # per split: n, kept, base_accuracy (vocab / answers)
        self._pools: dict[str, Raw] = {}
        self._ids: dict[str, list[int]] = {}
        self.template = "raw"  # the form prompts are written in once bound: "chat" or "raw"
        self._frame: tuple[str, str] | None = None  # chat form: text before the user turn, between the turns
        self._prefix: list[int] = []  # raw form: the ids the tokenizer puts before any text (a BOS)

    # ----- hooks -------------------------------------------------------------------------
    def _pool(self, split: str) -> Raw:
        """Every candidate raw row of ``split`` (deterministic; at most ``pool_size`` rows)."""
        raise NotImplementedError

    def _pieces(self, raw: Raw, i: int) -> list[Piece]:
        """Row ``i`` of ``raw`` as text pieces; concatenated, they are the prompt."""
        raise NotImplementedError

    def _chat_split(self, pieces: list[Piece]) -> tuple[list[Piece], list[Piece]]:
        """(user turn, pre-filled start of the assistant's answer) of one prompt in chat form.
        Default: :attr:`chat_instruction` asks, the whole prompt is the answer's start."""
        return [(self.chat_instruction, None)], pieces

    # ----- binding -----------------------------------------------------------------------
    @property
    def bound(self) -> bool:
        return self.tokenizer is not None

    def pool(self, split: str) -> Raw:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if split not in self._pools:
            self._pools[split] = self._pool(split)
        return self._pools[split]

    def bind(self, *, tokenizer: Any = None, model: Any = None,
             cache_dir: str | os.PathLike | None = None, template: str = "auto") -> PromptTask:
        """A copy of this task on ``tokenizer``; with ``model``, filtered to what it answers right.

        ``template``: ``"auto"`` writes prompts in the tokenizer's chat format when it has a chat
        template, else raw; ``"chat"`` requires one; ``"raw"`` never uses it.
        Filtering runs the model on every candidate prompt (about a minute for SmolLM2 on
        this CPU); with ``cache_dir`` the result is stored under a hash of the prompts' token
        ids (hence the tokenizer and the form), the labels and the model's config and weights, and reused.
        """
        if tokenizer is None:
            raise TokenizerError(f"task {self.name!r} reads a pretrained model's own tokenizer and this model has "
                                 "none; use a model that ships one (zoo:smollm2-135m, an HF directory or a .gguf file)")
        if template not in TEMPLATES:
            raise ConfigError(f"template must be one of {', '.join(TEMPLATES)}, got {template!r}")
        new = copy.copy(self)
        new.positions = dict(self.positions)
        new.tokenizer, new.kept, new.stats, new._ids = tokenizer, None, {}, {}
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if template == "chat" and not has_chat:
            raise TokenizerError(f"task {self.name!r}: template='chat' but this tokenizer has no chat template; "
                                 "use template='raw' (or 'auto')")
        new.template = "chat" if has_chat and template != "raw" else "raw"
        new._frame = _chat_frame(tokenizer, self.name) if new.template == "chat" else None
        new._prefix = [] if new.template == "chat" else _special_prefix(tokenizer)
        for text in self.answer_tokens:
            new._single(text, "answer")
        if model is not None:
            vocab = getattr(getattr(model, "config", None), "vocab_size", None)
            if vocab is not None and len(tokenizer) > int(vocab):
                raise TokenizerError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                                     f"{vocab}: they do not belong together; load the tokenizer that ships with the model")
        lengths = []
        for split in SPLITS:
            pool = new.pool(split)
            rows = [new._row_ids(pool, i) for i in range(_n(pool))]
            lengths += [len(r[0]) for r in rows]
        new.seq_len = max(lengths)
        new._padded = min(lengths) != max(lengths)
        if model is not None:
            new._filter_cached(model, cache_dir)
        return new

    def _tokens(self, text: str) -> list[int]:
        if text not in self._ids:
            self._ids[text] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._ids[text]

    def _single(self, text: str, what: str) -> int:
        ids = self._tokens(text)
        if len(ids) != 1:
            raise TokenizerError(f"task {self.name!r}: {what} {text!r} is {len(ids)} tokens for this tokenizer "
                                 f"({ids}); the task needs it as one token: use a tokenizer where it is one, or drop it "
                                 "from the task's table")
        return ids[0]

    def _framed(self, raw: Raw, i: int) -> list[Piece]:
        """Row ``i``'s pieces in the bound form (chat: inside the template's turns)."""
        pieces = self._pieces(raw, i)
        if self._frame is None:
            return pieces
        user, answer = self._chat_split(pieces)
        return [(self._frame[0], None), *user, (self._frame[1], None), *answer]

    def _row_ids(self, raw: Raw, i: int) -> tuple[list[int], dict[str, int]]:
        ids: list[int] = list(self._prefix)
        named: dict[str, int] = {}
        for text, name in self._framed(raw, i):
            if name in self.single_token_pieces:
                ids.append(self._single(text, f"entity at position {name!r}"))
            else:
                ids.extend(self._tokens(text))
            if name is not None:
                named[name] = len(ids) - 1
        return ids, named

    # ----- encoding ----------------------------------------------------------------------
    def _require_bound(self) -> None:
        if not self.bound:
            raise ConfigError(f"task {self.name!r} is not bound to a tokenizer; use task.bind(tokenizer=..., "
                              "model=...) (roadinterp.search and the CLI bind it to the model's own tokenizer)")

    def encode_rows(self, raw: Raw) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray] | None]:
        """Left-padded ``input_ids`` (+ ``attention_mask``, ``position_ids`` when lengths differ) and
        the per-row index of every named position."""
        self._require_bound()
        n, seq = _n(raw), int(self.seq_len)  # type: ignore[arg-type]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = np.full((n, seq), pad, dtype=np.int64)
        mask = np.zeros((n, seq), dtype=np.int64)
        named = {p: np.zeros(n, dtype=np.int64) for p in self.row_positions}
        for i in range(n):
            row, where = self._row_ids(raw, i)
            off = seq - len(row)
            if off < 0:
                raise ConfigError(f"task {self.name!r}: a prompt of {len(row)} tokens is longer than the "
                                  f"task's {seq}; every prompt must come from the task's pools")
            ids[i, off:], mask[i, off:] = row, 1
            for p, j in where.items():
                named[p][i] = off + j
        kwargs = {"input_ids": torch.as_tensor(ids)}
        if self._padded:
            kwargs["attention_mask"] = torch.as_tensor(mask)
            kwargs["position_ids"] = torch.as_tensor(np.clip(mask.cumsum(1) - 1, 0, None))
        return kwargs, named

    def encode(self, raw: Raw) -> dict[str, torch.Tensor]:
        return self.encode_rows(raw)[0]

    def prompts(self, raw: Raw) -> list[str]:
        """The text of every row (for reading and debugging)."""
        return ["".join(t for t, _ in (self._framed(raw, i) if self.bound else self._pieces(raw, i)))
                for i in range(_n(raw))]

    @property
    def answer_ids(self) -> list[int]:
        self._require_bound()
        return [self._single(t, "answer") for t in self.answer_tokens]

    def decode(self, ids: Any) -> str | list[str]:
        self._require_bound()
        ids_t = torch.as_tensor(ids)
        if ids_t.dim() == 2:
            return [self.decode(r) for r in ids_t]  # type: ignore[misc]
        return self.tokenizer.decode(ids_t.tolist())

    # ----- sampling from the (kept) pools -------------------------------------------------
    def _indices(self, split: str) -> np.ndarray:
        if self.kept is not None:
            return self.kept[split]
        return np.arange(_n(self.pool(split)))

    def _sample(self, n: int, rng: np.random.Generator, split: str) -> Raw:
        return take(self.pool(split), rng.choice(self._indices(split), size=n))

    # ----- filtering by the model ---------------------------------------------------------
    def _filter_cached(self, model, cache_dir) -> None:
        if cache_dir is None:
            return self._filter(model)
        path = Path(cache_dir) / f"{self.name}-{self._filter_key(model)}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            self.kept = {s: np.asarray(saved["kept"][s], dtype=np.int64) for s in SPLITS}
            self.stats = saved["stats"]
            return None
        self._filter(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"kept": {s: self.kept[s].tolist() for s in SPLITS},  # type: ignore[index]
                                            "stats": self.stats}))
        return None

    @torch.no_grad()
    def _filter_key(self, model) -> str:
        """Hash of everything filtering reads: the token ids of every candidate prompt and of the
        answers (so the tokenizer itself is covered, not only its size), the labels, the model's
        config and a strided sample of every weight tensor."""
        h = hashlib.sha1(json.dumps([self.name, self.answer_ids]).encode())
        for split in SPLITS:
            pool = self.pool(split)
            h.update(self.encode(pool)["input_ids"].numpy().tobytes())
            h.update(self._evaluate(pool, "main", None)["output"].astype(np.int64).tobytes())
        h.update(str(model.config.to_json_string() if hasattr(model, "config") else type(model)).encode())
        for name, p in model.state_dict().items():
            h.update(name.encode())
            h.update(p.detach().flatten()[:: max(1, p.numel() // 257)].float().cpu().numpy().tobytes())
        return h.hexdigest()[:20]

    @torch.no_grad()
    def _filter(self, model) -> None:
        kept = {}
        answer_ids = torch.as_tensor(self.answer_ids)
        for split in SPLITS:
            pool = self.pool(split)
            n = _n(pool)
            labels = torch.as_tensor(self._evaluate(pool, "main", None)["output"].astype(np.int64))
            hit_vocab, hit_answers = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
            for start in range(0, n, self.batch_size):
                idx = np.arange(start, min(start + self.batch_size, n))
                inputs = self.encode(take(pool, idx))
                logits = model(**inputs, logits_to_keep=1).logits[:, -1].float()  # [b, vocab]
                y = labels[idx]
                hit_vocab[idx] = logits.argmax(-1) == answer_ids[y]
                hit_answers[idx] = logits[:, answer_ids].argmax(-1) == y
            kept[split] = np.flatnonzero(hit_vocab.numpy())
            self.stats[split] = {"n": n, "kept": len(kept[split]), "kept_fraction": len(kept[split]) / n,
                                 "base_accuracy": float(hit_vocab.float().mean()),
                                 "base_accuracy_answers": float(hit_answers.float().mean())}
            if len(kept[split]) < self.min_kept:
                other = "raw" if self.template == "chat" else "chat"
                raise ConfigError(
                    f"the model answers only {len(kept[split])} of {n} {split} prompts of task {self.name!r} "
                    f"correctly in {self.template} form (top-1 over the vocabulary {hit_vocab.float().mean():.3f}, "
                    f"among the answers {hit_answers.float().mean():.3f}; need {self.min_kept} to align anything): "
                    f"the task is beyond this model, or the tokenizer is not the model's own"
                    + (f"; try template='{other}'" if other == "raw" or getattr(self.tokenizer, "chat_template", None)
                       else ""))
        self.kept = kept


def _n(raw: Raw) -> int:
    return len(next(iter(raw.values())))


def _chat_frame(tokenizer: Any, task: str) -> tuple[str, str]:
    """(text before the user turn, text between it and the assistant's open answer) of the chat template."""
    messages = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _ANSWER}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    except Exception as err:  # a jinja error inside the tokenizer's own template
        raise TokenizerError(f"task {task!r}: the tokenizer's chat template fails ({type(err).__name__}: {err}); "
                             "use template='raw'") from err
    if text.count(_USER) != 1 or text.count(_ANSWER) != 1 or not text.rstrip().endswith(_ANSWER):
        raise TokenizerError(f"task {task!r}: the tokenizer's chat template does not keep one user turn and an open "
                             "assistant answer; use template='raw'")
    head, rest = text.split(_USER)
    return head, rest.split(_ANSWER)[0]


def _special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before any text by default (a BOS), found by encoding with and without."""
    try:
        with_ = list(tokenizer("a")["input_ids"])
        without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    except Exception:  # a tokenizer-like object without special-token handling
        return []
    if without and len(with_) > len(without) and with_[len(with_) - len(without):] == without:
        return with_[: len(with_) - len(without)]
    return []


def template_pieces(template: str, fill: dict[str, tuple[str, str | None]]) -> list[Piece]:
    """Split ``"text {K} text"`` into pieces; a slot ``{K}`` becomes ``fill[K]`` and takes the
    space before it (BPE tokenizers attach a word's leading space to the word)."""
    pieces: list[Piece] = []
    rest = template
    while "{" in rest:
        head, tail = rest.split("{", 1)
        key, rest = tail.split("}", 1)
        head = head.removesuffix(" ")
        if head:
            pieces.append((head, None))
        text, name = fill[key]
        if not pieces and text.startswith(" "):
            text = text[1:]  # a slot that opens the prompt has no leading space
        pieces.append((text, name))
    if rest:
        pieces.append((rest, None))
    return pieces


def held_out(n: int, split: str, *, seed: int, test_fraction: float) -> np.ndarray:
    """Indices (of ``n`` entities: names, objects, cities, number pairs) that ``split`` may use.

    A fixed permutation (``seed``) gives the first ``int(n * test_fraction)`` to test and the
    rest to train, so a held-out prompt never shows an entity seen in training.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(n * test_fraction)
    return perm[:n_test] if split == "test" else perm[n_test:]
