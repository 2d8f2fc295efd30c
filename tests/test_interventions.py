"""RoAd interventions through pyvene: identities, references, training, validation."""

import pytest
import torch

from conftest import tiny_mlp, tiny_model
from roadinterp.errors import ConfigError, OverlapError, RoadinterpError
from roadinterp.interventions import (
    RoadInterchange,
    RoadIntervention,
    assign_axes,
    attach_dii,
    attach_sourceless,
    check_assignment,
    get_family,
    run_dii,
    run_sourceless,
    subspace_mask,
)
from roadinterp._pyvene import pv
from roadinterp.sites import Site, validate_site


def _ids(n=6, seq=5):
    return {"input_ids": torch.randint(0, 50, (n, seq))}


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_road_intervention_trains_through_pyvene(arch):
    model = tiny_model(arch)
    site = Site(1, "block_output", "last")
    width = validate_site(model, site)
    iv = RoadIntervention(width, variant="road_2", group_size=8)
    pvm = attach_sourceless(model, [site], [iv])
    x = _ids(16)
    target = torch.randint(0, 50, (16,))
    opt = torch.optim.Adam(iv.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        out = run_sourceless(pvm, [site], x)
        loss = torch.nn.functional.cross_entropy(out.logits[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    # the base model's own weights were never touched
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_identity_road_intervention_is_a_no_op(arch):
    model = tiny_model(arch)
    site = Site(0, "block_output", "all")
    width = validate_site(model, site)
    iv = RoadIntervention(width, group_size=8)
    pvm = attach_sourceless(model, [site], [iv], n_units=[5])
    x = _ids(4, 5)
    with torch.no_grad():
        ref = model(**x).logits
        out = run_sourceless(pvm, [site], x).logits
    assert torch.allclose(ref, out, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("family", ["road", "butterfly"])
def test_zero_angle_interchange_equals_vanilla(arch, family):
    model = tiny_model(arch)
    site = Site(1, "block_output", "last")
    width = validate_site(model, site)
    b, s = _ids(), _ids()
    road = RoadInterchange(width, family=family, init="identity")
    coords = assign_axes(width, [5], road.group_size)
    out_road = run_dii(attach_dii(model, site, [road], shared=True), site, b, [s], coords).logits
    van = pv.VanillaIntervention(embed_dim=width)
    out_van = run_dii(attach_dii(model, site, [van], shared=True), site, b, [s], coords).logits
    assert torch.allclose(out_road, out_van, atol=1e-5)
    # and it actually intervened (differs from the clean base run)
    with torch.no_grad():
        assert not torch.allclose(out_van, model(**b).logits, atol=1e-4)


def _dense_dii(R, b, s, mask):
    # b + R^-1 M R (s - b), with dense matrices
    return b + (torch.linalg.inv(R) @ (torch.diag(mask) @ (R @ (s - b).T))).T


@pytest.mark.parametrize("family", ["road", "butterfly"])
def test_interchange_matches_dense_formula(family):
    torch.manual_seed(1)
    d = 16
    iv = RoadInterchange(d, family=family, init="random", seed=3)
    b, s = torch.randn(5, 1, d), torch.randn(5, 1, d)
    coords = assign_axes(d, [4, 3], iv.group_size)
    flat = [c for cs in coords for c in cs]
    out = iv(b.clone(), s, subspaces=[flat] * 5)
    mask = torch.zeros(d)
    mask[flat] = 1
    ref = _dense_dii(iv.matrix(), b[:, 0], s[:, 0], mask)
    assert torch.allclose(out[:, 0], ref, atol=1e-5)
    # the rotation matters: the result differs from the axis-aligned swap
    van = b.clone()
    van[..., flat] = s[..., flat]
    assert not torch.allclose(out, van, atol=1e-3)


def test_whole_block_mask_is_refused_and_would_be_a_no_op():
    d = 8
    with pytest.raises(ConfigError, match="both axes"):
        check_assignment(d, [[0, 4]], group_size=8)  # (0, 4) is one 2D block
    # documented reason: with both axes selected the rotation cancels (R^-1 M R = M)
    iv = RoadInterchange(d, family="road", init="random", seed=0)
    b, s = torch.randn(3, 1, d), torch.randn(3, 1, d)
    out = iv(b.clone(), s, subspaces=[[0, 4]] * 3)
    van = b.clone()
    van[..., [0, 4]] = s[..., [0, 4]]
    assert torch.allclose(out, van, atol=1e-5)


def test_overlapping_variables_are_refused():
    with pytest.raises(OverlapError, match="coordinate 2"):
        check_assignment(8, [[0, 1, 2], [2, 3]], group_size=8)


def test_assign_axes_one_axis_per_pair():
    coords = assign_axes(16, [8, 8], 16)
    assert coords == [list(range(8)), list(range(8, 16))]
    check_assignment(16, coords, 16)
    c2 = assign_axes(16, [3, 2], 4)  # group size 4: first axes are 0,1,4,5,8,9,...
    assert c2 == [[0, 1, 4], [5, 8]]
    check_assignment(16, c2, 4)
    with pytest.raises(ConfigError, match="site is only 16 wide"):
        assign_axes(16, [10, 10])


def test_subspace_mask_vectorised_and_ragged():
    m = subspace_mask([[0, 2], [1], []], 3, 4)
    assert m.tolist() == [[True, False, True, False], [False, True, False, False], [False] * 4]
    with pytest.raises(ConfigError, match="out of range"):
        subspace_mask([[5]], 1, 4)


def test_per_example_block_routing():
    d = 8
    iv = RoadIntervention(d, group_size=8, init="random", seed=0)
    h = torch.randn(3, 1, d)
    out = iv(h, subspaces=[[0], [1, 2], []])
    # row 2 has no blocks: identity; row 0 only touches block 0 = elements (0, 4)
    assert torch.allclose(out[2], h[2])
    untouched0 = [1, 2, 3, 5, 6, 7]
    assert torch.allclose(out[0, :, untouched0], h[0, :, untouched0])
    assert not torch.allclose(out[0, :, [0, 4]], h[0, :, [0, 4]])
    # each row equals running it alone with its blocks
    alone = RoadIntervention(d, group_size=8, blocks=[1, 2])
    alone.load_state_dict(iv.state_dict())
    assert torch.allclose(out[1], alone(h[1:2])[0], atol=1e-6)


@pytest.mark.parametrize("family", ["neuron", "road", "butterfly", "das", "lowrank", "boundless"])
def test_every_family_runs_on_mlp(family):
    model = tiny_mlp()
    site = Site(0)
    built = get_family(family).build(16, [4, 4], seed=0)
    pvm = attach_dii(model, site, built.interventions, shared=built.shared)
    b = {"inputs_embeds": torch.randn(4, 1, 16)}
    out = run_dii(pvm, site, b, [b, b], built.coords)
    with torch.no_grad():
        ref = model(**b)[0]
    # sources equal to the base: every family must be an exact no-op
    assert torch.allclose(out[0], ref, atol=1e-5)


def test_bad_arguments_name_value_and_fix():
    with pytest.raises(RoadinterpError, match="group_size must be even and divide 16, got 6"):
        RoadIntervention(16, group_size=6)
    with pytest.raises(RoadinterpError, match="unknown variant 'road_3'"):
        RoadIntervention(16, variant="road_3")
    with pytest.raises(RoadinterpError, match="block 9 is out of range"):
        RoadIntervention(16, group_size=8, blocks=[9])
    with pytest.raises(RoadinterpError, match="unknown family 'dense'.*butterfly"):
        get_family("dense")
    model = tiny_model("gpt2")
    with pytest.raises(RoadinterpError, match="unknown component 'mlp_out'.*mlp_output"):
        validate_site(model, Site(0, "mlp_out"))
    with pytest.raises(RoadinterpError, match="layer 7 is out of range"):
        validate_site(model, Site(7))
