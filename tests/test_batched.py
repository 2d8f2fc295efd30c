"""Batched DII candidates: same results as one train_dii per seed, routing, grouping."""

import pytest
import torch

from roadinterp.dii.batched import (
    batch_groups,
    train_dii_batched,
)
from roadinterp.dii.config import DIIConfig
from roadinterp.dii.train import train_dii
from roadinterp.errors import ConfigError, ShapeError
from roadinterp.interventions.road import RoadInterchange
from roadinterp.sites import Site
from roadinterp.tasks import CounterfactualBatch, get_task

SMALL = dict(size=4, n_train=512, n_test=512, epochs=2, batch_size=128)


@pytest.fixture(scope="module")
def setup():
    from roadinterp import zoo

    return zoo.load_model("zoo:hierarchical-equality-mlp", device="cpu"), get_task("hierarchical-equality")


@pytest.mark.parametrize("engine", ["auto", "pyvene"])
@pytest.mark.parametrize("family", ["butterfly", "road", "neuron-fixed"])
def test_batched_equals_sequential_per_seed(setup, family, engine):
    model, task = setup
    site = Site(1)
    configs = [DIIConfig(family=family, seed=s, engine=engine, **SMALL) for s in range(3)]
    seq = [train_dii(model, task, site, config=c) for c in configs]
    bat = train_dii_batched(model, task, site, configs)
    assert [r.config.seed for r in bat] == [0, 1, 2]
    assert {r.engine for r in bat} == {r.engine for r in seq} == {"replay" if engine == "auto" else "pyvene"}
    for a, b in zip(seq, bat):
        assert abs(a.iia - b.iia) <= 0.02
        assert abs(a.train_iia - b.train_iia) <= 0.02
        assert a.coords == b.coords
        assert len(a.losses) == len(b.losses)
        if a.losses:
            assert max(abs(x - y) for x, y in zip(a.losses, b.losses)) < 1e-4
        if family != "neuron-fixed":
            ta, tb = a.interventions[0].theta, b.interventions[0].theta
            assert isinstance(b.interventions[0], RoadInterchange)
            assert torch.allclose(ta, tb, atol=1e-4), (ta - tb).abs().max()


def test_batched_forward_matches_each_candidate_gather_and_blocks():
    ivs = [RoadInterchange(16, family="butterfly", depth=2, seed=s) for s in range(3)]
    biv = RoadInterchange.stack(ivs)
    base, src = torch.randn(6, 2, 16), torch.randn(6, 2, 16)
    coords = [[0, 1, 2, 3]] * 6
    ref = torch.stack([ivs[k](base[i:i + 1], src[i:i + 1], subspaces=[coords[0]])[0]
                       for i, k in enumerate([2, 0, 1, 1, 0, 2])])
    with biv.rows([2, 0, 1, 1, 0, 2]):  # arbitrary order: the gather path
        assert biv._blocks is None
        out = biv(base, src, subspaces=coords)
    assert torch.allclose(out, ref, atol=1e-5)
    order = [0, 0, 1, 1, 2, 2]
    ref = torch.stack([ivs[k](base[i:i + 1], src[i:i + 1], subspaces=[coords[0]])[0] for i, k in enumerate(order)])
    with biv.rows(order):  # contiguous blocks: the broadcast path
        assert biv._blocks == (3, 2)
        out = biv(base, src, subspaces=[list(c) for c in coords])
    assert torch.allclose(out, ref, atol=1e-5)
    assert biv._rows is None  # scoped


def test_candidate_round_trip_and_routing_errors():
    ivs = [RoadInterchange(16, family="road", seed=s) for s in range(2)]
    biv = RoadInterchange.stack(ivs)
    for k in range(2):
        assert torch.equal(biv.candidate(k).theta, ivs[k].theta)
        assert biv.candidate(k).strides == ivs[k].strides
    x = torch.randn(4, 1, 16)
    with pytest.raises(ConfigError, match="rows"):
        biv(x, x, subspaces=[[0]] * 4)
    with pytest.raises(ConfigError, match="candidate ids must be in 0..1"):
        biv.set_rows([0, 5])
    with pytest.raises(ShapeError, match="3 candidate ids"):
        with biv.rows([0, 1, 1]):
            biv(x, x, subspaces=[[0]] * 4)
    with pytest.raises(RuntimeError):
        with biv.rows([0, 1, 1, 0]):
            raise RuntimeError("boom")
    assert biv._rows is None
    with pytest.raises(ConfigError, match="share width, strides"):
        RoadInterchange.stack([ivs[0], RoadInterchange(16, family="butterfly", seed=0)])


def test_grouping_and_fallback(setup):
    model, task = setup
    cfgs = [DIIConfig(family=f, seed=s, **SMALL) for f in ("butterfly", "das", "neuron-fixed") for s in range(2)]
    assert batch_groups(cfgs, 16, 2) == [[0, 1], [2], [3], [4, 5]]
    out = train_dii_batched(model, task, Site(0), cfgs[2:3])  # das: falls back to train_dii
    assert out[0].config.family == "das"
    with pytest.raises(ConfigError, match="batch_groups"):
        train_dii_batched(model, task, Site(0), cfgs[2:3], fallback=False)


def test_concat_batches_keeps_row_order(setup):
    _, task = setup
    a = task.counterfactuals(5, split="train", seed=0)
    b = task.counterfactuals(3, split="train", seed=1)
    c = CounterfactualBatch.concat([a, b])
    assert len(c) == 8 and torch.equal(c.labels[5:], b.labels) and torch.equal(c.sources[0]["inputs_embeds"][:5],
                                                                                 a.sources[0]["inputs_embeds"])
