"""Controls that catch interpretability illusions, the warnings, every rival, and the DBM neuron baseline."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import roadinterp as ri
from roadinterp import controls as C
from roadinterp.interventions import get_family
from roadinterp.interventions.masks import NeuronMaskInterchange, ProjectionInterchange
from roadinterp.tasks.base import Task, do

CLI = [sys.executable, "-m", "roadinterp.cli"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ROADINTERP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# ------------------------------------------------------------------ warnings: a pure function
GOOD = {"iia_mean": 0.95, "iia_std": 0.01, "n_seeds": 5, "iia_null_mean": 0.5, "iia_random_model_mean": 0.5,
        "iia_joint_mean": 0.99, "iia_site_patch_mean": 1.0, "iia_joint_null_mean": 0.5,
        "iia_rowspace_mean": 0.98, "iia_rival[w]_mean": 0.5, "iia_rival_null[w]_mean": 0.5}


@pytest.mark.parametrize("change,codes", [
    ({}, []),
    ({"iia_site_patch_mean": 0.5}, ["illusion-suspect"]),  # the subspace beats patching everything
    ({"iia_site_patch_mean": 0.95}, []),  # within the margin: no warning
    # a subspace that does nothing "beats" a site patch that breaks the output (SmolLM2 IOI
    # io_position at layers 24-27: joint 0.484 = its no-op, site patch 0.047): no illusion
    ({"iia_mean": 0.484, "iia_null_mean": 0.484, "iia_joint_mean": 0.484, "iia_joint_null_mean": 0.484,
      "iia_site_patch_mean": 0.047, "iia_rowspace_mean": 0.484, "iia_random_model_mean": 0.0}, ["near-noop"]),
    ({"iia_rowspace_mean": 0.52}, ["illusion-suspect"]),  # only the dormant part carries it
    ({"iia_rowspace_mean": 0.52, "iia_joint_mean": 0.6, "iia_site_patch_mean": 0.6}, []),  # not high: no claim
    ({"iia_mean": 0.53, "iia_random_model_mean": 0.4}, ["near-noop"]),
    ({"iia_random_model_mean": 0.93}, ["random-init-comparable"]),
    ({"iia_rival[w]_mean": 0.92}, ["rival-comparable"]),
    ({"iia_rival[w]_mean": 0.92, "iia_rival_null[w]_mean": 0.9}, []),  # the rival only does nothing well
    ({"iia_std": 0.11}, ["unstable-seeds"]),
    ({"n_seeds": 2}, ["few-seeds"]),
    ({"iia_site_patch_mean": float("nan"), "iia_rowspace_mean": None}, []),  # controls not run: no claim
    ({"iia_mean": 0.5, "iia_random_model_mean": 0.5, "iia_std": 0.2, "n_seeds": 1},
     ["near-noop", "random-init-comparable", "unstable-seeds", "few-seeds"]),
])
def test_cell_warnings_is_a_pure_function_of_the_summary_row(change, codes):
    row = {**GOOD, **change}
    assert C.cell_warnings(row) == codes
    assert C.split_codes(C.join_codes(codes)) == codes
    assert set(codes) <= set(C.WARNING_CODES)


def test_old_runs_with_one_rival_column_still_warn():
    row = {k: v for k, v in GOOD.items() if "rival" not in k} | {"iia_rival_mean": 0.94, "iia_rival_null_mean": 0.5}
    assert C.cell_warnings(row) == ["rival-comparable"]


# ------------------------------------------------------------------ the maths of the controls
def test_rowspace_split_against_explicit_projection():
    g = torch.Generator().manual_seed(0)
    d = 12
    W = torch.randn(3, d, generator=g)  # row space: 3 dims; kernel: 9
    U = torch.linalg.qr(torch.randn(d, 4, generator=g))[0]
    dormant, Q = C.rowspace_split(U, W)
    P = W.T @ torch.linalg.pinv(W.T)  # projector on the column space of W^T (independent route)
    assert dormant == pytest.approx(1 - float(torch.linalg.matrix_norm(P @ U) ** 2) / 4, abs=1e-5)
    assert torch.allclose(Q @ Q.T, (P @ U) @ torch.linalg.pinv(P @ U), atol=1e-5)  # same span
    # a subspace inside the kernel is fully dormant and leaves nothing to patch
    K = torch.linalg.svd(W, full_matrices=True)[2][3:].T  # [d, 9] kernel basis
    dormant, Q = C.rowspace_split(K[:, :2], W)
    assert dormant == pytest.approx(1.0, abs=1e-5) and Q.shape[1] == 0


def test_patch_matrix_recovers_each_family_map():
    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(8, 3, generator=g))[0]
    assert torch.allclose(C.patch_matrix([ProjectionInterchange(Q)], [[0]], 8), Q @ Q.T, atol=1e-6)
    built = get_family("neuron-fixed").build(8, [2, 3])
    A = C.patch_matrix(built.interventions, built.coords, 8)
    assert torch.equal(A, torch.diag(torch.tensor([1.0] * 5 + [0.0] * 3)))
    # das: pyvene's rotation R (rows = rotated coordinates) -> A = R_c^T R_c over the variables' coordinates
    built = get_family("das").build(8, [2, 2], seed=0)
    R = built.interventions[0].rotate_layer.weight.detach().T  # pyvene rotates h @ weight
    rows = R[[0, 1, 2, 3]]
    assert torch.allclose(C.patch_matrix(built.interventions, built.coords, 8), rows.T @ rows, atol=1e-5)


def test_readers_name_the_linear_map_that_reads_the_site(tiny_models):
    mlp, gpt2, llama = tiny_models
    assert torch.equal(C.reader_weight(mlp, ri.Site(0)), mlp.mlp.h[1].ff1.weight)
    assert torch.equal(C.reader_weight(mlp, ri.Site(2)), mlp.score.weight)
    assert torch.equal(C.reader_weight(gpt2, ri.Site(0, "mlp_activation")), gpt2.transformer.h[0].mlp.c_proj.weight.T)
    assert torch.equal(C.reader_weight(llama, ri.Site(1, "attention_value_output")),
                       llama.model.layers[1].self_attn.o_proj.weight)
    assert C.reader_weight(llama, ri.Site(0, "mlp_activation")) is None  # gated by up_proj: not one linear map
    assert C.reader_weight(gpt2, ri.Site(0, "block_output")) is None  # the residual has many readers


@pytest.fixture
def tiny_models():
    from conftest import tiny_mlp, tiny_model

    return tiny_mlp(), tiny_model("gpt2"), tiny_model("llama")


# ------------------------------------------------------------------ the illusion toys
def _toy(task: str):
    return ri.search(task=task, families=["butterfly"], layers=[0], components=["mlp_activation"], sizes=[1],
                     seeds=2, epochs=2, n_train=1024, n_test=512, batch_size=128)


def test_hand_built_toys_solve_their_task():
    for name in ("illusion-toy", "illusion-toy-faithful"):
        model = ri.load_model(f"zoo:{name}-gpt2", progress=False)
        x, y = ri.get_task(name).factual(256, split="test")
        assert ri.zoo.evaluate_accuracy(model, name, x, y) == 1.0


def test_warning_fires_on_the_illusion_toy_and_not_on_its_faithful_twin():
    ill = ri.summarize(_toy("illusion-toy")).iloc[0]
    fai = ri.summarize(_toy("illusion-toy-faithful")).iloc[0]
    # both subspaces look perfect ...
    assert ill["iia_mean"] >= 0.95 and fai["iia_mean"] >= 0.95
    # ... but patching the whole hidden layer does nothing in the illusion (its no-op) and everything in the twin
    assert ill["iia_site_patch_mean"] == pytest.approx(ill["iia_joint_null_mean"], abs=0.02)
    assert fai["iia_site_patch_mean"] == 1.0
    # the row-space part alone is the no-op in the illusion, the whole effect in the twin
    assert ill["iia_rowspace_mean"] == pytest.approx(ill["iia_joint_null_mean"], abs=0.02)
    assert fai["iia_rowspace_mean"] >= 0.95
    assert "illusion-suspect" in ill["warnings"].split(";")
    assert "illusion-suspect" not in fai["warnings"].split(";")
    # every rival of the task is reported, with its train IIA and site patch
    for col in ("iia_rival[distractor]_mean", "train_iia_rival[distractor]_mean",
                "iia_site_patch_rival[distractor]_mean", "iia_rival_null[distractor]_mean"):
        assert np.isfinite(ill[col])


@pytest.mark.slow
def test_align_cli_shows_warnings_in_table_csv_and_report(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([*CLI, "align", "--task", "illusion-toy", "--component", "mlp_activation", "--layers", "0",
                        "--family", "butterfly", "--size", "1", "--seeds", "1", "--n-train", "1024", "--n-test",
                        "256", "--epochs", "2", "--out", str(out)], env=env, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    best = [line for line in r.stdout.splitlines() if "best alignment" in line.lower()]
    assert best and "illusion-suspect" in r.stdout.lower().split("best alignment", 1)[1]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(set(row["warnings"].split(";")) >= {"illusion-suspect", "few-seeds"} for row in rows)
    html = (out / "report.html").read_text()
    assert "Controls and warnings" in html and "Warnings: illusion-suspect" in html


# ------------------------------------------------------------------ every rival
@pytest.mark.slow
def test_every_rival_is_run_and_reported():
    from roadinterp.tasks.hierarchical_equality import HierarchicalEquality

    task = HierarchicalEquality(name="he-two-rivals")
    task.rivals = {"first-argument": ("W",), "first-argument-again": ("W",)}
    ri.register_task(task, overwrite=True)
    table = ri.search(task="he-two-rivals", model="zoo:hierarchical-equality-mlp", families=["butterfly"],
                      layers=[0], sizes=[4], seeds=1, epochs=1, n_train=256, n_test=256)
    row = table.iloc[0]
    for name in task.rivals:
        for col in (f"iia_rival[{name}]", f"train_iia_rival[{name}]", f"iia_site_patch_rival[{name}]",
                    f"iia_rival_null[{name}]"):
            assert 0.0 <= row[col] <= 1.0
    assert row["rival"] in task.rivals  # the strongest, for the one-rival columns


# ------------------------------------------------------------------ DBM: a neuron baseline that searches
A_NEURONS, B_NEURONS = (5, 11), (2, 13)


class Planted(Task):
    """label = (A == B); A sits on neurons 5 and 11 of the input, B on 2 and 13, noise elsewhere."""

    kind = "vector"
    n_classes = 2
    variables = ("A", "B")

    def __init__(self, name):
        self.name, self.description, self.rivals = name, "planted neurons", {}
        self.noise = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0)) * 0.5

    def _sample(self, n, rng, split):
        lo = 0 if split == "train" else 2048
        return {"a": rng.integers(0, 2, n), "b": rng.integers(0, 2, n), "k": rng.integers(lo, lo + 2048, n)}

    def _evaluate(self, raw, hypothesis, interventions):
        a, b = do(interventions, "A", raw["a"]), do(interventions, "B", raw["b"])
        return {"A": a, "B": b, "output": (a == b).astype(np.int64)}

    def encode(self, raw):
        x = self.noise[torch.as_tensor(raw["k"])].clone()
        for bit, neurons in (("a", A_NEURONS), ("b", B_NEURONS)):
            x[:, list(neurons)] = torch.as_tensor(raw[bit] * 2 - 1, dtype=torch.float32)[:, None]
        return {"inputs_embeds": x[:, None, :]}


@torch.no_grad()
def planted_mlp(Q: torch.Tensor):
    """Site (layer-0 output) = Q x + 10; layer 1 reads sA = x5 + x11, sB = x2 + x13 back and computes A == B."""
    from pyvene.models.mlp.modelings_mlp import MLPConfig, MLPForClassification

    m = MLPForClassification(MLPConfig(h_dim=16, n_layer=2, num_classes=2, pdrop=0.0, activation_function="relu"))
    for p in m.parameters():
        p.zero_()
    m.mlp.h[0].ff1.weight.copy_(Q)
    m.mlp.h[0].ff1.bias.fill_(10.0)  # keeps the site in ReLU's linear range
    sa, sb = torch.zeros(16), torch.zeros(16)
    sa[list(A_NEURONS)], sb[list(B_NEURONS)] = 1.0, 1.0
    feats = torch.stack([sa + sb, -sa - sb, sa - sb, -sa + sb])  # |sA + sB| - |sA - sB| has the sign of sA * sB
    M = torch.zeros(16, 16)
    M[:4] = feats @ Q.T
    m.mlp.h[1].ff1.weight.copy_(M)
    m.mlp.h[1].ff1.bias.copy_(-M @ torch.full((16,), 10.0))
    m.score.weight[1, :4] = torch.tensor([1.0, 1.0, -1.0, -1.0])
    m.score.weight[0, :4] = -m.score.weight[1, :4]
    return m.eval()


def _dbm(Q, family="neuron", name="planted"):
    task = Planted(name)
    model = planted_mlp(Q)
    x, y = task.factual(512, split="test")
    assert ri.zoo.evaluate_accuracy(model, task, x, y) == 1.0
    return ri.train_dii(model, task, ri.Site(0), family=family, size=2, seed=0, n_train=4096, n_test=1024,
                        epochs=4, batch_size=128)


def test_dbm_finds_a_variable_planted_on_arbitrary_neurons():
    res = _dbm(torch.eye(16))
    assert res.iia >= 0.95
    assert [sorted(iv.neurons()) for iv in res.interventions] == [sorted(A_NEURONS), sorted(B_NEURONS)]
    fixed = _dbm(torch.eye(16), family="neuron-fixed")  # the first 2 + 2 neurons: the wrong ones
    assert fixed.iia < 0.8


def test_dbm_fails_on_a_randomly_rotated_variable():
    Q = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(3)))[0]
    res = _dbm(Q)
    assert res.iia < 0.8
    assert _dbm(Q, family="das").iia >= 0.95  # the variable is there, in a rotated basis


def test_dbm_mask_is_hard_and_within_budget():
    iv = NeuronMaskInterchange(8, size=2, seed=0)
    with torch.no_grad():
        iv.logits.copy_(torch.tensor([3.0, -1.0, 2.0, 5.0, -2.0, 0.5, -0.1, 0.0]))
    iv.eval()
    assert iv.neurons() == [0, 3]  # the two largest positive logits
    b, s = torch.zeros(1, 1, 8), torch.ones(1, 1, 8)
    assert torch.equal(iv(b, s), torch.tensor([[[1.0, 0, 0, 1.0, 0, 0, 0, 0]]]))
    iv.train()
    iv.anneal(1.0)
    assert iv.temperature == pytest.approx(0.01)
    with pytest.raises(ri.ConfigError, match="size must be in 1..8, got 9"):
        NeuronMaskInterchange(8, size=9)


@pytest.mark.parametrize("family", ["neuron", "neuron-fixed", "road", "butterfly", "das", "lowrank", "boundless"])
def test_patch_matrix_is_the_map_each_family_applies(family):
    from pyvene.models.modeling_utils import do_intervention

    built = get_family(family).build(16, [4, 4], seed=0)
    for iv in {id(i): i for i in built.interventions}.values():
        iv.eval()
    A = C.patch_matrix(built.interventions, built.coords, 16)
    b, s = torch.randn(5, 1, 16), torch.randn(5, 1, 16)
    out = b.clone()
    for iv, c in zip(built.interventions, built.coords):  # one source for every variable, in turn
        out = do_intervention(out.clone(), s.clone(), iv, [list(c)] * 5)
    assert torch.allclose(out[:, 0], b[:, 0] + (s - b)[:, 0] @ A.T, atol=1e-4)
