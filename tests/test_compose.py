"""Composition of RoAd adapters on disjoint blocks, and the LoReFT baseline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.attach import adapter_interventions, evaluate, forward
from roadinterp.adapters.compose import compose, restrict, split_blocks
from roadinterp.adapters.composition import train_composable
from roadinterp.errors import ConfigError, OverlapError, ShapeError
from roadinterp.interventions import attach_sourceless, run_sourceless
from roadinterp.interventions.loreft import LoreftAdapter, LoreftIntervention, concat_loreft
from roadinterp.sites import Site

ROOT = Path(__file__).resolve().parents[1]
D = 32  # tiny gpt2 width
SITES = [Site(0, "block_output", "all"), Site(1, "block_output", "last")]


def _targets(sites=SITES, d=D):
    return {s.key(): d for s in sites}


def _random_adapter(blocks, variant="road_2", seed=0, group_size=8, sites=SITES):
    ad = RoadAdapter(_targets(sites), variant=variant, group_size=group_size, blocks=blocks, init="random", seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for _, r in ad.items():
            r.alpha.copy_(0.5 + torch.rand(r.alpha.shape, generator=g))
    return ad


def _pair(variant="road_2", group_size=8):
    own = split_blocks(D // 2, ["a", "b"])
    return own, _random_adapter(own["a"], variant, 0, group_size), _random_adapter(own["b"], variant, 1, group_size)


def _ids(n=6, seq=5):
    return {"input_ids": torch.randint(0, 50, (n, seq))}


# ------------------------------------------------------------------ blocks
def test_split_blocks_disjoint_and_covering():
    own = split_blocks(32, ["op", "format"])
    assert own == {"op": list(range(16)), "format": list(range(16, 32))}
    own = split_blocks(10, ["a", "b", "c"], fractions=[0.5, 0.2, 0.3])
    assert sum(map(len, own.values())) == 10
    assert not set(own["a"]) & set(own["b"]) and not set(own["b"]) & set(own["c"])
    with pytest.raises(ConfigError, match="fractions"):
        split_blocks(10, ["a", "b"], fractions=[0.8, 0.8])
    with pytest.raises(ConfigError, match="distinct"):
        split_blocks(10, ["a", "a"])


# ---------------------------------------------------- exactness of compose
@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
@pytest.mark.parametrize("group_size", [2, 8, 32])
def test_compose_disjoint_equals_applying_both_rotation_level(variant, group_size):
    own, a, b = _pair(variant, group_size)
    c = compose({"a": a, "b": b})
    assert c.blocks == list(range(D // 2))
    assert c.meta["owners"] == own
    h = torch.randn(4, 3, D)
    for key in a.targets:
        both = b.rotation(key)(a.rotation(key)(h))
        other_order = a.rotation(key)(b.rotation(key)(h))
        got = c.rotation(key)(h)
        assert torch.equal(got, both)
        assert torch.equal(got, other_order)  # they commute
        # and the dense matrices: R_{A u B} = R_A R_B
        assert torch.allclose(c.rotation(key).matrix(), a.rotation(key).matrix() @ b.rotation(key).matrix(), atol=1e-6)


def test_compose_disjoint_equals_applying_both_through_model():
    model = tiny_model("gpt2")
    _, a, b = _pair()
    c = compose({"a": a, "b": b})
    x = _ids()
    iva, ivb = adapter_interventions(a), adapter_interventions(b)
    # both adapters attached at once: two interventions per site, applied in turn
    sites = SITES + SITES
    ivs = [iva[s.key()] for s in SITES] + [ivb[s.key()] for s in SITES]
    pvm = attach_sourceless(model, sites, ivs, n_units=[5, 1, 5, 1])
    with torch.no_grad():
        both = run_sourceless(pvm, sites, x).logits
        composed = forward(model, c, x).logits
        only_a = forward(model, a, x).logits
        base = model(**x).logits
    assert torch.allclose(composed, both, atol=1e-6)
    assert not torch.allclose(composed, only_a, atol=1e-3)
    assert not torch.allclose(composed, base, atol=1e-3)


# ------------------------------------------------------------------ overlap
def test_overlap_is_refused_with_names_and_blocks():
    a = _random_adapter(list(range(0, 10)), seed=0)
    b = _random_adapter(list(range(6, 16)), seed=1)
    with pytest.raises(OverlapError, match=r"'a' and 'b' both own 4 block\(s\): 6, 7, 8, 9") as err:
        compose({"a": a, "b": b})
    assert "resolve='first'" in str(err.value)
    # an adapter on all blocks overlaps everything
    with pytest.raises(OverlapError):
        compose({"a": a, "all": _random_adapter(None, seed=2)})


def test_resolve_first_and_mean():
    a = _random_adapter(list(range(0, 10)), seed=0)
    b = _random_adapter(list(range(6, 16)), seed=1)
    first = compose({"a": a, "b": b}, resolve="first")
    # shared blocks 6..9 keep a's parameters: equals a (+) (b restricted to 10..15)
    ref = compose({"a": a, "b": restrict(b, range(10, 16))})
    h = torch.randn(3, D)
    for key in a.targets:
        assert torch.equal(first.rotation(key)(h), ref.rotation(key)(h))
    assert first.meta["owners"]["b"] == list(range(6, 16))
    assert first.meta["resolve"] == "first"
    # order decides who wins
    b_first = compose({"b": b, "a": a}, resolve="first")
    ref_b = compose({"b": b, "a": restrict(a, range(0, 6))})
    key = SITES[0].key()
    assert torch.equal(b_first.rotation(key)(h), ref_b.rotation(key)(h))
    mean = compose({"a": a, "b": b}, resolve="mean")
    ra, rb, rm = a.rotation(key), b.rotation(key), mean.rotation(key)
    from roadinterp.road import rotation as rot

    shared = rot.block_param_mask(torch.arange(6, 10), D, "road_2", 8)
    assert torch.allclose(rm.theta[shared], (ra.theta[shared] + rb.theta[shared]) / 2)
    only_a = rot.block_param_mask(torch.arange(0, 6), D, "road_2", 8)
    assert torch.equal(rm.theta[only_a], ra.theta[only_a])


def test_incompatible_adapters_are_refused():
    _, a, _ = _pair()
    with pytest.raises(ConfigError, match="variants"):
        compose({"a": a, "b": _random_adapter(list(range(12, 16)), variant="road_1")})
    other = RoadAdapter({SITES[0].key(): D}, variant="road_2", group_size=8, blocks=[15])
    with pytest.raises(ShapeError, match="targets or widths"):
        compose({"a": a, "b": other})
    with pytest.raises(ShapeError, match="group sizes"):
        compose({"a": a, "b": _random_adapter(list(range(12, 16)), group_size=4)})
    with pytest.raises(ConfigError, match="resolve"):
        compose({"a": a}, resolve="last")
    with pytest.raises(ConfigError, match="weights"):
        compose({"a": a}, weights={"z": 1.0})


# ------------------------------------------------------------------- lambda
def test_lambda_zero_is_the_base_model_and_one_the_adapter():
    model = tiny_model("gpt2")
    _, a, b = _pair()
    x = _ids()
    with torch.no_grad():
        base = model(**x).logits
        zero = forward(model, compose({"a": a, "b": b}, weights={"a": 0.0, "b": 0.0}), x).logits
        assert torch.equal(zero, base)
        assert torch.equal(forward(model, a.scaled(0.0), x).logits, base)
        one = compose({"a": a, "b": b}, weights={"a": 1.0, "b": 1.0})
        plain = compose({"a": a, "b": b})
        assert torch.equal(forward(model, one, x).logits, forward(model, plain, x).logits)
        # lambda 0 on one component leaves exactly the other adapter
        only_b = compose({"a": a, "b": b}, weights={"a": 0.0})
        assert torch.equal(forward(model, only_b, x).logits, forward(model, b, x).logits)


# ----------------------------------------------------------------- training
def test_joint_training_routes_gradients_to_the_task_blocks():
    model = tiny_model("gpt2")
    own = split_blocks(D // 2, ["a", "b"])
    ad = RoadAdapter(_targets(), variant="road_2", group_size=8, blocks=own["a"] + own["b"], init="random", seed=0)
    ivs = adapter_interventions(ad)
    assert all(ivs[k].rotation is ad.rotation(k) for k in ad.targets)  # shared parameters
    pvm = attach_sourceless(model, SITES, [ivs[s.key()] for s in SITES], n_units=[5, 1])
    x = _ids(4)
    from roadinterp.road import rotation as rot

    for task in ("a", "b"):
        ad.zero_grad()
        out = run_sourceless(pvm, SITES, x, subspaces=[[own[task]] * 4] * len(SITES))
        out.logits[:, -1].logsumexp(-1).sum().backward()
        other = own["b" if task == "a" else "a"]
        for key, r in ad.items():
            mine = rot.block_param_mask(torch.tensor(own[task]), D, "road_2", 8)
            theirs = rot.block_param_mask(torch.tensor(other), D, "road_2", 8)
            assert torch.count_nonzero(r.theta.grad[theirs]) == 0
            assert torch.count_nonzero(r.alpha.grad[theirs]) == 0
            assert torch.count_nonzero(r.theta.grad[mine]) > 0


@pytest.mark.parametrize("joint", [False, True])
def test_train_composable_keeps_blocks_apart(joint):
    model = tiny_model("gpt2")
    own = split_blocks(D // 2, ["a", "b"])
    torch.manual_seed(1)
    x = {"input_ids": torch.randint(0, 20, (64, 5))}
    data = {"a": (x, torch.randint(0, 20, (64,))), "b": (x, torch.randint(0, 20, (64,)))}
    from roadinterp.tasks.base import TokenTask

    class _Toy(TokenTask):  # logits over the first 20 tokens at the last position
        name, variables, rivals, positions = "toy", (), {}, {}
        vocab = [str(i) for i in range(50)]
        answer_tokens = vocab[:20]

    ads = train_composable(model, data, SITES, own, joint, task=_Toy(), steps=5, batch_size=32, lr=0.1, seed=0)
    from roadinterp.road import rotation as rot

    for name, ad in ads.items():
        assert ad.blocks == own[name]
        for _, r in ad.items():
            out = ~rot.block_param_mask(torch.tensor(own[name]), D, "road_2", r.group_size)
            assert torch.all(r.theta[out] == 0) and torch.all(r.alpha[out] == 1)
            assert torch.count_nonzero(r.theta) > 0
    c = compose(ads)
    acc = evaluate(model, c, x, data["a"][1], _Toy())
    assert 0.0 <= acc <= 1.0


# ------------------------------------------------------------------- LoReFT
def test_loreft_is_orthonormal_and_concat_stacks_rows():
    model = tiny_model("gpt2")
    a = LoreftAdapter(_targets(), rank=2, seed=0)
    b = LoreftAdapter(_targets(), rank=3, seed=1)
    for _, iv in a.items():
        assert torch.allclose(iv.R @ iv.R.T, torch.eye(2), atol=1e-5)
    c = concat_loreft({"a": a, "b": b})
    assert c.meta["owners"] == {"a": [0, 1], "b": [2, 3, 4]}
    h = torch.randn(3, 4, D)
    key = SITES[0].key()
    ia, ib, ic = a.intervention(key), b.intervention(key), c.intervention(key)
    R = torch.cat([ia.R, ib.R])
    W = torch.cat([ia.learned_source.weight, ib.learned_source.weight])
    bias = torch.cat([ia.learned_source.bias, ib.learned_source.bias])
    with torch.no_grad():
        ref = h + (h @ W.T + bias - h @ R.T) @ R
        assert torch.allclose(ic(h), ref, atol=1e-5)
        # routing to a's rows only gives a's edit
        assert torch.allclose(ic(h, subspaces=[[0, 1]] * 3), ia(h), atol=1e-5)
        out = forward(model, c, _ids()).logits
    assert out.shape == (6, 5, 50)
    with pytest.raises(ConfigError, match="rank"):
        LoreftIntervention(D, rank=0)


def test_loreft_trains_through_pyvene():
    from roadinterp.tasks.base import TokenTask
    from roadinterp.training import train_adapter

    class _Toy(TokenTask):
        name, variables, rivals, positions = "toy", (), {}, {}
        vocab = [str(i) for i in range(50)]
        answer_tokens = vocab[:20]

    model = tiny_model("gpt2")
    ad = LoreftAdapter(_targets(SITES[1:]), rank=2, seed=0)
    x = {"input_ids": torch.randint(0, 50, (32, 5))}
    y = torch.randint(0, 20, (32,))
    losses = train_adapter(model, SITES[1:], [ad.intervention(SITES[1].key())], x, y, task=_Toy(),
                           steps=30, batch_size=32, lr=0.05)
    assert losses[-1] < losses[0]
    iv = ad.intervention(SITES[1].key())
    assert torch.allclose(iv.R @ iv.R.T, torch.eye(2), atol=1e-4)


# --------------------------------------------------------------- experiment
@pytest.mark.slow
def test_experiment_quick_writes_its_table(tmp_path):
    out = tmp_path / "results.md"
    out.write_text("# Results\n\n## Other\n\nkept\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "composition.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "## Other\n\nkept" in text
    assert "## Composition" in text
    for cond in ("base", "op only", "format only", "op+format"):
        assert f"| {cond} " in text
    assert "LoReFT" in text and "lambda" in text
    # re-writing replaces the section instead of appending a second one
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import composition
    finally:
        sys.path.pop(0)
    composition.write_section(out, composition.SECTION, "new body")
    text = out.read_text()
    assert text.count("## Composition") == 1 and "new body" in text and "## Other\n\nkept" in text
