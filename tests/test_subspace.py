"""Principal angles and seed agreement against known cases and independent references."""

import math

import numpy as np
import pytest
import torch

from roadinterp import io
from roadinterp.errors import FileFormatError, ShapeError
from roadinterp.subspace import (
    SubspaceBasis,
    agreement_of,
    chance_agreement,
    learned_basis,
    mean_cosine,
    pairwise_agreement,
    principal_angles,
    seed_agreement,
)


def test_principal_angles_known_case_tilted_plane():
    t = 0.3
    e = np.eye(4)
    q1 = e[:, [0, 1]]
    q2 = np.stack([e[:, 0], math.cos(t) * e[:, 1] + math.sin(t) * e[:, 2]], axis=1)
    np.testing.assert_allclose(principal_angles(q1, q2), [0.0, t], atol=1e-12)
    assert mean_cosine(q1, q2) == pytest.approx((1 + math.cos(t)) / 2)
    # orthogonal and identical subspaces
    np.testing.assert_allclose(principal_angles(e[:, [0, 1]], e[:, [2, 3]]), [math.pi / 2] * 2)
    assert mean_cosine(q1, q1) == pytest.approx(1.0)


def test_two_planes_in_r3_share_a_line_and_meet_at_the_dihedral_angle():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
        n1, n2 = np.cross(*a.T), np.cross(*b.T)
        dihedral = math.acos(abs(n1 @ n2) / np.linalg.norm(n1) / np.linalg.norm(n2))
        np.testing.assert_allclose(principal_angles(a, b), [0.0, dihedral], atol=1e-7)


def test_principal_angles_match_brute_force_and_ignore_the_basis():
    """cos theta_1 = max over unit u in S1, v in S2 of u.v (brute force over a dense circle); a line
    vs a subspace: cos = |P2 u|; any invertible change of basis leaves the angles alone."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 2)), rng.standard_normal((5, 1))
    qa = np.linalg.qr(a)[0]
    phis = np.linspace(0, 2 * math.pi, 200_001)
    us = qa @ np.stack([np.cos(phis), np.sin(phis)])  # unit vectors of S1  [5, n]
    v = b[:, 0] / np.linalg.norm(b)
    assert math.cos(principal_angles(a, b)[0]) == pytest.approx(np.abs(v @ us).max(), abs=1e-8)
    p = qa @ qa.T
    assert math.cos(principal_angles(b, a)[0]) == pytest.approx(np.linalg.norm(p @ v), abs=1e-12)
    c, d = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    mix = rng.standard_normal((3, 3)) + 3 * np.eye(3)
    np.testing.assert_allclose(principal_angles(c @ mix, d), principal_angles(c, d), atol=1e-10)
    # sum of squared cosines = trace(P1 P2), an independent identity
    q1, q2 = np.linalg.qr(c)[0], np.linalg.qr(d)[0]
    assert (np.cos(principal_angles(c, d)) ** 2).sum() == pytest.approx(np.trace(q1 @ q1.T @ q2 @ q2.T))
    with pytest.raises(ShapeError, match="linearly dependent"):
        principal_angles(np.ones((4, 2)), d[:4])
    with pytest.raises(ShapeError, match="widths"):
        principal_angles(c, d[:5])


def test_seed_agreement_pairs_and_variables():
    rng = np.random.default_rng(2)
    s = [rng.standard_normal((10, 3)) for _ in range(2)]  # two variables
    same = [[x @ rng.standard_normal((3, 3)) for x in s] for _ in range(3)]  # 3 seeds, same spans
    assert seed_agreement(same) == pytest.approx(1.0)
    other = [[rng.standard_normal((10, 3)) for _ in range(2)] for _ in range(3)]
    m = pairwise_agreement(other)
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), 1.0)
    want = np.mean([mean_cosine(other[0][v], other[1][v]) for v in range(2)])
    assert m[0, 1] == pytest.approx(want)
    assert seed_agreement(other) == pytest.approx(m[np.triu_indices(3, 1)].mean())
    assert math.isnan(seed_agreement(other[:1]))


def test_chance_agreement_matches_the_closed_form_for_lines():
    # two random lines in R^d: E|cos| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))
    for d in (4, 16):
        exact = math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
        assert chance_agreement(d, 1, samples=4000) == pytest.approx(exact, abs=0.01)
    assert chance_agreement(6, 6) == pytest.approx(1.0)
    assert 0.5 < chance_agreement(16, 8) < 0.8


def test_learned_basis_of_a_road_interchange_is_the_kept_rows_of_r():
    from roadinterp.interventions import RoadInterchange, assign_axes

    iv = RoadInterchange(16, family="butterfly", seed=3)
    coords = assign_axes(16, [3, 3], iv.group_size)
    b = learned_basis(iv, coords, family="butterfly", variables=["A", "B"])
    R = iv.matrix().detach()
    for v, c in enumerate(coords):
        rows = b.rows.split(b.sizes)[v]
        torch.testing.assert_close(rows, R[c], atol=1e-5, rtol=0)
        # the DII of variable v is the projector onto those rows' span
        base, src = torch.randn(4, 16), torch.randn(4, 16)
        out = iv(base, src, [c] * 4)
        torch.testing.assert_close(out, base + (src - base) @ rows.T @ rows, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["das", "lowrank"])
def test_learned_basis_of_pyvene_rotations_reproduces_their_interchange(family):
    from roadinterp.interventions import get_family

    built = get_family(family).build(12, [2, 4], seed=0)
    iv = built.interventions[0]
    with torch.no_grad():  # move away from the init
        for p in iv.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b = learned_basis(iv, built.coords, family=family)
    assert b.sizes == [2, 4] and b.dim == 12
    base, src = torch.randn(5, 12), torch.randn(5, 12)
    for c, rows in zip(built.coords, b.rows.split(b.sizes)):
        out = iv(base, src, [c] * 5)  # pyvene's own forward is the reference
        torch.testing.assert_close(out, base + (src - base) @ rows.T @ rows, atol=1e-5, rtol=0)
    neuron = get_family("neuron").build(12, [2], seed=0)
    assert learned_basis(neuron.interventions[0], neuron.coords, family="neuron") is None


def test_subspace_basis_round_trip_and_agreement(tmp_path):
    rng = np.random.default_rng(4)
    saved = []
    for seed in range(3):
        rows = torch.tensor(rng.standard_normal((4, 9)), dtype=torch.float32)
        p = io.save(SubspaceBasis(rows, [2, 2], family="das", variables=["A", "B"]), tmp_path / f"s{seed}")
        back = io.load(p)
        assert isinstance(back, SubspaceBasis) and back.variables == ["A", "B"]
        torch.testing.assert_close(back.rows, rows)
        saved.append(back)
    agree, chance = agreement_of(saved)
    assert agree == pytest.approx(seed_agreement([s.bases() for s in saved]))
    assert chance == pytest.approx(chance_agreement(9, 2))
    (tmp_path / "s0" / io.CONFIG_NAME).write_text(
        (tmp_path / "s0" / io.CONFIG_NAME).read_text().replace('"sizes": [\n      2,\n      2\n    ]', '"sizes": [0]'))
    with pytest.raises(FileFormatError, match="sizes"):
        io.load(tmp_path / "s0")
