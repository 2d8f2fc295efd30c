"""Numerical tests of ``roadinterp.road`` (the pure RoAd maths), with peft 0.21 as the oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from roadinterp.errors import ConfigError
from roadinterp.road import (
    RoadRotation,
    RoadSpec,
    apply,
    apply_bank,
    apply_layers,
    bank_tables,
    butterfly_strides,
    check_layout,
    coefficients,
    dense_matrix,
    inverse_coefficients,
    layer_coefficients,
    merge_into_linear,
    n_params,
    unmerge_from_linear,
)
from roadinterp.road import rotation as rot

peft = pytest.importorskip("peft")

VARIANTS = ("road_1", "road_2", "road_4")
# (group_size, width): group size 2 (adjacent pairs) and peft's default 64, several widths each
LAYOUTS = [(2, 2), (2, 6), (2, 10), (64, 64), (64, 128), (64, 192)]
ATOL = 1e-5


def _random_params(dim, variant, seed, alpha_one=False):
    g = torch.Generator().manual_seed(seed)
    n = n_params(dim, variant)
    theta = (torch.rand(n, generator=g) * 2 - 1) * torch.pi
    alpha = torch.ones(n) if alpha_one else 0.5 + torch.rand(n, generator=g)
    return theta, alpha


class _Tiny(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.proj(x)


def _peft_layer(d_in, d_out, variant, group_size, theta, alpha, seed=0):
    from peft import RoadConfig, get_peft_model

    torch.manual_seed(seed)
    base = _Tiny(d_in, d_out)
    pm = get_peft_model(base, RoadConfig(variant=variant, group_size=group_size, target_modules=["proj"]))
    layer = pm.base_model.model.proj
    with torch.no_grad():
        layer.road_theta["default"].copy_(theta)
        layer.road_alpha["default"].copy_(alpha)
    return pm, layer


# ------------------------------------------------------------------ peft oracle
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group_size,dim", LAYOUTS)
def test_forward_matches_peft_layer(variant, group_size, dim):
    theta, alpha = _random_params(dim, variant, seed=dim + group_size)
    pm, layer = _peft_layer(7, dim, variant, group_size, theta, alpha)
    x = torch.randn(3, 5, 7)
    with torch.no_grad():
        want = pm(x)
        base = layer.base_layer(x)  # W x + b
    c1, c2 = coefficients(theta, alpha, variant, group_size)
    got = apply(base, c1, c2, group_size)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # the dense matrix gives the same map, and equals peft's own delta weight
    R = dense_matrix(c1, c2, group_size)
    torch.testing.assert_close(base @ R.T, want, atol=ATOL, rtol=0)
    from peft.tuners.road.layer import _get_delta_weight

    torch.testing.assert_close(R, _get_delta_weight(variant, group_size, theta, alpha), atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group_size,dim", [(2, 6), (64, 128)])
def test_road_rotation_module_matches_peft(variant, group_size, dim):
    theta, alpha = _random_params(dim, variant, seed=3)
    pm, layer = _peft_layer(4, dim, variant, group_size, theta, alpha)
    r = RoadRotation(dim, variant, group_size)
    with torch.no_grad():
        r.theta.copy_(theta)
        r.alpha.copy_(alpha)
    x = torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(r(layer.base_layer(x)), pm(x), atol=ATOL, rtol=0)


# ------------------------------------------------------------------ merge / inverse
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group_size,dim", [(2, 10), (64, 128)])
def test_merge_then_forward_equals_unmerged(variant, group_size, dim):
    theta, alpha = _random_params(dim, variant, seed=11)
    c1, c2 = coefficients(theta, alpha, variant, group_size)
    torch.manual_seed(0)
    lin = nn.Linear(9, dim)
    x = torch.randn(4, 9)
    with torch.no_grad():
        want = apply(lin(x), c1, c2, group_size)
        w0, b0 = lin.weight.clone(), lin.bias.clone()
        merge_into_linear(lin, c1, c2, group_size)
        torch.testing.assert_close(lin(x), want, atol=ATOL, rtol=1e-5)
        unmerge_from_linear(lin, c1, c2, group_size)
        torch.testing.assert_close(lin.weight, w0, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(lin.bias, b0, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group_size,dim", LAYOUTS)
def test_inverse_after_forward_is_identity(variant, group_size, dim):
    theta, alpha = _random_params(dim, variant, seed=5)
    r = RoadRotation(dim, variant, group_size)
    with torch.no_grad():
        r.theta.copy_(theta)
        r.alpha.copy_(alpha)
        h = torch.randn(3, dim)
        torch.testing.assert_close(r.inverse(r(h)), h, atol=1e-4, rtol=1e-4)
        c1, c2 = r.coefficients()
        i1, i2 = inverse_coefficients(c1, c2, group_size)
        eye = dense_matrix(i1, i2, group_size) @ dense_matrix(c1, c2, group_size)
        torch.testing.assert_close(eye, torch.eye(dim), atol=1e-4, rtol=0)


# ------------------------------------------------------------------ properties
layouts = st.sampled_from(LAYOUTS + [(4, 8), (8, 24), (16, 32)])


@settings(max_examples=40, deadline=None)
@given(layout=layouts, variant=st.sampled_from(("road_1", "road_2")), seed=st.integers(0, 2**31 - 1))
def test_alpha_one_is_orthogonal(layout, variant, seed):
    # road_1/road_2 with alpha = 1 are rotations; road_4 mixes cos/sin angles and is not
    group_size, dim = layout
    theta, alpha = _random_params(dim, variant, seed, alpha_one=True)
    R = dense_matrix(*coefficients(theta, alpha, variant, group_size), group_size)
    if variant == "road_2":
        # road_2 is orthogonal only when the pair shares its angle
        partner = rot.pair_index(dim, group_size)
        theta = torch.where(torch.arange(dim) < partner, theta, theta[partner])
        R = dense_matrix(*coefficients(theta, alpha, variant, group_size), group_size)
    torch.testing.assert_close(R @ R.T, torch.eye(dim), atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(layout=layouts, variant=st.sampled_from(VARIANTS), seed=st.integers(0, 2**31 - 1))
def test_apply_equals_dense_matrix(layout, variant, seed):
    group_size, dim = layout
    theta, alpha = _random_params(dim, variant, seed)
    c1, c2 = coefficients(theta, alpha, variant, group_size)
    h = torch.randn(4, dim, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(apply(h, c1, c2, group_size), h @ dense_matrix(c1, c2, group_size).T,
                               atol=ATOL, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(log_d=st.integers(1, 7), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_butterfly_orthogonal_and_zero_is_identity(log_d, seed, data):
    dim = 2**log_d
    n_layers = data.draw(st.integers(1, log_d))
    strides = butterfly_strides(dim, n_layers)
    assert strides == sorted(strides) and strides[-1] == dim // 2
    L, n = len(strides), n_params(dim, "road_1")
    eye = torch.eye(dim)
    z1, z2 = layer_coefficients(torch.zeros(L, n), torch.ones(L, n), strides)
    torch.testing.assert_close(apply_layers(eye, z1, z2, strides), eye)
    theta = (torch.rand(L, n, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * torch.pi
    c1, c2, i1, i2 = layer_coefficients(theta, torch.ones(L, n), strides, inverse=True)
    R = apply_layers(eye, c1, c2, strides).T  # columns are R e_k
    torch.testing.assert_close(R @ R.T, eye, atol=1e-5, rtol=0)
    h = torch.randn(3, dim)
    torch.testing.assert_close(apply_layers(apply_layers(h, c1, c2, strides), i1, i2, strides, reverse=True), h,
                               atol=1e-5, rtol=1e-5)


def _skew_matrix(dim, q):
    P = torch.zeros(dim, dim)
    for j in range(dim):
        a, r = divmod(j, q)
        P[a * q + (r + a) % q, j] = 1.0  # coordinate j moves to a q + (r + a) mod q
    return P


def _reference_product(h, theta, alpha, variant, strides):
    """Layer by layer with rotation.apply, and the skew permutation between factors written out
    as a dense permutation matrix (an independent reading of the docstring's formula)."""
    P = _skew_matrix(h.shape[-1], min(strides))
    for l, s in enumerate(strides):
        if l and s <= strides[l - 1]:
            h = h @ P.T
        a_, b_ = coefficients(theta[l], alpha[l], variant, 2 * s)
        h = apply(h, a_, b_, 2 * s)
    return h


@pytest.mark.parametrize("dim", [576, 768, 960])
def test_butterfly_reaches_every_coordinate_at_real_widths(dim):
    """Two factors with the skew permutation reach every coordinate from every coordinate
    (576 = 2^6 x 9, 768 = 2^8 x 3, 960 = 2^6 x 15); without it they stay in odd-part orbits."""
    strides = butterfly_strides(dim, depth=2)
    L, n = len(strides), n_params(dim, "road_1")
    theta = (torch.rand(L, n, generator=torch.Generator().manual_seed(0)) * 2 - 1) * torch.pi
    c1, c2 = layer_coefficients(theta, torch.ones(L, n), strides)
    R = apply_layers(torch.eye(dim), c1, c2, strides)  # row i = R e_i
    reach = R.abs() > 1e-9
    assert bool(reach.all()), f"{int((~reach).sum())} of {dim * dim} entries unreachable"
    torch.testing.assert_close(R @ R.T, torch.eye(dim), atol=1e-4, rtol=0)
    # the same factors without the permutation: one orbit per residue mod the odd part
    m = dim // 2 ** (len(strides) // 2)
    no_perm = torch.eye(dim)
    for l, s in enumerate(strides):
        no_perm = apply(no_perm, c1[l], c2[l], 2 * s)
    i, j = (no_perm.abs() > 1e-9).nonzero().T
    assert bool((i % m == j % m).all()) and m > 1
    # one factor alone reaches 2^k coordinates: the permutation is what connects the orbits
    one = butterfly_strides(dim, depth=1)
    d1, d2 = layer_coefficients(theta[: len(one)], torch.ones(len(one), n), one)
    assert int((apply_layers(torch.eye(dim), d1, d2, one).abs() > 1e-9).sum(1).max()) == dim // m


@settings(max_examples=15, deadline=None)
@given(dim=st.sampled_from([12, 24, 36, 48, 96]), depth=st.integers(2, 3), variant=st.sampled_from(VARIANTS),
       seed=st.integers(0, 2**31 - 1))
def test_butterfly_with_permutation_equals_reference(dim, depth, variant, seed):
    strides = butterfly_strides(dim, depth=depth)
    L, n = len(strides), n_params(dim, variant)
    g = torch.Generator().manual_seed(seed)
    theta = (torch.rand(L, n, generator=g) * 2 - 1) * torch.pi
    alpha = torch.rand(L, n, generator=g) + 0.5
    h = torch.randn(4, dim, generator=g)
    c1, c2, i1, i2 = layer_coefficients(theta, alpha, strides, variant, inverse=True)
    out = apply_layers(h, c1, c2, strides)
    torch.testing.assert_close(out, _reference_product(h, theta, alpha, variant, strides), atol=1e-5, rtol=1e-5)
    if variant == "road_1":  # well conditioned: the inverse table undoes the permuted product
        torch.testing.assert_close(apply_layers(out, i1, i2, strides, reverse=True), h, atol=1e-4, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(log_d=st.integers(1, 6), depth=st.integers(1, 3), variant=st.sampled_from(VARIANTS),
       lead=st.lists(st.integers(1, 3), max_size=2), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_layer_coefficients_equal_layer_by_layer(log_d, depth, variant, lead, seed, data):
    """The vectorised table == coefficients / inverse_coefficients of each layer, and
    apply_layers with the inverse table undoes the forward (checked on the dense matrix)."""
    dim = 2**log_d
    strides = butterfly_strides(dim, data.draw(st.integers(1, log_d)), depth)
    L, n = len(strides), n_params(dim, variant)
    g = torch.Generator().manual_seed(seed)
    theta = (torch.rand(*lead, L, n, generator=g) * 2 - 1) * torch.pi
    alpha = torch.rand(*lead, L, n, generator=g) + 0.5
    c1, c2, i1, i2 = layer_coefficients(theta, alpha, strides, variant, inverse=True)
    assert c1.shape == (*lead, L, dim)
    for l, s in enumerate(strides):
        a, b = coefficients(theta[..., l, :], alpha[..., l, :], variant, 2 * s)
        ia, ib = inverse_coefficients(a, b, 2 * s)
        torch.testing.assert_close(c1[..., l, :], a, atol=0, rtol=0)
        torch.testing.assert_close(c2[..., l, :], b, atol=0, rtol=0)
        torch.testing.assert_close(i1[..., l, :], ia, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(i2[..., l, :], ib, atol=1e-6, rtol=1e-6)
    # one candidate: the table-driven maps == the layer-by-layer maps, on the identity's rows
    first = (0,) * len(lead)
    ref = [coefficients(theta[first][l], alpha[first][l], variant, 2 * s) for l, s in enumerate(strides)]
    eye = torch.eye(dim)
    torch.testing.assert_close(apply_layers(eye, c1[first], c2[first], strides),
                               _reference_product(eye, theta[first], alpha[first], variant, strides))
    Rinv = apply_layers(eye, i1[first], i2[first], strides, reverse=True)
    ref_inv, P = eye, _skew_matrix(dim, min(strides))
    for l in reversed(range(L)):
        ia, ib = inverse_coefficients(*ref[l], 2 * strides[l])
        ref_inv = apply(ref_inv, ia, ib, 2 * strides[l])
        if l and strides[l] <= strides[l - 1]:
            ref_inv = ref_inv @ P  # P^-1 = P^T, on row vectors
    torch.testing.assert_close(Rinv, ref_inv)
    if variant == "road_1":  # scaled rotations are well conditioned: the inverse really inverts
        R = apply_layers(eye, c1[first], c2[first], strides)
        torch.testing.assert_close(R @ Rinv, eye, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ bank
@pytest.mark.parametrize("variant", VARIANTS)
def test_bank_of_16_equals_each_sample_alone(variant):
    dim, group_size, n_ad = 128, 64, 16
    params = [_random_params(dim, variant, seed=100 + i) for i in range(n_ad)]
    thetas = torch.stack([p[0] for p in params])  # [16, n_params]
    alphas = torch.stack([p[1] for p in params])
    c1, c2 = bank_tables(thetas, alphas, variant, group_size)
    assert c1.shape == (n_ad + 1, dim)
    ids = torch.tensor([3, 0, 15, -1, 7, 7, 1, 2, 4, 5, 6, 8, 9, 10, 11, -1])
    h = torch.randn(len(ids), 5, dim)
    out = apply_bank(h, c1, c2, ids, group_size)
    for b, i in enumerate(ids.tolist()):
        if i == -1:
            want = h[b]
        else:
            want = apply(h[b], *coefficients(thetas[i], alphas[i], variant, group_size), group_size)
        torch.testing.assert_close(out[b], want, atol=ATOL, rtol=0)
    with pytest.raises(ConfigError, match="16"):
        apply_bank(h, c1, c2, torch.full((len(ids),), 16), group_size)


# ------------------------------------------------------------------ dtypes
def test_bf16_activations_cast_at_boundary():
    r = RoadRotation(64, "road_1", 64, init="random", generator=torch.Generator().manual_seed(0))
    h = torch.randn(2, 3, 64).to(torch.bfloat16)
    out = r(h)
    assert out.dtype == torch.bfloat16
    assert r.theta.dtype == torch.float32 and r.alpha.dtype == torch.float32
    want = apply(h.float(), *r.coefficients(), 64).to(torch.bfloat16)
    torch.testing.assert_close(out, want)
    out.float().sum().backward()  # gradients flow back to the fp32 parameters
    assert r.theta.grad.dtype == torch.float32


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(dim=64, group_size=3), "3"),
        (dict(dim=64, group_size=7), "7"),
        (dict(dim=96, group_size=64), "64"),
        (dict(dim=64, group_size=12), "12"),
        (dict(dim=64, group_size=128), "128"),
        (dict(dim=64, variant="road_3"), "road_3"),
        (dict(dim=64, blocks=[0, 32]), "32"),
        (dict(dim=64, blocks=[-1]), "-1"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        RoadRotation(kwargs.pop("dim"), **kwargs)


def test_check_layout_and_spec_errors_name_the_value():
    with pytest.raises(ConfigError, match="50"):
        check_layout(768, 50)
    with pytest.raises(ConfigError, match="road_9"):
        coefficients(torch.zeros(4), torch.ones(4), "road_9", 4)
    with pytest.raises(ConfigError, match="7"):
        RoadSpec(dim=8, group_size=2, blocks=[7, 1, 2, 3, 4])
    with pytest.raises(ConfigError, match="0"):
        butterfly_strides(8, 0)
