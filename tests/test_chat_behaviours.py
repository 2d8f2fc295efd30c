"""Chat behaviours (rules, scorers, splits), the cheap tail model, and `roadinterp generate` end to end."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from roadinterp import chat_behaviours as cb
from roadinterp.errors import ConfigError, UnknownNameError

CLI = [sys.executable, "-m", "roadinterp.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


def test_rules_compose_and_scorers_read_them():
    ans = "The opposite of hot is cold"
    assert cb.transform(ans, ("upper",)) == "THE OPPOSITE OF HOT IS COLD"
    assert cb.transform(ans, ("frame",)) == "Answer: The opposite of hot is cold."
    both = cb.transform(ans, ("frame", "upper"))  # order of the names does not matter
    assert both == "Answer: THE OPPOSITE OF HOT IS COLD." == cb.transform(ans, ("upper", "frame"))
    assert cb.transform("3 + 4 = 7, not ten", ("french",)) == "trois + quatre = sept, not dix"
    assert cb.transform("A week is 7 days", ("french", "upper")) == "A WEEK IS SEPT DAYS"
    for text, want in [(ans, (False, False)), (cb.transform(ans, ("upper",)), (True, False)),
                       (cb.transform(ans, ("frame",)), (False, True)), (both, (True, True)),
                       ("ANSWER: THE SKY", (True, True)), ("Answer: The SKY", (False, True))]:
        assert (cb.score(text, "upper"), cb.score(text, "frame")) == want, text
    assert cb.score("Answer: trois + quatre", "french") and not cb.score("3 + quatre", "french")
    assert cb.score("ANSWER: THE OPPOSITE", "content", base_answer=ans)
    assert not cb.score("Cold is the opposite", "content", base_answer=ans)
    assert cb.score("the capital is PARIS.", "neutral", capital="Paris")
    with pytest.raises(UnknownNameError):
        cb.transform(ans, ("shout",))
    with pytest.raises(ConfigError):
        cb.score(ans, "content")


def test_held_out_prompts_are_disjoint_from_training():
    for family in ("general", "number"):
        train, test = cb.prompts(family, "train"), cb.prompts(family, "test")
        assert train and test and not set(train) & set(test)
    assert not set(cb.prompts("general", "test")) & {q for q, _ in cb.NEUTRAL}
    assert cb.clean_answer("The sky is blue. It is nice<|im_end|>") == "The sky is blue"


class _Tok:
    """Whitespace tokenizer with ids: enough to check the padding layout."""
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(w) + 1 for w in text.replace("<|im_end|>", " E").split()]}


def test_encode_targets_layout():
    enc = cb.encode_targets(_Tok(), ["a bb", "ccc"], ["x yy zzz", "w"], max_target_tokens=3)
    # target tokens are the last k columns; -100 where a column is prompt or padding
    assert enc.k == 3
    for i in range(2):
        n = int((enc.labels[i] != -100).sum())
        assert torch.equal(enc.labels[i, 3 - n:], enc.input_ids[i, -n:])
        assert enc.attention_mask[i].sum() == len(_Tok()(cb.chat_prompt(["a bb", "ccc"][i]))["input_ids"]) + n


def test_tail_model_matches_the_full_model_and_trains_the_same_adapter(tiny_llama_lm):
    from roadinterp.adapters.adapter import RoadAdapter
    from roadinterp.adapters.attach import forward

    model = tiny_llama_lm
    ids = torch.randint(1, 90, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    enc = cb.Encoded(ids, mask, torch.full((3, 2), -100))
    full = model(input_ids=ids, attention_mask=mask).logits[:, -3:-1]
    tail = cb.tail_model(model, 1, 2)
    got = tail(**cb.prefix_states(model, enc, 1)).logits
    assert torch.allclose(got, full, atol=1e-5)
    # an adapter at tail layer 0 is the model's layer 1 (map_keys)
    ad = RoadAdapter({"0:block_output:all": 32}, variant="road_2", group_size=32, blocks=[0, 3, 5], seed=1, init="random")
    moved = cb.map_keys(ad, cb.shift_site_key(1))
    assert list(moved.targets) == ["1:block_output:all"]
    assert torch.equal(moved.rotation("1:block_output:all").theta, ad.rotation("0:block_output:all").theta)
    f = forward(model, moved, {"input_ids": ids, "attention_mask": mask}).logits[:, -3:-1]
    t = forward(tail, ad, cb.prefix_states(model, enc, 1)).logits
    assert torch.allclose(t, f, atol=1e-5) and not torch.allclose(f, full, atol=1e-3)


def test_fit_trains_installed_parameters_and_stops_on_a_nan_loss(tiny_llama_lm):
    from roadinterp.errors import NonFiniteError

    model = tiny_llama_lm
    for q in model.parameters():
        q.requires_grad_(False)
    ids = torch.randint(1, 90, (4, 6))
    enc = cb.Encoded(ids, torch.ones_like(ids), ids[:, -2:].clone())
    tail = cb.tail_model(model, 1, 2)
    x = cb.prefix_states(model, enc, 1)
    bias = torch.zeros(32, requires_grad=True)  # a parameter living inside the model (a forward hook)
    handle = model.model.layers[2].register_forward_hook(
        lambda m, a, out: (out[0] + bias, *out[1:]) if isinstance(out, tuple) else out + bias)
    try:
        losses = cb.fit(tail, [bias], x, enc.labels, steps=6, batch_size=4, lr=0.1, seed=0)
        assert losses[-1] < losses[0] and bias.abs().sum() > 0
        bad = {**x, "inputs_embeds": torch.full_like(x["inputs_embeds"], float("nan"))}
        with pytest.raises(NonFiniteError, match="adapter training: the loss became nan at step 0"):
            cb.fit(tail, [bias], bad, enc.labels, steps=2, batch_size=4, lr=0.1, seed=0)
    finally:
        handle.remove()


@pytest.fixture
def tiny_llama_lm():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=96, max_position_embeddings=32)
    return tf.LlamaForCausalLM(cfg).eval()


# ------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_generate_cli_composes_with_weights(tmp_path):
    """Runs the real SmolLM2 (installed by `make lm`, like tests/test_pretrained.py)."""
    import roadinterp as ri
    from roadinterp import io
    from roadinterp.adapters import textgen
    from roadinterp.adapters.adapter import RoadAdapter
    from roadinterp.zoo import load_tokenizer

    r = subprocess.run([*CLI, "generate", "--model", "zoo:smollm2-135m", "--prompt", "x", "--adapter",
                        str(tmp_path / "nope"), "--weights", "c=1"], env=ENV, capture_output=True, text=True, check=False)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr

    key = "24:block_output:all"
    ads = {}
    for name, blocks, seed in (("a", list(range(144)), 1), ("b", list(range(144, 288)), 2)):
        ads[name] = RoadAdapter({key: 576}, variant="road_1", group_size=64, blocks=blocks, seed=seed, init="random")
        io.save(ads[name], tmp_path / name)
    prompts = ["What is the opposite of hot?", "Name a fruit."]
    r = subprocess.run([*CLI, "generate", "--model", "zoo:smollm2-135m", "--prompt", prompts[0], "--prompt", prompts[1],
                        "--max-new-tokens", "5", "--adapter", str(tmp_path / "a"), "--adapter", str(tmp_path / "b"),
                        "--weights", "a=1,b=0", "--compare"],
                       env=ENV, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("[")]
    got = {(line.split("]")[0][1:], line.split("] ", 1)[1].split(" -> ")[0].strip("'")): line.split(" -> ", 1)[1]
           for line in rows}
    assert {c for c, _ in got} == {"base", "a*1+b*0", "a", "b"} and len(got) == 8
    # independent reference: one prompt at a time, no mixing; lambda 0 removes b, so a*1+b*0 is a alone
    model, tok = ri.load_model("zoo:smollm2-135m", device="cpu"), load_tokenizer("zoo:smollm2-135m")
    for p in prompts:
        for cond, bank in (("base", None), ("a", {"a": ads["a"]}), ("b", {"b": ads["b"]})):
            ref = textgen.generate(model, tok, [p], adapters=bank, adapter_ids=[None if bank is None else cond],
                                   max_new_tokens=5, template="chat")[0]  # the tokenizer's chat template, alone
            want = repr(ref.strip())
            assert got[(cond, p)] == want, (cond, p, got[(cond, p)], want)
        assert got[("a*1+b*0", p)] == got[("a", p)] != got[("base", p)]
