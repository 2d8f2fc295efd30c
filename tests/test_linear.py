"""RoadLinear: adapter banks on Linear (and GPT-2 Conv1D) outputs, apply/remove, merge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.linear import (
    RoadLinear,
    apply_road,
    linear_targets,
    merge,
    remove_road,
    road_layers,
    unmerge,
)
from roadinterp.errors import ConfigError, ShapeError
from roadinterp.road import apply, coefficients

ATOL = 1e-5


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=100, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=64,
                     bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(cfg).eval()


def bank_for(model, n=3, variant="road_1", group_size=32, **kw):
    targets = linear_targets(model, "all-linear")
    return {f"a{i}": RoadAdapter(targets, variant=variant, group_size=group_size, placement="linear",
                                 init="random", seed=i, **kw) for i in range(n)}


@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_road_linear_bank_rows_equal_single_adapter(variant):
    torch.manual_seed(0)
    lin = nn.Linear(8, 16)
    g = torch.Generator().manual_seed(0)
    n = {"road_1": 8, "road_2": 16, "road_4": 32}[variant]
    theta, alpha = torch.rand(3, n, generator=g) * 6 - 3, 0.5 + torch.rand(3, n, generator=g)
    layer = RoadLinear(lin, theta, alpha, variant=variant, group_size=4)
    x = torch.randn(4, 5, 8)
    ids = torch.tensor([2, -1, 0, 1])
    with torch.no_grad():
        layer.reset_cache()
        layer.set_adapter_ids(ids)
        out = layer(x)
        for b, i in enumerate(ids.tolist()):
            want = lin(x[b]) if i < 0 else apply(lin(x[b]), *coefficients(theta[i], alpha[i], variant, 4), 4)
            torch.testing.assert_close(out[b], want, atol=ATOL, rtol=0)
        layer.set_adapter_ids(None)  # no routing and no active adapter: plain Linear
        torch.testing.assert_close(layer(x), lin(x))
    with pytest.raises(ConfigError, match="3"):
        layer.set_adapter_ids(torch.tensor([3, 0, 0, 0]))


def test_grad_flows_to_bank_when_trainable():
    lin = nn.Linear(4, 8)
    layer = RoadLinear(lin, torch.zeros(1, 4), torch.ones(1, 4), group_size=8, active=0)
    layer.theta.requires_grad_(True)
    layer(torch.randn(2, 4)).pow(2).sum().backward()
    assert layer.theta.grad is not None and layer.theta.grad.shape == (1, 4)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_apply_remove_restores_modules(make):
    model = make()
    before = dict(model.named_modules())
    x = torch.randint(1, 100, (2, 6))
    with torch.no_grad():
        ref = model(x).logits
        bank = bank_for(model)
        with apply_road(model, bank) as handle:
            assert set(road_layers(model)) == set(bank["a0"].targets) == set(handle.layers)
            # no ids set and no active adapter: the bank is dormant
            torch.testing.assert_close(model(x).logits, ref)
        assert not road_layers(model)
        after = dict(model.named_modules())
        assert all(after[k] is before[k] for k in before)
        torch.testing.assert_close(model(x).logits, ref)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_single_adapter_is_active_and_merge_matches(make):
    model = make()
    a = bank_for(model, n=1)["a0"]
    x = torch.randint(1, 100, (2, 6))
    with torch.no_grad():
        ref = model(x).logits
        with apply_road(model, a):
            adapted = model(x).logits
            assert (adapted - ref).abs().max() > 1e-3  # the adapter does something
            merge(model)
            torch.testing.assert_close(model(x).logits, adapted, atol=ATOL, rtol=1e-4)
            unmerge(model)
            torch.testing.assert_close(model(x).logits, adapted, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(model(x).logits, ref, atol=ATOL, rtol=1e-4)


def test_subspace_and_partial_targets_are_identity_elsewhere():
    model = tiny_llama()
    targets = linear_targets(model, ["q_proj"])
    a = RoadAdapter(targets, group_size=32, placement="linear", init="random", seed=0, blocks=[0, 1, 2])
    b = RoadAdapter(linear_targets(model, ["v_proj"]), group_size=32, placement="linear", init="random", seed=1)
    with torch.no_grad(), apply_road(model, {"a": a, "b": b}) as h:
        layer = h.layers["model.layers.0.self_attn.q_proj"]
        c1, c2s = layer.tables()
        assert torch.equal(c1[1], torch.ones(64)) and torch.equal(c2s[1], torch.zeros(64))  # b is not on q_proj
        changed = (c1[0] != 1).nonzero().flatten().tolist()
        assert changed and set(changed) <= {0, 1, 2, 16, 17, 18, 32, 33, 34, 48, 49, 50}
        assert h.ids(["b", None, "a", 0]).tolist() == [1, -1, 0, 0]


def test_apply_road_errors():
    model = tiny_llama()
    site = RoadAdapter({"0:block_output:last": 64}, group_size=32)
    with pytest.raises(ConfigError, match="placement='site'"):
        apply_road(model, site)
    with pytest.raises(ConfigError, match="nope"):
        linear_targets(model, ["nope"])
    wrong = RoadAdapter({"model.layers.0.self_attn.q_proj": 32}, placement="linear", group_size=32)
    with pytest.raises(ShapeError, match="32 wide"):
        apply_road(model, wrong)
    a, b = bank_for(model, n=1)["a0"], bank_for(model, n=1, group_size=16)["a0"]
    with pytest.raises(ConfigError, match="group_size"):
        apply_road(model, {"a": a, "b": b})
    with apply_road(model, a):
        with pytest.raises(ConfigError, match="remove_road"):
            apply_road(model, a)
    remove_road(model)  # idempotent
