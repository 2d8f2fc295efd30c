"""Tasks: counterfactual labels against independent brute-force causal models,
disjoint splits, determinism, registry errors."""

from __future__ import annotations

import os
from typing import ClassVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from conftest import ready
from hypothesis import given, settings
from hypothesis import strategies as st

from roadinterp.errors import ConfigError, UnknownNameError
from roadinterp.tasks import (
    CounterfactualBatch,
    Task,
    behaviour_data,
    get_task,
    list_tasks,
    register_task,
)
from roadinterp.tasks.base import do

ALIGNMENT_TASKS = ["hierarchical-equality", "addition-carry", "interval", "ioi", "mcqa", "arithmetic", "ravel-city"]


# ----- independent reference causal models (plain Python, one row at a time) -------------
def ref_he(row: dict, hyp: str, forced: dict) -> int:
    if hyp == "first-argument":
        w = forced.get("W", row["w"])
        return int((w == row["x"]) == (row["y"] == row["z"]))
    v1 = forced.get("V1", row["w"] == row["x"])
    v2 = forced.get("V2", row["y"] == row["z"])
    return int(bool(v1) == bool(v2))


def ref_he_vars(row: dict) -> dict:
    return {"V1": row["w"] == row["x"], "V2": row["y"] == row["z"], "W": row["w"]}


def ref_add(row: dict, hyp: str, forced: dict) -> int:
    ones = forced.get("ones", row["a0"] + row["b0"])
    carry = forced.get("carry", int(ones >= 10))
    tens = forced.get("tens", row["a1"] + row["b1"])
    return tens % 10 if hyp == "tens-only" else (tens + int(carry)) % 10


def ref_add_vars(row: dict) -> dict:
    ones = row["a0"] + row["b0"]
    return {"ones": ones, "carry": int(ones >= 10), "tens": row["a1"] + row["b1"]}


def ref_interval(row: dict, hyp: str, forced: dict) -> int:
    x, y, z = row["x"], row["y"], row["z"]
    if hyp == "mid":
        mid = forced.get("mid", 2 * z - x - y)
        return int(abs(mid) <= y - x)
    left = forced.get("left", x <= z)
    right = forced.get("right", z <= y)
    return int(bool(left) and bool(right))


def ref_interval_vars(row: dict) -> dict:
    x, y, z = row["x"], row["y"], row["z"]
    return {"left": x <= z, "right": z <= y, "mid": 2 * z - x - y}


def ref_ioi(row: dict, hyp: str, forced: dict) -> int:
    if hyp == "first-name":
        return forced.get("first_name", row["a"])
    pos = forced.get("io_position", 0 if row["io_first"] else 1)
    return forced.get("io_token", row["a"] if pos == 0 else row["b"])


def ref_ioi_vars(row: dict) -> dict:
    return {"io_position": 0 if row["io_first"] else 1, "io_token": row["a"] if row["io_first"] else row["b"],
            "first_name": row["a"]}


def ref_mcqa(row: dict, hyp: str, forced: dict) -> int:
    letters, options = [row["l0"], row["l1"], row["l2"]], [row["c0"], row["c1"], row["c2"]]
    if hyp == "colour":
        c = forced.get("colour", row["colour"])
        return letters[options.index(c)] if c in options else letters[row["pointer"]]
    pointer = forced.get("answer_pointer", row["pointer"])
    return forced.get("answer", letters[pointer])


def ref_mcqa_vars(row: dict) -> dict:
    return {"answer_pointer": row["pointer"], "answer": [row["l0"], row["l1"], row["l2"]][row["pointer"]],
            "colour": row["colour"]}


def ref_arith(row: dict, hyp: str, forced: dict) -> int:
    ones = forced.get("ones", row["a0"] + row["b0"])
    carry = forced.get("carry", int(ones >= 10))
    tens = forced.get("tens", row["a1"] + row["b1"])
    t = tens if hyp == "tens-only" else tens + int(carry)
    return t if t < 10 else 1


def _ravel_table():
    import csv
    from pathlib import Path

    import roadinterp.tasks as T

    with open(Path(T.__file__).parent / "data" / "ravel_cities.csv") as f:
        table = list(csv.DictReader(f))
    answers = get_task("ravel-city").answer_tokens
    return [{a: answers.index(" " + r[a].split()[0]) for a in ("country", "continent", "language")} for r in table]


RAVEL = _ravel_table()


def ref_ravel(row: dict, hyp: str, forced: dict) -> int:
    attr = ("country", "continent", "language")[row["attr"]]
    if hyp == "city":
        return RAVEL[forced.get("city", row["city"])][attr]
    return forced.get(attr, RAVEL[row["city"]][attr])


def ref_ravel_vars(row: dict) -> dict:
    return {**RAVEL[row["city"]], "city": row["city"]}


REFS = {
    "hierarchical-equality": (ref_he, ref_he_vars),
    "addition-carry": (ref_add, ref_add_vars),
    "interval": (ref_interval, ref_interval_vars),
    "ioi": (ref_ioi, ref_ioi_vars),
    "mcqa": (ref_mcqa, ref_mcqa_vars),
    "arithmetic": (ref_arith, ref_add_vars),
    "ravel-city": (ref_ravel, ref_ravel_vars),
}


def rows(raw: dict) -> list[dict]:
    n = len(next(iter(raw.values())))
    return [{k: int(v[i]) for k, v in raw.items()} for i in range(n)]


def check_batch(task: Task, batch: CounterfactualBatch, hyp: str) -> None:
    ref, ref_vars = REFS[task.name]
    n, k = len(batch), len(batch.variables)
    assert batch.intervened.shape == (n, k) and batch.intervened.dtype == torch.bool
    assert bool(batch.intervened.any(dim=1).all()), "every row swaps at least one variable"
    assert batch.labels.dtype == torch.long and batch.base_labels.dtype == torch.long
    assert len(batch.sources) == k
    # The tensors are the encoding of the raw inputs we check against.
    for key, value in task.encode(batch.raw["base"]).items():
        assert torch.equal(value, batch.base[key])
    base_rows = rows(batch.raw["base"])
    source_rows = [rows(s) for s in batch.raw["sources"]]
    for i, var in enumerate(batch.variables):
        for key in batch.base:
            assert batch.sources[i][key].shape == batch.base[key].shape
            same = ~batch.intervened[:, i]
            assert torch.equal(batch.sources[i][key][same], batch.base[key][same]), "non-swapped rows copy base"
        for key, value in task.encode(batch.raw["sources"][i]).items():
            assert torch.equal(value, batch.sources[i][key])
    for r in range(n):
        forced = {var: ref_vars(source_rows[i][r])[var] for i, var in enumerate(batch.variables)
                  if batch.intervened[r, i]}
        assert int(batch.labels[r]) == ref(base_rows[r], hyp, forced), (task.name, hyp, r)
        assert int(batch.base_labels[r]) == ref(base_rows[r], hyp, {})


HYPOTHESES = [(t, h) for t in ALIGNMENT_TASKS for h in ["main", *get_task(t).rivals]]


@pytest.mark.parametrize("task_name,hyp", HYPOTHESES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), mode=st.sampled_from(["each", "all", "mixed"]),
       split=st.sampled_from(["train", "test"]))
def test_counterfactual_labels_match_brute_force(task_name, hyp, seed, n, mode, split):
    task = ready(get_task(task_name))
    batch = task.counterfactuals(n, split=split, seed=seed, hypothesis=hyp, mode=mode)
    assert batch.variables == task.hypothesis_variables(hyp)
    check_batch(task, batch, hyp)
    if mode == "each":
        assert bool((batch.intervened.sum(1) == 1).all())
    if mode == "all":
        assert bool(batch.intervened.all())


@pytest.mark.parametrize("task_name", ALIGNMENT_TASKS)
def test_single_variable_subset_and_factual_labels(task_name):
    task = ready(get_task(task_name))
    ref, _ = REFS[task_name]
    var = task.variables[-1]
    batch = task.counterfactuals(64, seed=3, variables=(var,), mode="each")
    assert batch.variables == (var,)
    check_batch(task, batch, "main")
    raw = task.sample_raw(50, seed=4)
    inputs, labels = task.factual(50, seed=4)
    assert [ref(r, "main", {}) for r in rows(raw)] == labels.tolist()
    for key, value in task.encode(raw).items():
        assert torch.equal(value, inputs[key])


def test_causal_model_interventions():
    task = get_task("addition-carry")
    raw = {"a1": np.array([1, 1]), "a0": np.array([5, 2]), "b1": np.array([2, 2]), "b0": np.array([7, 3])}
    assert task.causal_model(raw)["output"].tolist() == [4, 3]
    # forcing ones recomputes carry downstream (interchange semantics)
    assert task.causal_model(raw, hypothesis="ones", interventions={"ones": np.array([0, 12])})["output"].tolist() == [3, 4]
    assert task.causal_model(raw, interventions={"carry": (np.array([True, False]), np.array([0, 0]))})[
        "output"].tolist() == [3, 3]
    with pytest.raises(UnknownNameError, match="known"):
        task.causal_model(raw, interventions={"nope": 1})
    assert do(None, "x", np.array([1])).tolist() == [1]


def test_rival_labels_of_hierarchical_equality_are_not_constant():
    task = get_task("hierarchical-equality")
    batch = task.counterfactuals(2000, seed=0, hypothesis="first-argument", mode="each")
    rate = batch.labels.float().mean().item()
    assert 0.3 < rate < 0.7
    # and the swap actually flips the label on a good share of rows
    assert (batch.labels != batch.base_labels).float().mean().item() > 0.2
    main = task.counterfactuals(2000, seed=0, mode="mixed")
    assert 0.4 < main.labels.float().mean().item() < 0.6


def test_hierarchical_equality_pools_are_disjoint_and_balanced():
    task = get_task("hierarchical-equality")
    assert set(task.pool("train")).isdisjoint(task.pool("test"))
    for split in ("train", "test"):
        raw = task.sample_raw(4000, split=split, seed=1)
        used = np.unique(np.concatenate([raw[k] for k in "wxyz"]))
        assert set(used) <= set(task.pool(split))
        assert 0.45 < (raw["w"] == raw["x"]).mean() < 0.55
        _, labels = task.factual(4000, split=split, seed=1)
        assert 0.45 < labels.float().mean().item() < 0.55
    # disjoint pools also means disjoint vectors
    train_vecs = {tuple(v) for v in task.entities[task.pool("train")].tolist()}
    test_vecs = {tuple(v) for v in task.entities[task.pool("test")].tolist()}
    assert train_vecs.isdisjoint(test_vecs)
    x, _ = task.factual(8, seed=0)
    assert x["inputs_embeds"].shape == (8, 1, 16) and x["inputs_embeds"].dtype == torch.float32


@pytest.mark.parametrize("task_name", ["addition-carry", "behaviour-base"])
def test_arithmetic_splits_hold_disjoint_number_pairs(task_name):
    task = get_task(task_name)
    pairs = {}
    for split in ("train", "test"):
        raw = task.sample_raw(3000, split=split, seed=2)
        pairs[split] = set(zip((raw["a1"] * 10 + raw["a0"]).tolist(), (raw["b1"] * 10 + raw["b0"]).tolist()))
    assert pairs["train"].isdisjoint(pairs["test"])


def test_interval_splits_hold_disjoint_xy_pairs_and_balanced_labels():
    task = get_task("interval")
    seen = {}
    for split in ("train", "test"):
        raw = task.sample_raw(3000, split=split, seed=2)
        seen[split] = set(zip(raw["x"].tolist(), raw["y"].tolist()))
        _, labels = task.factual(3000, split=split, seed=2)
        assert 0.45 < labels.float().mean().item() < 0.55
    assert seen["train"].isdisjoint(seen["test"])


@pytest.mark.parametrize("task_name", [t.name for t in list_tasks()])
def test_determinism_for_a_seed(task_name):
    task = ready(get_task(task_name))
    a, la = task.factual(32, seed=11)
    b, lb = task.factual(32, seed=11)
    c, _ = task.factual(32, seed=12)
    assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(la, lb)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    if task.variables:
        x = task.counterfactuals(32, seed=11)
        y = task.counterfactuals(32, seed=11)
        assert torch.equal(x.labels, y.labels) and torch.equal(x.intervened, y.intervened)
        assert all(torch.equal(s[k], t[k]) for s, t in zip(x.sources, y.sources) for k in s)


@pytest.mark.parametrize("task_name", [t.name for t in list_tasks()])
def test_task_contract(task_name):
    task = ready(get_task(task_name))
    assert task.kind in ("vector", "tokens")
    assert "last" in task.positions
    if task.variables:
        assert task.rivals, "alignment tasks have at least one rival"
    inputs, labels = task.factual(5, seed=0)
    assert labels.dtype == torch.long and int(labels.max()) < task.n_classes
    if task.kind == "tokens" and not task.needs_tokenizer:
        ids = inputs["input_ids"]
        assert len(task.vocab) < 64 and int(ids.max()) < len(task.vocab)
        assert task.positions["last"] == ids.shape[1] - 1
        assert isinstance(task.decode(ids[0]), str) and len(task.decode(ids)) == 5
        # logits: last position restricted to the answer tokens, consistent with labels
        fake = torch.zeros(5, ids.shape[1], len(task.vocab))
        fake[torch.arange(5), -1, task.answer_token_ids(labels)] = 1.0
        assert torch.equal(task.logits(type("Out", (), {"logits": fake})()).argmax(-1), labels)


def test_subset_selects_rows():
    task = get_task("interval")
    batch = task.counterfactuals(20, seed=0)
    sub = batch.subset(torch.tensor([3, 1, 7]))
    assert len(sub) == 3 and torch.equal(sub.labels, batch.labels[[3, 1, 7]])
    assert torch.equal(sub.sources[1]["input_ids"], batch.sources[1]["input_ids"][[3, 1, 7]])
    assert len(batch.subset(slice(0, 5))) == 5
    assert len(batch.subset(batch.labels == 1)) == int(batch.labels.sum())
    check_batch(task, sub, "main")


def test_behaviour_data_targets():
    inputs, base = behaviour_data(200, behaviours=(), split="test", seed=0)
    _, op = behaviour_data(200, behaviours=("op",), split="test", seed=0)
    _, fmt = behaviour_data(200, behaviours=("format",), split="test", seed=0)
    inputs2, both = behaviour_data(200, behaviours=("format", "op"), split="test", seed=0)
    assert torch.equal(inputs["input_ids"], inputs2["input_ids"])
    ids = inputs["input_ids"]
    a0, b0 = ids[:, 2] - 1, ids[:, 5] - 1  # digit d has id d + 1
    assert torch.equal(base, (a0 + b0) % 10)
    assert torch.equal(op, (a0 - b0) % 10)
    assert torch.equal(fmt, 10 + (a0 + b0) % 10)
    assert torch.equal(both, 10 + (a0 - b0) % 10)
    task = get_task("behaviour-op")
    assert task.answer_tokens[int(both[0])] == "ABCDEFGHIJ"[int(op[0])]
    x, y = task.factual(50, split="test", seed=0)
    assert torch.equal(x["input_ids"], ids[:50]) and torch.equal(y, op[:50])
    with pytest.raises(UnknownNameError, match="known behaviours: format, op"):
        behaviour_data(4, behaviours=("negate",))
    with pytest.raises(ConfigError):
        get_task("behaviour-op").counterfactuals(4)


def test_errors_name_the_bad_value():
    task = get_task("interval")
    with pytest.raises(UnknownNameError, match="unknown task 'nope'; known tasks: .*interval"):
        get_task("nope")
    with pytest.raises(UnknownNameError, match="unknown hypothesis 'bogus'.*known hypotheses: main, mid"):
        task.counterfactuals(4, hypothesis="bogus")
    with pytest.raises(ConfigError, match="mode"):
        task.counterfactuals(4, mode="some")
    with pytest.raises(ConfigError, match="split"):
        task.factual(4, split="val")
    with pytest.raises(ConfigError, match="n must be"):
        task.factual(0)
    with pytest.raises(UnknownNameError, match="known variables: left, right"):
        task.counterfactuals(4, variables=("up",))
    with pytest.raises(ConfigError, match="already registered"):
        register_task(task)


def test_register_task_roundtrip():
    from roadinterp.tasks.base import Do, Raw, TokenTask

    class Parity(TokenTask):
        name = "test-parity"
        description = "parity of two bits"
        variables = ("a",)
        rivals: ClassVar[dict[str, tuple[str, ...]]] = {"b-only": ("b",)}
        vocab: ClassVar[list[str]] = ["<bos>", "0", "1"]
        answer_tokens: ClassVar[list[str]] = ["0", "1"]
        n_classes = 2
        positions: ClassVar[dict[str, int]] = {"last": 2}

        def _sample(self, n, rng, split):
            return {"a": rng.integers(0, 2, n), "b": rng.integers(0, 2, n)}

        def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None):
            a = do(interventions, "a", raw["a"])
            b = do(interventions, "b", raw["b"])
            return {"a": a, "b": b, "output": (a ^ b).astype(np.int64)}

        def encode(self, raw):
            return {"input_ids": torch.as_tensor(np.stack([0 * raw["a"], 1 + raw["a"], 1 + raw["b"]], 1))}

    register_task(Parity(), overwrite=True)
    task = get_task("test-parity")
    batch = task.counterfactuals(16, seed=0, mode="all")
    src_a = torch.as_tensor(batch.raw["sources"][0]["a"])
    assert torch.equal(batch.labels, src_a ^ torch.as_tensor(batch.raw["base"]["b"]))
