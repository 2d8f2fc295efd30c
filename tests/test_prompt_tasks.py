"""Prompt tasks on a model's own tokenizer: binding, single-token checks, per-row positions,
and padding that changes nothing (the same DII outputs and IIA padded and unpadded).

A word-level tokenizer built in-process and tiny random llama/gpt2 models; no network.
"""

import numpy as np
import pytest
import torch
import transformers as tf
from conftest import word_tokenizer
from tokenizers import pre_tokenizers

from roadinterp.dii.runners import make_runner
from roadinterp.errors import ConfigError, SiteError, TokenizerError
from roadinterp.interventions import get_family
from roadinterp.sites import Site
from roadinterp.tasks import get_task
from roadinterp.tasks.ioi import NAMES


def ioi_tokenizer(extra=()):
    return word_tokenizer(get_task("ioi"), extra=extra)


def tiny_lm(arch, vocab):
    torch.manual_seed(0)
    if arch == "llama":
        cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64)
        return tf.LlamaForCausalLM(cfg).eval()
    cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=vocab, n_positions=64)
    return tf.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return ioi_tokenizer()


def test_bind_answers_and_positions(tok):
    task = get_task("ioi").bind(tokenizer=tok)
    assert task.answer_ids == [tok.convert_tokens_to_ids(n) for n in NAMES]
    raw = task.sample_raw(32, split="train", seed=1)
    inputs, pos = task.encode_rows(raw)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape[1] == task.seq_len and bool((mask[:, -1] == 1).all())  # left-padded
    assert (mask == 0).any()  # prompts of different lengths
    out = task._evaluate(raw, "main", None)["output"]
    for i in range(32):  # the io position holds the answer's token, s1 and s2 the subject's
        assert ids[i, pos["io"][i]] == task.answer_ids[out[i]]
        assert ids[i, pos["s1"][i]] == ids[i, pos["s2"][i]] != ids[i, pos["io"][i]]
    pids = inputs["position_ids"]
    assert torch.equal(pids[mask == 1], torch.cat([torch.arange(int(m.sum())) for m in mask]))
    # train and test hold disjoint names
    names = {s: set(np.concatenate([task.pool(s)["a"], task.pool(s)["b"]]).tolist()) for s in ("train", "test")}
    assert not names["train"] & names["test"]


def test_unbound_and_multi_token_errors(tok):
    with pytest.raises(ConfigError, match="not bound to a tokenizer"):
        get_task("ioi").counterfactuals(4)
    with pytest.raises(TokenizerError, match="has none"):
        get_task("ioi").bind(tokenizer=None)
    spaced = ioi_tokenizer([" "])
    spaced.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "isolated")  # " Mary" -> " ", "Mary"
    with pytest.raises(TokenizerError, match="answer ' Mary' is 2 tokens"):
        get_task("ioi").bind(tokenizer=spaced)


def test_tokenizer_model_mismatch(tok):
    model = tiny_lm("llama", 20)  # far fewer ids than the tokenizer has
    with pytest.raises(TokenizerError, match="do not belong together"):
        get_task("ioi").bind(tokenizer=tok, model=model)


def test_right_padding_is_refused(tok):
    from roadinterp.sites import check_left_padded

    with pytest.raises(SiteError, match="right-padded"):
        check_left_padded({"attention_mask": torch.tensor([[1, 1, 0]])})


def _strip(inputs, i):
    """Row i at its natural length, without padding."""
    keep = inputs["attention_mask"][i] == 1
    return {"input_ids": inputs["input_ids"][i][keep][None]}


@pytest.mark.parametrize(("arch", "position"), [("llama", "last"), ("llama", "io"), ("gpt2", "s2")])
def test_padded_equals_unpadded(tok, arch, position):
    """Each row of a padded batch gives the DII output it gives alone at its natural length."""
    model = tiny_lm(arch, len(tok))
    task = get_task("ioi").bind(tokenizer=tok)
    data = task.counterfactuals(6, split="test", seed=2)
    site = Site(0, "block_output", position)
    built = get_family("butterfly").build(32, [4, 4], seed=1)
    for iv in built.interventions:  # a non-trivial rotation
        for p in iv.parameters():
            torch.nn.init.normal_(p, std=1.0) if p.requires_grad else None
    runner, (handle,) = make_runner(model, site, task, built.interventions, built.coords, shared=built.shared,
                                    datasets=[data], engine="pyvene")  # the reference (the KV engine: test_kvreplay)
    padded = task.logits(runner([(handle, torch.arange(len(data)))]))
    alone = []
    from roadinterp.interventions import run_dii

    for i in range(len(data)):
        offs = [int((d["attention_mask"][i] == 0).sum()) for d in (data.base, *data.sources)]
        rows = {k: v[i:i + 1] - torch.tensor(offs) for k, v in data.positions.items()}
        out = run_dii(runner.pvm, site, _strip(data.base, i), [_strip(s, i) for s in data.sources], built.coords,
                      named_positions=task.positions, row_positions=rows)
        alone.append(task.logits(out))
    alone = torch.cat(alone)
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)
    assert (padded.argmax(-1) == data.labels).float().mean() == (alone.argmax(-1) == data.labels).float().mean()
    # the intervention matters: without it, outputs differ
    plain = task.logits(model(**data.base))
    assert not torch.allclose(plain, padded, atol=1e-3)


def _swapped(tok, a, b):
    """``tok`` with the ids of words ``a`` and ``b`` exchanged: same size, other token ids."""
    from tokenizers import Tokenizer, models

    vocab = tok.get_vocab()
    vocab[a], vocab[b] = vocab[b], vocab[a]
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = tok.backend_tokenizer.pre_tokenizer
    return tf.PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", unk_token="<unk>")


def test_filter_cache_is_keyed_by_the_token_ids(tok, tmp_path):
    """A cached filter is reused for the same tokenizer and model, and not for another tokenizer
    of the same size whose ids differ (the model would read other prompts)."""
    from roadinterp.tasks.ioi import IOI

    model = tiny_lm("llama", len(tok))
    task = IOI()  # its own instance: small pools, no minimum (a random model answers almost nothing)
    task.pool_size, task.min_kept = 32, 0
    first = task.bind(tokenizer=tok, model=model, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("ioi-*.json"))) == 1
    other = _swapped(tok, "gave", "went")
    assert len(other) == len(tok)
    task.bind(tokenizer=other, model=model, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("ioi-*.json"))) == 2

    def refuse(model):
        raise AssertionError("the cached filter should have been reused")

    task._filter = refuse
    again = task.bind(tokenizer=tok, model=model, cache_dir=tmp_path)
    assert again.stats == first.stats and all(np.array_equal(again.kept[s], first.kept[s]) for s in first.kept)


CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}{% if not loop.last %}</s>{% endif %}"
        "{% endfor %}")


def chat_tokenizer(task):
    """A word tokenizer with special turn markers and a chat template."""
    tok = word_tokenizer(task, extra=["user : assistant : Continue the text . Answer :"])
    tok.add_special_tokens({"additional_special_tokens": ["<s>", "</s>"]})
    tok.chat_template = CHAT
    return tok


@pytest.mark.parametrize("name", ["ioi", "mcqa"])
def test_chat_template_frames_prompts_and_raw_opts_out(name):
    task = get_task(name)
    tok = chat_tokenizer(task)
    chat, raw = task.bind(tokenizer=tok), task.bind(tokenizer=tok, template="raw")
    assert (chat.template, raw.template) == ("chat", "raw")
    rows = {k: v[:8] for k, v in task.pool("test").items()}
    plain = raw.prompts(rows)
    framed = chat.prompts(rows)
    if name == "ioi":  # an instruction asks; the prompt opens the assistant's answer
        assert all(f == "<s>user: Continue the text.</s><s>assistant: " + p for f, p in zip(framed, plain))
    else:  # the question is the user's turn; the answer opens with "Answer:"
        assert all(f == "<s>user: " + p.removesuffix("\nAnswer:") + "</s><s>assistant: Answer:"
                   for f, p in zip(framed, plain))
    assert chat.answer_ids == raw.answer_ids and chat.seq_len > raw.seq_len
    (ids, pos), (rids, rpos) = chat.encode_rows(rows), raw.encode_rows(rows)
    for p in task.row_positions:  # a named position holds the same token in both forms
        for i in range(8):
            assert ids["input_ids"][i, pos[p][i]] == rids["input_ids"][i, rpos[p][i]]
    mask = ids.get("attention_mask", torch.ones_like(ids["input_ids"]))
    for i, text in enumerate(framed):  # pieces tokenized one by one = the whole framed prompt
        assert tok(text, add_special_tokens=False)["input_ids"] == ids["input_ids"][i][mask[i] == 1].tolist()


def test_chat_without_a_template_is_refused_and_a_bad_value_named(tok):
    with pytest.raises(TokenizerError, match="no chat template; use template='raw'"):
        get_task("ioi").bind(tokenizer=tok, template="chat")
    with pytest.raises(ConfigError, match="template must be one of auto, chat, raw, got 'jinja'"):
        get_task("ioi").bind(tokenizer=tok, template="jinja")
    assert get_task("ioi").bind(tokenizer=tok).template == "raw"  # auto: no template, raw


def test_raw_prompts_start_with_the_tokenizers_bos():
    """Gemma's tokenizer puts <bos> before any text: raw prompts get it too (SmolLM2's puts nothing)."""
    from tokenizers import processors

    task = get_task("ioi")
    tok = word_tokenizer(task, extra=["<bos>"])
    bos = tok.convert_tokens_to_ids("<bos>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    bound = task.bind(tokenizer=tok)
    ids = bound.encode({k: v[:4] for k, v in task.pool("test").items()})
    mask = ids["attention_mask"]
    first = [int(ids["input_ids"][i][mask[i] == 1][0]) for i in range(4)]
    assert first == [bos] * 4
