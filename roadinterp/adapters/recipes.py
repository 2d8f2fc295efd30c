"""Recipes behind ``roadinterp train``, ``train --data`` and ``generate``: load, check, fit, save.

Each recipe is the whole job a command does, as one library call, so the CLI only parses
options and prints, and a notebook runs the very same steps:

- :func:`train_task` fits a RoAd adapter to a causal task's class labels (a sourceless
  intervention at task sites);
- :func:`train_data` fits one to text completions from a JSONL file (a *behaviour*,
  :func:`~roadinterp.adapters.behaviour.train_from_data`), with an optional preservation set;
- :func:`generate_texts` generates with saved adapters, composed with per-adapter lambdas
  (and, with ``compare``, the base model and each adapter alone), all in one mixed batch.

Every check that can fail runs before any training, and nothing is written until the
adapter is complete (``io.prepare_output`` first, ``io.save`` last, atomically).
"""

from __future__ import annotations

from collections.abc import Sequence

from roadinterp.errors import ConfigError, TokenizerError

__all__ = ["generate_texts", "train_data", "train_task"]


def _tokenizer(model: str):
    from roadinterp.zoo import load_tokenizer

    tok = load_tokenizer(model)  # before the model: a toy zoo model has none
    if tok is None:
        raise TokenizerError(f"--model {model} has no tokenizer, so it cannot read or write text; pass a text "
                             "model (zoo:smollm2-135m, zoo:gemma3-270m, a .gguf file or an HF directory with a tokenizer)")
    return tok


def train_task(task: str, out, *, model: str | None = None, layers: Sequence[int] = (0,), component="block_output",
               positions="all", variant="road_2", blocks=None, steps=300, lr=0.05, n_train=4096, seed=0,
               overwrite=False) -> tuple[object, dict]:
    """Fit a RoAd adapter to ``task``'s labels at ``layers``; save it to ``out``. Returns (adapter, meta)."""
    from roadinterp import bounds, io, zoo
    from roadinterp.adapters.adapter import RoadAdapter
    from roadinterp.adapters.attach import adapter_interventions, evaluate
    from roadinterp.road.rotation import VARIANTS
    from roadinterp.sites import Site, parse_positions, validate_site
    from roadinterp.tasks import get_task
    from roadinterp.training import train_adapter

    if variant not in VARIANTS:  # before any work (the task's zoo model may need training first)
        raise ConfigError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    io.prepare_output(out, overwrite=overwrite, ours=io.is_saved)  # before any training
    t = get_task(task)
    spec = model or zoo.default_model(t.name if t.variables else "behaviour-base")
    m = zoo.load_model(spec)
    pos = parse_positions(positions)
    sites = [Site(layer, component, pos) for layer in layers]
    targets = {s.key(): validate_site(m, s) for s in sites}
    adapter = RoadAdapter(targets, variant=variant, group_size=64, blocks=blocks,
                          meta={"task": t.name, "model": spec, "seed": seed})
    ivs = adapter_interventions(adapter)
    bounds.check_rows_memory("--n-train", n_train, lambda k: t.factual(k, split="train", seed=seed), what="examples")
    x, y = t.factual(n_train, split="train", seed=seed)
    losses = train_adapter(m, sites, [ivs[s.key()] for s in sites], x, y, task=t, steps=steps, lr=lr, seed=seed)
    xt, yt = t.factual(1024, split="test", seed=seed + 1)
    acc = evaluate(m, adapter, xt, yt, t, sites)
    base = evaluate(m, None, xt, yt, t)
    adapter.meta.update({"test_accuracy": acc, "base_accuracy": base, "final_loss": losses[-1] if losses else None})
    io.save(adapter, out, overwrite=overwrite)
    return adapter, adapter.meta


def train_data(data, out, *, model: str, template="chat", placement="site", positions="last-prompt",
               layers: Sequence[int] = (15,), blocks=None, variant="road_1", lr=5e-3, epochs=5, batch_size=8, seed=0,
               preserve=None, preserve_weight=1.0, overwrite=False, log=None) -> tuple[object, dict]:
    """Fit a RoAd adapter to the completions of ``data`` (JSONL); save it to ``out``. Returns (adapter, history).

    Rows are ``{"prompt", "completion"}`` or ``{"messages": [...]}``; the loss covers completion tokens
    only. ``preserve``: a JSONL file of prompts whose base next-token distribution the adapter must keep
    (``preserve_weight`` x KL to the base). Bad rows, a missing tokenizer and a prompt longer than the
    model's context are refused before any training; nothing is written until the adapter is saved.
    """
    from roadinterp import io, zoo
    from roadinterp.adapters import textdata as td
    from roadinterp.adapters.behaviour import train_from_data

    from roadinterp.adapters.tailcache import POSITIONS
    from roadinterp.road.rotation import VARIANTS

    if template not in ("chat", "raw"):
        raise ConfigError(f"--template must be chat (the tokenizer's own chat template) or raw, got {template!r}")
    for name, value, allowed in (("--variant", variant, VARIANTS), ("--placement", placement, ("site", "linear")),
                                 ("--positions", positions, POSITIONS)):
        if value not in allowed:  # before any work
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    io.prepare_output(out, overwrite=overwrite, ours=io.is_saved)
    rows = td.read_jsonl(data)  # every row checked (its row number in the message) before the model loads
    keep = td.read_jsonl(preserve, need_completion=False) if preserve else None
    tok = _tokenizer(model)
    m = zoo.load_model(model)
    trained = train_from_data(m, tok, rows, placement=placement, positions=positions, layers=layers, blocks=blocks,
                              variant=variant, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, template=template,
                              preserve_rows=keep, preserve_weight=preserve_weight, log=log)
    adapter = trained.adapter  # its meta already holds the loss history (train_from_data)
    adapter.meta.update({"model": model, "data": str(data), "preserve": None if preserve is None else str(preserve),
                         "n_rows": len(rows)})
    io.save(adapter, out, overwrite=overwrite)
    return adapter, trained.history


def generate_texts(model: str, prompts: Sequence[str], *, adapters: Sequence[str] = (), weights: str | None = None,
                   compare: bool = False, max_new_tokens: int = 20, template: str = "chat") -> list[tuple[str, str, str]]:
    """(condition, prompt, completion) rows: the composition of ``adapters`` (``weights`` = lambda per name).

    With ``compare`` (or no adapter) the base model is a condition too, and with ``compare`` each
    adapter alone. Every (prompt, condition) pair is one row of a single mixed batch
    (:func:`roadinterp.adapters.textgen.generate`), each routed to its own adapter.
    """
    from roadinterp import io, zoo
    from roadinterp.adapters.compose import combine
    from roadinterp.adapters.textgen import generate

    if template not in ("chat", "raw"):
        raise ConfigError(f"--template must be chat (the tokenizer's own chat template) or raw, got {template!r}")
    loaded, w = io.load_adapters(adapters, weights)
    tok = _tokenizer(model)
    bank = {}
    if loaded:
        label = "+".join(f"{n}*{w[n]:g}" if w and n in w else n for n in loaded)
        bank[label] = combine(loaded, weights=w) if len(loaded) > 1 or w else next(iter(loaded.values()))
        if compare:
            bank.update({n: a for n, a in loaded.items() if n != label})
    conditions = (["base"] if compare or not loaded else []) + list(bank)
    m = zoo.load_model(model)
    rows = [(c, p) for p in prompts for c in conditions]
    texts = generate(m, tok, [p for _, p in rows], adapters=bank or None,
                     adapter_ids=[None if c == "base" else c for c, _ in rows], template=template,
                     max_new_tokens=max_new_tokens)
    return [(c, p, t.strip()) for (c, p), t in zip(rows, texts)]
