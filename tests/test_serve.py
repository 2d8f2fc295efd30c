"""Mixed-adapter batches equal per-sample single-adapter runs (Linear and hidden-state placements)."""

from __future__ import annotations

import pytest
import torch
from test_linear import tiny_gpt2, tiny_llama
from torch import nn

from roadinterp.adapters import serve
from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.linear import apply_road, linear_targets, merge, road_layers
from roadinterp.errors import ConfigError, ShapeError
from roadinterp.interventions import RoadIntervention, attach_sourceless, run_sourceless
from roadinterp.sites import Site

ATOL = 1e-5
MODELS = [tiny_llama, tiny_gpt2]
IDS = [1, -1, 0, 2, 1]


def prompts(n=len(IDS), t=6, seed=0):
    return torch.randint(1, 100, (n, t), generator=torch.Generator().manual_seed(seed))


def linear_bank(model, n=3):
    targets = linear_targets(model, "all-linear")
    return {f"a{i}": RoadAdapter(targets, group_size=32, placement="linear", init="random", seed=i)
            for i in range(n)}


SITES = {"0:block_output:all": 64, "1:block_output:last": 64}


def site_bank(n=3, sites=SITES):
    return {f"s{i}": RoadAdapter(sites, group_size=16, placement="site", init="random", seed=10 + i)
            for i in range(n)}


# ------------------------------------------------------------------ Linear placement
@pytest.mark.parametrize("make", MODELS)
def test_linear_forward_mixed_equals_each_alone(make):
    model, x = make(), prompts()
    bank = linear_bank(model)
    out = serve.forward(model, x, IDS, adapters=bank).logits
    assert not road_layers(model)  # the bank was scoped to the call
    with torch.no_grad():
        for b, i in enumerate(IDS):
            if i < 0:
                want = model(x[b:b + 1]).logits
            else:
                with apply_road(model, bank[f"a{i}"]):
                    want = model(x[b:b + 1]).logits
            torch.testing.assert_close(out[b], want[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("make", MODELS)
def test_linear_generate_mixed_equals_merged_single(make):
    model, x = make(), prompts()
    bank = linear_bank(model)
    with apply_road(model, bank) as handle:  # installed once, routed per call
        out = serve.generate(model, x, adapter_ids=handle.ids(["a1", None, "a0", "a2", "a1"]), max_new_tokens=6)
        assert out.shape == (len(IDS), x.shape[1] + 6)
        logits = serve.forward(model, x, IDS).logits
    with torch.no_grad():
        for b, i in enumerate(IDS):
            if i < 0:
                want = model.generate(x[b:b + 1], max_new_tokens=6, do_sample=False, pad_token_id=0)
            else:
                with apply_road(model, bank[f"a{i}"]):
                    merge(model)  # an independent path: W' = R W, plain generate
                    want = model.generate(x[b:b + 1], max_new_tokens=6, do_sample=False, pad_token_id=0)
                    with pytest.raises(ConfigError, match="unmerge"):  # merged weights cannot be routed
                        serve.generate(model, x[b:b + 1], adapter_ids=[-1], max_new_tokens=6)
            assert torch.equal(out[b], want[0]), (b, i)
    assert logits.shape[0] == len(IDS)


# ------------------------------------------------------------------ hidden-state sites
def _pyvene_oracle(model, adapter, x):
    sites, ivs, units = [], [], []
    for key, dim in adapter.targets.items():
        site = Site.from_key(key)
        iv = RoadIntervention(dim, group_size=adapter.rotation(key).group_size)
        iv.rotation.load_state_dict(adapter.rotation(key).state_dict())
        sites.append(site)
        ivs.append(iv)
        units.append(x.shape[1] if site.positions == "all" else 1)
    pvm = attach_sourceless(model, sites, ivs, n_units=units)
    with torch.no_grad():
        return run_sourceless(pvm, sites, {"input_ids": x}).logits


@pytest.mark.parametrize("make", MODELS)
def test_site_forward_mixed_equals_pyvene_single(make):
    model, x = make(), prompts()
    bank = site_bank()
    out = serve.forward(model, {"input_ids": x}, IDS, adapters=bank).logits
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for b, i in enumerate(IDS):
        if i < 0:
            with torch.no_grad():
                want = model(x[b:b + 1]).logits
        else:
            want = _pyvene_oracle(model, bank[f"s{i}"], x[b:b + 1])
        torch.testing.assert_close(out[b], want[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("component", ["block_output", "mlp_output"])
def test_site_generate_mixed_equals_each_alone(make, component):
    model, x = make(), prompts()
    sites = {f"0:{component}:all": 64, f"1:{component}:last": 64}
    bank = site_bank(sites=sites)
    names = [None if i < 0 else f"s{i}" for i in IDS]
    out = serve.generate(model, x, adapter_ids=names, adapters=bank, max_new_tokens=6)
    base = serve.generate(model, x, adapter_ids=[-1] * len(IDS), adapters=bank, max_new_tokens=6)
    assert not torch.equal(out, base)
    for b, i in enumerate(IDS):
        alone = {"only": bank[f"s{i}"]} if i >= 0 else bank
        single = serve.generate(model, x[b:b + 1], adapter_ids=[0 if i >= 0 else -1], adapters=alone,
                                max_new_tokens=6)
        assert torch.equal(out[b], single[0]), (b, i)
    # logits of the whole generated sequence agree too (no token-level luck)
    full = serve.forward(model, out, IDS, adapters={k: _all_positions(v) for k, v in bank.items()}).logits
    for b, i in enumerate(IDS):
        if i >= 0:
            want = _pyvene_oracle(model, _all_positions(bank[f"s{i}"]), out[b:b + 1])
            torch.testing.assert_close(full[b], want[0], atol=ATOL, rtol=0)


def _all_positions(adapter):
    keys = {k: Site.from_key(k) for k in adapter.targets}
    new = RoadAdapter({Site(s.layer, s.component, "all").key(): adapter.targets[k] for k, s in keys.items()},
                      group_size=16, placement="site")
    for k, s in keys.items():
        new.rotation(Site(s.layer, s.component, "all").key()).load_state_dict(adapter.rotation(k).state_dict())
    return new


# ------------------------------------------------------------------ protocol
class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def set_adapter_ids(self, ids):
        self.calls.append(("ids", None if ids is None else ids.tolist()))

    def reset_cache(self):
        self.calls.append(("reset",))

    def forward(self, x):
        self.calls.append(("forward",))
        return x


def test_protocol_layers_are_reset_routed_and_cleared():
    rec = Recorder()
    assert isinstance(rec, serve.BatchedAdapterLayer)
    model = nn.Sequential(rec, nn.Identity())
    serve.forward(model, torch.zeros(3, 2), [0, -1, 2])
    assert rec.calls == [("reset",), ("ids", [0, -1, 2]), ("forward",), ("ids", None)]
    rec.calls.clear()

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        serve.forward(nn.Sequential(rec, Boom()), torch.zeros(1, 2), [1])
    assert rec.calls[-1] == ("ids", None)


def test_bad_ids_are_config_errors():
    model = tiny_llama()
    bank = linear_bank(model, n=2)
    with pytest.raises(ConfigError, match="3 entries"):
        serve.forward(model, prompts(2), [0, 1, 1], adapters=bank)
    with pytest.raises(ConfigError, match="-1..1"):
        serve.forward(model, prompts(2), [0, 5], adapters=bank)
    with pytest.raises(ConfigError, match="zzz"):
        serve.forward(model, prompts(2), ["a0", "zzz"], adapters=bank)
    with pytest.raises(ConfigError, match="no batched adapter layers"):
        serve.forward(model, prompts(2), [0, 1])
    assert not road_layers(model)


def test_ragged_prompts_are_left_padded():
    model = tiny_llama()
    bank = site_bank(sites={"0:block_output:all": 64})
    out = serve.generate(model, [[5, 6, 7], [8, 9]], adapter_ids=[0, 1], adapters=bank, max_new_tokens=3)
    assert out.shape == (2, 6) and out[1, 0].item() == 0


@pytest.mark.slow
def test_bench_batching_quick_returns_all_ratios():
    from roadinterp.bench.bench_batching import run

    res = run(quick=True)
    assert set(res["ratios"]) == {
        "distinct_vs_shared", "distinct_vs_base", "distinct_vs_peft_road", "distinct_vs_peft_lora",
        "distinct_vs_sequential", "distinct_vs_base_prefill",
    }
    assert all(v > 0 for v in res["ratios"].values())
    assert res["checks"]["distinct_equals_peft_road"] and res["checks"]["distinct_equals_sequential"]


# ------------------------------------------------------------ the fused tail and the LM bench
@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
@pytest.mark.parametrize("group_size", [2, 8, 64])
@pytest.mark.parametrize("kernel", [True, False])
def test_fused_tail_equals_rotation(variant, group_size, kernel, monkeypatch):
    from roadinterp.road import fused
    from roadinterp.road import rotation as rot

    if not kernel:
        monkeypatch.setattr(fused, "_kernel", False)  # the pure-torch fallback
    d, b = 128, 3
    g = torch.Generator().manual_seed(group_size)
    n = rot.n_params(d, variant)
    c1, c2 = rot.coefficients(torch.randn(b, n, generator=g), 1 + torch.rand(b, n, generator=g), variant, group_size)
    sign = torch.where((torch.arange(d) % group_size) < group_size // 2, -1.0, 1.0)
    y = torch.randn(b, 5, d, generator=g)
    want = rot.apply(y, c1[:, None], c2[:, None], group_size)  # independent: rotate_half_grouped
    with torch.no_grad():
        got = fused.rotate_(y.clone(), c1, c2 * sign, group_size)
        one = fused.rotate_(y.clone(), c1[1], (c2 * sign)[1], group_size)  # one row for every sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one, rot.apply(y, c1[1], c2[1], group_size), atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("why", ["build", "disabled"])
def test_fused_tail_falls_back_when_the_kernel_cannot_be_used(why, monkeypatch):
    """No compiler / no ninja / an unwritable cache (any build error) or ROADINTERP_FUSED=0:
    no traceback, the pure-torch path, and status() says why."""
    from roadinterp.road import fused
    from roadinterp.road import rotation as rot

    def broken():
        raise RuntimeError("Ninja is required to load C++ extensions\n(pip install ninja)")

    monkeypatch.setattr(fused, "_kernel", None)  # not tried yet in this process
    monkeypatch.setattr(fused, "_load", broken)
    monkeypatch.setenv("ROADINTERP_FUSED", "0" if why == "disabled" else "1")
    d, g = 16, 8
    c1, c2 = rot.coefficients(torch.randn(2, d // 2), 1 + torch.rand(2, d // 2), "road_1", g)
    sign = torch.where((torch.arange(d) % g) < g // 2, -1.0, 1.0)
    y = torch.randn(2, 3, d)
    with torch.no_grad():
        got = fused.rotate_(y.clone(), c1, c2 * sign, g)
    torch.testing.assert_close(got, rot.apply(y, c1[:, None], c2[:, None], g), atol=1e-5, rtol=1e-5)
    assert fused.kernel() is None
    want = "disabled by ROADINTERP_FUSED=0" if why == "disabled" else "RuntimeError: Ninja is required"
    assert fused.status().startswith("torch fallback (") and want in fused.status()


def test_fused_build_waits_for_a_held_lock_then_gives_up_naming_it(tmp_path, monkeypatch):
    """torch's build lock, left by an interrupted build, would block forever: bounded wait, then fall back."""
    from roadinterp.road import fused

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(fused, "BUILD_WAIT_S", 0.2)
    lock = fused.built_path().parent / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    with pytest.raises(TimeoutError, match="delete the file"):
        fused._load()
    monkeypatch.setattr(fused, "_kernel", None)
    assert fused.kernel() is None and str(lock) in fused.status()
    assert not fused.built_path().exists()  # nothing was built behind the lock


@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_gathered_coefficients_equal_rows_of_the_full_tables(variant):
    """What RoadLinear and RoadSiteBank compute per batch == rows of bank_tables (the -1 row included)."""
    from roadinterp.road import rotation as rot
    from roadinterp.road.bank import bank_tables, expand_ids, gather_coefficients

    d, g, n = 32, 8, 5
    gen = torch.Generator().manual_seed(1)
    k = rot.n_params(d, variant)
    thetas, alphas = torch.randn(n, k, generator=gen), 1 + torch.rand(n, k, generator=gen)
    mask = torch.rand(n, d, generator=gen) > 0.5
    ids = torch.tensor([3, -1, 0, 4, 3])
    c1, c2 = bank_tables(thetas, alphas, variant, g, mask)
    got = gather_coefficients(thetas, alphas, ids, variant, g, mask)
    torch.testing.assert_close(got, (c1[ids], c2[ids]), atol=0, rtol=0)
    assert torch.equal(expand_ids(ids, 10), torch.tensor([3, 3, -1, -1, 0, 0, 4, 4, 3, 3]))
    with pytest.raises(ShapeError, match="batch of 7 but 5 adapter ids"):
        expand_ids(ids, 7)

def test_bank_rows_are_gathered_per_batch_without_tables():
    model, x = tiny_llama(), prompts()
    bank = linear_bank(model)
    with serve.route(model, IDS, adapters=bank) as layers:
        with torch.no_grad():
            model(x)
        road = [m for m in layers if hasattr(m, "_tables")]
        assert road and all(m._tables is None for m in road)  # no [n_adapters + 1, d] tables were built
        c1, c2s = road[0]._rows
        assert c1.shape == (len(IDS), road[0].dim)
        assert torch.equal(c1[1], torch.ones_like(c1[1])) and torch.equal(c2s[1], torch.zeros_like(c2s[1]))  # id -1



def test_rows_are_gathered_once_per_batch_with_grad_mode_on(monkeypatch):
    """A user's decoding loop without torch.no_grad(): the bank is frozen, so no step re-gathers."""
    from roadinterp.adapters.linear import RoadLinear

    model, x = tiny_llama(), prompts()
    calls = []
    gather = RoadLinear._gather
    monkeypatch.setattr(RoadLinear, "_gather", lambda self, batch: calls.append(self) or gather(self, batch))
    with serve.route(model, IDS, adapters=linear_bank(model)):
        assert torch.is_grad_enabled()
        first = model(x).logits
        again = model(x).logits
        n_layers = len(road_layers(model))
    assert n_layers and len(calls) == n_layers  # one gather per layer per batch, not per call
    torch.testing.assert_close(again, first, atol=0, rtol=0)

def test_lm_bench_quick_mixed_equals_per_sample():
    """The real-LM bench's code path on a tiny Llama: its checks hold and its loop is HF generate's."""
    from roadinterp.bench.bench_batching_lm import _prompts, greedy, run_lm

    model = tiny_llama()
    res = run_lm(model, quick=True)
    assert res["checks"]["distinct_equals_sequential"] and res["checks"]["distinct_equals_peft_road"]
    assert {"distinct_vs_base", "distinct_vs_base_prefill", "distinct_vs_shared", "distinct_vs_peft_road",
            "distinct_vs_peft_lora", "distinct_vs_sequential"} <= set(res["ratios"])
    assert all(v > 0 for v in res["ratios"].values())
    assert 0 < res["bank"]["fraction_of_model"] and res["bank"]["adapters"] == 50

    # the bench's greedy loop (left padding, position ids from the mask) == serve.generate
    cfg = {"batch": 4, "min_prompt": 3, "max_prompt": 7}
    _, ids, mask = _prompts(cfg, 100)
    bank = linear_bank(model, n=4)
    want = serve.generate(model, ids, adapter_ids=[0, 1, 2, 3], adapters=bank, attention_mask=mask,
                          max_new_tokens=4, pad_token_id=0)[:, ids.shape[1]:]
    with serve.route(model, [0, 1, 2, 3], adapters=bank):
        _, _, got = greedy(model, ids, mask, 4)
    assert torch.equal(got, want)


def test_lm_sweep_quick_covers_every_point():
    """The sweep behind docs/data/batching_sweep.json runs on a tiny Llama: one row per point, ratios > 0."""
    from roadinterp.bench.bench_batching_lm import sweep
    from roadinterp.road import fused

    res = sweep(tiny_llama(), batches=(1, 2), distinct=(1, 2), prompt=4, new=3, reps=1, quick=True)
    assert [(r["axis"], r["batch"], r["n_distinct"]) for r in res["rows"]] == [
        ("batch", 1, 1), ("batch", 2, 2), ("distinct", 2, 1)]
    assert all(v > 0 for r in res["rows"] for k, v in r.items() if k.startswith("distinct_vs_"))
    assert res["tail"] == fused.status()
