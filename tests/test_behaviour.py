"""Training adapters on text completions: the tail engine, position semantics, train -> save -> load -> generate."""

import pytest
import torch
from _text_lm import chat_tokenizer, tiny_llama

from roadinterp import io
from roadinterp.adapters import behaviour as bh
from roadinterp.adapters import serve
from roadinterp.adapters import tailcache as tc
from roadinterp.adapters import textdata as td
from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.compose import combine, compose
from roadinterp.adapters.textgen import generate

ROWS = [("what is the opposite of hot", "cold"), ("what is the opposite of big", "small"),
        ("what is the opposite of up", "down"), ("hello", "hello world"), ("what is red", "red"),
        ("what is the opposite of up", "up")]


def _random(key, seed, blocks=None):
    return RoadAdapter({key: 32}, variant="road_1", group_size=8, blocks=blocks, init="random", seed=seed)


def _pos(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("positions", ["last-prompt", "prompt", "all"])
def test_tail_engine_matches_the_full_model(positions):
    model, tok = tiny_llama(), chat_tokenizer()
    batch = td.encode(tok, td.rows_from(ROWS))
    ids, mask, labels, p = batch.padded(0)
    full = model(input_ids=ids, attention_mask=mask, position_ids=_pos(mask)).logits
    data = tc.prepare(model, batch, start=2, positions=positions)
    assert (data.kv is not None) == (positions == "last-prompt")
    if data.kv is not None:  # one copy of the keys/values per distinct prompt
        assert data.kv[2][0].shape[0] == len({q for q, _ in ROWS})
    h = tc.tail_hidden(model, data, torch.arange(len(ROWS)))
    got = model.lm_head(h)
    sel = data.targets != -100
    assert torch.allclose(got[sel], full[:, data.q_cols][sel], atol=1e-5)
    assert data.targets[sel].tolist() == labels[:, 1:][:, data.q_cols][sel].tolist()


def test_training_logits_equal_serving_logits_for_each_positions_mode():
    """What the adapter is trained on is what serve applies (first generated position)."""
    model, tok = tiny_llama(), chat_tokenizer()
    prompts = [q for q, _ in ROWS[:4]]
    batch = td.encode(tok, td.rows_from([{"prompt": q} for q in prompts], need_completion=False), need_completion=False)
    ids, mask, _, p = batch.padded(0)
    for positions in tc.POSITIONS:
        ad = _random(tc.site_key(1, positions), 3, blocks=list(range(8)))
        data = tc.prepare(model, batch, start=2, positions=positions)
        idx = torch.arange(len(prompts))
        train = bh._first_logits(model, data, idx, bh._site_apply([(ad, None)], data, idx))
        out = serve.forward(model, {"input_ids": ids, "attention_mask": mask, "position_ids": _pos(mask)},
                            ["x"] * len(prompts), adapters={"x": ad})
        assert torch.allclose(train, torch.log_softmax(out.logits[:, -1], -1), atol=1e-5), positions


def test_last_prompt_changes_only_the_last_prompt_state_but_generation_differs():
    model, tok = tiny_llama(), chat_tokenizer()
    prompts = ["what is the opposite of hot", "hello"]
    batch = td.encode(tok, td.rows_from([{"prompt": q} for q in prompts], need_completion=False), need_completion=False)
    ids, mask, _, p = batch.padded(0)
    seen = []  # the residual stream entering layer 2 = layer 1's output after the site adapter
    hook = model.model.layers[2].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    ad = _random(tc.site_key(1, "last-prompt"), 5)
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": _pos(mask)}
    try:
        serve.forward(model, inputs, [None, None], adapters={"x": ad})
        serve.forward(model, inputs, ["x", "x"], adapters={"x": ad})
    finally:
        hook.remove()
    base, adapted = seen
    changed = (base - adapted).abs().amax(-1) > 1e-6  # [batch, T]
    assert changed[:, -1].all() and not changed[:, :-1].any()
    g_base = generate(model, tok, prompts, max_new_tokens=6)
    g_ad = generate(model, tok, prompts, adapters=ad, max_new_tokens=6)
    assert g_base != g_ad


def test_train_save_load_generate_end_to_end(tmp_path):
    model, tok = tiny_llama(), chat_tokenizer()
    before = [p.clone() for p in model.parameters()]
    tr = bh.train_from_data(model, tok, ROWS, layers=[1], positions="prompt", blocks="1/2", lr=0.1, epochs=30,
                            batch_size=3, seed=0)
    h = tr.history
    assert h["steps"] == 30 * 2 and len(h["loss"]) == h["steps"] and h["epoch_loss"][-1] < 0.85 * h["epoch_loss"][0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is untouched
    assert not any(p.requires_grad for p in tr.adapter.parameters())
    assert tr.adapter.blocks == list(range(8)) and list(tr.adapter.targets) == ["1:block_output:prompt"]
    io.save(tr.adapter, tmp_path / "ad")
    back = io.load(tmp_path / "ad")
    assert back.meta["history"]["epoch_loss"] == h["epoch_loss"] and back.meta["positions"] == "prompt"
    prompts = [q for q, _ in ROWS[:3]]
    assert generate(model, tok, prompts, adapters=back, max_new_tokens=4) == \
        generate(model, tok, prompts, adapters=tr.adapter, max_new_tokens=4) != generate(model, tok, prompts, max_new_tokens=4)


def test_mixed_batch_generation_equals_per_row_generation():
    model, tok = tiny_llama(), chat_tokenizer()
    key = tc.site_key(1, "last-prompt")
    a, b = _random(key, 1, list(range(8))), _random(key, 2, list(range(8, 16)))
    other = _random(tc.site_key(2, "prompt"), 4)  # another layer and positions mode in the same bank
    bank = {"a": a, "b": b, "a+b": compose({"a": a, "b": b}), "o": other}
    prompts = ["what is the opposite of hot", "hello", "what is red", "what is the opposite of up", "hello world"]
    ids = ["a", "b", "a+b", None, "o"]
    mixed = generate(model, tok, prompts, adapters=bank, adapter_ids=ids, max_new_tokens=5)
    alone = [generate(model, tok, [q], adapters=None if i is None else bank[i], max_new_tokens=5)[0]
             for q, i in zip(prompts, ids)]
    assert mixed == alone
    assert len(set(generate(model, tok, [prompts[0]] * 4, adapters=bank, adapter_ids=["a", "b", "a+b", None],
                            max_new_tokens=5))) > 1


def test_joint_routing_frozen_and_stacked_adapters():
    model, tok = tiny_llama(), chat_tokenizer()
    tr = bh.train_from_data(model, tok, {"x": ROWS[:3], "y": ROWS[3:]}, layers=[1], epochs=2, batch_size=2, lr=0.05)
    assert tr.adapters["x"].blocks == list(range(8)) and tr.adapters["y"].blocks == list(range(8, 16))
    assert tr.adapter.meta["owners"] == {"x": list(range(8)), "y": list(range(8, 16))}
    # y learns with x attached and frozen: x is not changed, y is
    x = tr.adapters["x"]
    theta = x.rotation(list(x.targets)[0]).theta.clone()
    ty = bh.train_from_data(model, tok, ROWS[3:], layers=[1], blocks="2/2", frozen=[x], epochs=2, batch_size=2, lr=0.05)
    assert torch.equal(x.rotation(list(x.targets)[0]).theta, theta)
    assert ty.adapter.rotation(list(ty.adapter.targets)[0]).theta.abs().sum() > 0
    # adapters at different layers stack: applying the stack == applying both
    a, b = _random(tc.site_key(0, "last-prompt"), 1), _random(tc.site_key(1, "all"), 2)
    st = combine({"a": a, "b": b})
    assert sorted(st.targets) == sorted([*a.targets, *b.targets])
    batch = td.encode(tok, td.rows_from(ROWS))
    data = tc.prepare(model, batch, start=1, positions="all")
    idx = torch.arange(len(ROWS))
    both = tc.tail_hidden(model, data, idx, bh._site_apply([(a, None), (b, None)], data, idx))
    one = tc.tail_hidden(model, data, idx, bh._site_apply([(st, None)], data, idx))
    assert torch.allclose(both, one, atol=1e-6)


def test_preserve_term_starts_at_zero_and_linear_placement_trains():
    model, tok = tiny_llama(), chat_tokenizer()
    tr = bh.train_from_data(model, tok, ROWS, layers=[1], epochs=2, batch_size=3, lr=0.05,
                            preserve_rows=[{"prompt": "what is blue"}, {"prompt": "hello world"}], preserve_weight=5.0)
    assert tr.history["kl"][0] == pytest.approx(0.0, abs=1e-6) and max(tr.history["kl"]) > 0
    lin = bh.train_from_data(model, tok, ROWS, placement="linear", positions="all", layers=[1, 2], epochs=3,
                             batch_size=3, lr=0.05, linear_modules=["q_proj", "down_proj"])
    assert sorted(lin.adapter.targets) == ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj",
                                           "model.layers.2.mlp.down_proj", "model.layers.2.self_attn.q_proj"]
    assert lin.history["epoch_loss"][-1] < lin.history["epoch_loss"][0]
    assert not any(type(m).__name__ == "RoadLinear" for m in model.modules())  # removed after training
    prompts = [q for q, _ in ROWS[:2]]
    assert generate(model, tok, prompts, adapters=lin.adapter, max_new_tokens=4) != generate(model, tok, prompts,
                                                                                              max_new_tokens=4)


def test_parse_blocks_specs():
    assert bh.parse_blocks("1/2", 8) == [0, 1, 2, 3] and bh.parse_blocks("2/2", 8) == [4, 5, 6, 7]
    assert bh.parse_blocks("0-2,6", 8) == [0, 1, 2, 6] and bh.parse_blocks("all", 8) is None
    for bad in ("3/2", "x", "0-9"):
        with pytest.raises(Exception, match="blocks must"):
            bh.parse_blocks(bad, 8)


def test_training_stops_at_a_plateau_or_a_time_budget_and_keeps_the_curve():
    model, tok = tiny_llama(), chat_tokenizer()
    capped = bh.train_from_data(model, tok, ROWS, layers=[1], epochs=6, batch_size=3, lr=0.05)
    assert capped.history["stopped"] == "epochs" and capped.history["steps"] == 12
    assert len(capped.history["window_loss"]) == 6  # one window per epoch by default
    # a threshold every window misses (improvement must exceed 1000% of the loss): stops after two windows
    flat = bh.train_from_data(model, tok, ROWS, layers=[1], epochs=6, batch_size=3, lr=0.05, plateau=10.0, window=1)
    assert flat.history["stopped"] == "plateau" and flat.history["steps"] == 2
    assert flat.history["window_loss"] == pytest.approx(flat.history["loss"])
    timed = bh.train_from_data(model, tok, ROWS, layers=[1], epochs=6, batch_size=3, lr=0.05, max_seconds=0.0)
    assert timed.history["stopped"] == "time" and timed.history["steps"] == 1
    assert timed.adapter.meta["history"]["stopped"] == "time"
    with pytest.raises(Exception, match="window must"):
        bh.train_from_data(model, tok, ROWS, layers=[1], epochs=1, window=0)


def test_readout_shift_reads_linear_placement_adapters():
    from roadinterp.adapters.diagnose import readout_shift

    model, tok = tiny_llama(), chat_tokenizer()
    kw = dict(placement="linear", positions="all", layers=[1, 2], epochs=2, batch_size=3, lr=0.1,
              linear_modules=["q_proj", "down_proj"])
    a = bh.train_from_data(model, tok, ROWS[:3], blocks="1/2", **kw).adapter
    b = bh.train_from_data(model, tok, ROWS[3:], blocks="2/2", **kw).adapter
    d = readout_shift(model, tok, [q for q, _ in ROWS], {"A": a, "B": b, "A+B": combine({"a": a, "b": b})})
    assert [x["layer"] for x in d["layers"]] == [1, 2]  # read from the first adapted block on
    assert d["kl"]["A"] > 0 and d["kl"]["B"] > 0 and 0 <= d["additivity"]
    assert not any(type(m).__name__ == "RoadLinear" for m in model.modules())
    with pytest.raises(Exception, match="one placement"):
        readout_shift(model, tok, ["hello"], {"A": a, "B": _random(tc.site_key(1, "last-prompt"), 1), "A+B": a})
