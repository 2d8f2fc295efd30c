"""Shared test setup: offline, deterministic, a private zoo cache per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def tiny_model(arch: str):
    """A tiny random HF causal LM of the given architecture (no network)."""
    import transformers as tf

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=32)
        return tf.GPT2LMHeadModel(cfg).eval()
    if arch == "llama":
        cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=50, max_position_embeddings=32)
        return tf.LlamaForCausalLM(cfg).eval()
    if arch == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=50, max_position_embeddings=32)
        return tf.Qwen2ForCausalLM(cfg).eval()
    raise ValueError(arch)


def tiny_mlp():
    from pyvene.models.mlp.modelings_mlp import MLPConfig, MLPForClassification

    torch.manual_seed(0)
    return MLPForClassification(MLPConfig(h_dim=16, n_layer=3, num_classes=2, pdrop=0.0)).eval()


def word_tokenizer(*tasks, extra=()):
    """A word-level HF tokenizer covering every prompt and answer of the given prompt tasks
    (split on whitespace and punctuation, so an answer like " Mary" is one token); pad = 0."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    from roadinterp.tasks.base import SPLITS

    pre = pre_tokenizers.Whitespace()
    vocab = {"<pad>": 0, "<unk>": 1}
    texts = [*extra]
    for task in tasks:
        texts += list(task.answer_tokens)
        for split in SPLITS:
            pool = task.pool(split)
            texts += ["".join(t for t, _ in task._pieces(pool, i)) for i in range(len(next(iter(pool.values()))))]
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


_READY: dict = {}


def ready(task):
    """``task`` bound to a word tokenizer if it is a prompt task (no model: no filtering); cached."""
    if not task.needs_tokenizer:
        return task
    if task.name not in _READY:
        _READY[task.name] = task.bind(tokenizer=word_tokenizer(task))
    return _READY[task.name]
