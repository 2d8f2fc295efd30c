"""PEDRO: identity at init, save/load, once-per-prompt generation, mixed batches, errors, training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from roadinterp import io  # noqa: E402
from roadinterp.adapters.attach import adapter_interventions  # noqa: E402
from roadinterp.adapters.pedro import PedroAdapter  # noqa: E402
from roadinterp.adapters.pedro_linear import apply_pedro  # noqa: E402
from roadinterp.errors import ConfigError  # noqa: E402
from roadinterp.interventions.attach import attach_sourceless, run_sourceless  # noqa: E402
from roadinterp.interventions.pedro import (  # noqa: E402
    PedroConfig,
    PedroIntervention,  # noqa: E402
    last_index,
    pool,
)
from roadinterp.sites import Site  # noqa: E402

D, V = 32, 40
ROOT = Path(__file__).resolve().parents[1]


def tiny(arch: str, init_range: float = 0.02):
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=V, n_positions=32, n_embd=D, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
                         initializer_range=init_range)
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        initializer_range=init_range,
    )
    return LlamaForCausalLM(cfg).eval()


def perturb(adapter: PedroAdapter, seed: int, amount: float = 0.3) -> PedroAdapter:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * amount)
    return adapter


def ids(batch: int = 3, seq: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, V, (batch, seq), generator=torch.Generator().manual_seed(seed))


ARCHS = ["gpt2", "llama"]
POOLINGS = ["last", "mean", "attention"]


# ------------------------------------------------------------------ identity at init
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_linear_identity_at_init(arch, pooling):
    model = tiny(arch)
    x = ids()
    with torch.no_grad():
        ref = model(x).logits
        with apply_pedro(model, PedroConfig(D, 4, pooling=pooling), seed=0):
            out = model(x).logits
        assert torch.equal(out, ref)
        assert torch.equal(model(x).logits, ref)  # removed cleanly


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("positions", ["last", "all"])
def test_site_identity_at_init(arch, positions):
    model = tiny(arch)
    x = ids()
    site = Site(1, "block_output", positions)
    iv = PedroIntervention(D, bottleneck=4, pooling="mean", seed=0)
    pvm = attach_sourceless(model, [site], [iv])
    with torch.no_grad():
        ref = model(x).logits
        out = run_sourceless(pvm, [site], {"input_ids": x}).logits
    assert torch.equal(out, ref)


def test_gpt2_targets_map_to_fused_projections():
    model = tiny("gpt2")
    adapter = PedroAdapter.for_model(model, PedroConfig(D, 2))
    t = {(x.name, x.module, x.start, x.end) for x in adapter.layout["transformer.h.0"]}
    assert t == {
        ("q_proj", "transformer.h.0.attn.c_attn", 0, D),
        ("v_proj", "transformer.h.0.attn.c_attn", 2 * D, 3 * D),
        ("up_proj", "transformer.h.0.mlp.c_fc", 0, 4 * D),
    }
    # raw module names work too
    raw = PedroAdapter.for_model(model, PedroConfig(D, 2), target_modules=["c_fc"])
    assert [x.module for x in raw.layout["transformer.h.1"]] == ["transformer.h.1.mlp.c_fc"]


def test_pedro_scales_only_targets():
    """Keys are untouched on GPT-2: perturbing q/v/up must not change c_attn's k third."""
    model = tiny("gpt2")
    x = ids()
    seen = {}
    h = apply_pedro(model, perturb(PedroAdapter.for_model(model, PedroConfig(D, 4), seed=1), 2))
    wrapped = model.transformer.h[0].attn.c_attn
    wrapped.register_forward_hook(lambda m, a, o: seen.update(on=o.detach()) if "on" not in seen else None)
    with torch.no_grad():
        model(x)
        h.set_active(None)
        out_off = wrapped(model.transformer.h[0].ln_1(model.transformer.wte(x) + model.transformer.wpe(torch.arange(6))))
    h.remove()
    # layer-0 input is the same with or without PEDRO, so the k third must match exactly
    assert torch.equal(seen["on"][..., D:2 * D], out_off[..., D:2 * D])
    assert not torch.allclose(seen["on"][..., :D], out_off[..., :D])


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_bit_exact(arch, tmp_path):
    model = tiny(arch)
    x = ids()
    adapter = perturb(PedroAdapter.for_model(model, PedroConfig(D, 4, pooling="attention"), seed=0), 1)
    io.save(adapter, tmp_path / "a")
    loaded = io.load(tmp_path / "a")
    assert isinstance(loaded, PedroAdapter) and loaded.layout == adapter.layout
    for (k1, g1), (k2, g2) in zip(adapter.items(), loaded.items()):
        assert k1 == k2
        for n, t in g1.tensors().items():
            assert torch.equal(t, g2.tensors()[n])
    with torch.no_grad():
        with apply_pedro(model, adapter):
            a = model(x).logits
        with apply_pedro(model, loaded):
            b = model(x).logits
    assert torch.equal(a, b)


def test_site_adapter_save_load(tmp_path):
    site = Site(0, "block_output", "all")
    adapter = perturb(PedroAdapter.for_sites({site.key(): D}, PedroConfig(D, 3, pooling="mean"), seed=0), 3)
    io.save(adapter, tmp_path / "s")
    loaded = io.load(tmp_path / "s")
    h = torch.randn(2, 5, D)
    a = adapter_interventions(adapter)[site.key()](h)
    b = adapter_interventions(loaded)[site.key()](h)
    assert torch.equal(a, b) and not torch.allclose(a, h)


# ----------------------------------------------------------------------- generation
@pytest.mark.parametrize("arch", ARCHS)
def test_generator_runs_once_per_prompt(arch):
    model = tiny(arch)
    x = ids()
    h = apply_pedro(model, perturb(PedroAdapter.for_model(model, PedroConfig(D, 4), seed=0), 1))
    n_blocks = len(h.adapters[0].layout)
    before = h.generator_calls
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False,
                             pad_token_id=0)
    assert out.shape[1] == x.shape[1] + 6
    assert h.generator_calls - before == n_blocks  # one evaluation per block, not per token
    # decoding reused the prefill vectors: a fresh forward on the prompt gives the first token
    with torch.no_grad():
        first = model(x).logits[:, -1].argmax(-1)
    assert torch.equal(first, out[:, x.shape[1]])
    h.remove()


def test_new_forward_recomputes_vectors():
    """A plain forward without a KV cache is a new prompt: no stale vectors across batches."""
    model = tiny("gpt2")
    h = apply_pedro(model, perturb(PedroAdapter.for_model(model, PedroConfig(D, 4), seed=0), 1))
    a, b = ids(seed=1), ids(seed=2)
    with torch.no_grad():
        ya = model(a).logits
        model(b)
        assert torch.equal(model(a).logits, ya)
    h.remove()


# --------------------------------------------------------------------- mixed batches
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_mixed_batch_equals_per_sample(arch, pooling):
    model = tiny(arch)
    cfg = PedroConfig(D, 4, pooling=pooling, activation="gelu")
    adapters = [perturb(PedroAdapter.for_model(model, cfg, seed=i), 10 + i) for i in range(3)]
    x = ids(batch=6)
    choice = torch.tensor([2, -1, 0, 1, 0, -1])
    h = apply_pedro(model, adapters)
    assert h.active is None
    with torch.no_grad():
        h.reset_cache()
        h.set_adapter_ids(choice)
        mixed = model(x).logits
        h.set_adapter_ids(None)
        rows = []
        for i, a in enumerate(choice.tolist()):
            h.set_active(a)  # every sample adapter a (or none for -1): the unbatched path
            rows.append(model(x[i:i + 1]).logits)
        h.set_active(None)
        plain = model(x).logits
    h.remove()
    torch.testing.assert_close(mixed, torch.cat(rows), atol=1e-5, rtol=0)
    assert torch.equal(mixed[choice == -1], plain[choice == -1])


def test_mixed_generation_equals_per_sample():
    model = tiny("llama")
    cfg = PedroConfig(D, 4)
    adapters = [perturb(PedroAdapter.for_model(model, cfg, seed=i), 20 + i, 1.0) for i in range(2)]
    x = ids(batch=4)
    choice = torch.tensor([1, 0, -1, 1])
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad(), apply_pedro(model, adapters) as h:
        h.set_adapter_ids(choice)
        mixed = model.generate(x, attention_mask=torch.ones_like(x), **kw)
        for i in range(4):
            h.set_adapter_ids(choice[i:i + 1])
            one = model.generate(x[i:i + 1], attention_mask=torch.ones_like(x[i:i + 1]), **kw)
            assert torch.equal(one, mixed[i:i + 1])


def test_serving_protocol():
    model = tiny("gpt2")
    adapters = [perturb(PedroAdapter.for_model(model, PedroConfig(D, 2), seed=i), i) for i in range(2)]
    x = ids(batch=3)
    choice = torch.tensor([1, -1, 0])
    try:
        from roadinterp.adapters import serve
    except ImportError:
        serve = None
    if serve is not None:
        with torch.no_grad(), apply_pedro(model, adapters) as h:
            mixed = serve.forward(model, x, choice).logits
            h.set_adapter_ids(choice)
            direct = model(x).logits
            h.set_adapter_ids(None)
            gen = serve.generate(model, x, adapter_ids=choice, max_new_tokens=3)
            h.set_adapter_ids(choice)
            gen_direct = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=3, do_sample=False,
                                        pad_token_id=0)
        assert torch.equal(mixed, direct) and torch.equal(gen, gen_direct)
    h = apply_pedro(model, PedroConfig(D, 2))
    layers = [m for m in model.modules() if hasattr(m, "set_adapter_ids") and hasattr(m, "reset_cache")]
    assert layers
    try:
        from roadinterp.adapters.serve import BatchedAdapterLayer  # written by another engineer
    except ImportError:
        BatchedAdapterLayer = None
    if BatchedAdapterLayer is not None:
        assert all(isinstance(m, BatchedAdapterLayer) for m in layers)
    for m in layers:
        m.reset_cache()
        m.set_adapter_ids(torch.tensor([0, -1]))
    with pytest.raises(ConfigError, match="-1..0"):
        layers[0].set_adapter_ids(torch.tensor([3, 0]))
    h.remove()


def test_pooling_with_padding_mask():
    h = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_index(mask).tolist() == [2, 4, 4]
    torch.testing.assert_close(pool(h, "last", mask)[0], h[0, 2])
    torch.testing.assert_close(pool(h, "mean", mask)[1], h[1, 2:].mean(0))
    torch.testing.assert_close(pool(h, "attention", mask, torch.zeros(4)), pool(h, "mean", mask))


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pooling="max"), "'max'"),
        (dict(bottleneck=0), "bottleneck must be an int >= 1, got 0"),
        (dict(activation="swish"), "'swish'"),
        (dict(dim=-3), "-3"),
    ],
)
def test_bad_config(kwargs, match):
    args = dict(dim=D, bottleneck=4) | kwargs
    with pytest.raises(ConfigError, match=match):
        PedroConfig(**args)


@pytest.mark.parametrize("arch", ARCHS)
def test_unknown_target_module(arch):
    model = tiny(arch)
    with pytest.raises(ConfigError, match="target module 'qq_proj' does not exist"):
        apply_pedro(model, PedroConfig(D, 2), target_modules=("q_proj", "qq_proj"))
    assert not any(type(m).__name__ == "PedroLinear" for m in model.modules())


def test_width_mismatch_and_double_apply():
    model = tiny("gpt2")
    with pytest.raises(ConfigError, match="hidden size 32"):
        apply_pedro(model, PedroConfig(16, 2))
    h = apply_pedro(model, PedroConfig(D, 2))
    with pytest.raises(ConfigError, match="already has PEDRO"):
        apply_pedro(model, PedroConfig(D, 2))
    h.remove()


# -------------------------------------------------------------------------- training
def test_pedro_intervention_trains_through_pyvene():
    model = tiny("gpt2", init_range=0.2)  # larger weights: a scaling can move the logits
    for p in model.parameters():
        p.requires_grad_(False)
    site = Site(0, "block_output", "all")
    iv = PedroIntervention(D, bottleneck=8, pooling="mean", seed=0)
    pvm = attach_sourceless(model, [site], [iv])
    x = ids(batch=16, seq=5, seed=3)
    target = (x[:, 0] % 2) + 1  # next token depends on the prompt
    opt = torch.optim.Adam(iv.parameters(), lr=1e-1)
    losses = []
    for _ in range(40):
        logits = run_sourceless(pvm, [site], {"input_ids": x}).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_linear_pedro_trains():
    model = tiny("llama", init_range=0.2)
    for p in model.parameters():
        p.requires_grad_(False)
    h = apply_pedro(model, PedroConfig(D, 8, pooling="last"), seed=0)
    x = ids(batch=16, seq=5, seed=4)
    target = (x[:, 0] % 2) + 1
    opt = torch.optim.Adam(h.parameters(), lr=1e-1)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x).logits[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    h.remove()
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------ experiment
@pytest.mark.slow
def test_finetune_compare_quick(tmp_path):
    out = tmp_path / "results.md"
    out.write_text("# Results\n\n## Other section\n\nkeep me\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", ROADINTERP_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "finetune_compare.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "keep me" in text
    assert "## PEDRO" in text
    for method in ("road_1", "road_2", "road_4", "pedro", "lora", "ia3"):
        assert f"| {method}" in text


def test_decode_step_is_recognised_under_both_cache_kwargs():
    """transformers <= 5.23 hands the KV cache over as ``past_key_values``, 5.24 as ``cache``:
    both must mark a decoding step (else the generator would run again at every token)."""
    from roadinterp.adapters.pedro_linear import _is_decode

    class FakeCache:
        def __init__(self, n):
            self.n = n

        def get_seq_length(self):
            return self.n

    t = torch.zeros(1, 2, 3, 4)
    for name in ("past_key_values", "cache"):
        assert _is_decode((), {name: FakeCache(5)}) is True
        assert _is_decode((), {name: FakeCache(0)}) is False  # prefill into an empty cache
    assert _is_decode((), {"past_key_values": ((t, t),)}) is True  # legacy tuple cache
    assert _is_decode((), {"cache": True}) is False  # not a cache object
    assert _is_decode((), {}) is False
