"""Zoo: deterministic training, atomic cache, loading from zoo / local dirs / hub ids."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from roadinterp import zoo
from roadinterp.errors import ConfigError, OfflineError, UnknownNameError
from roadinterp.tasks import get_task


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROADINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_identical_weights(tmp_cache):
    a = _state(zoo.train_zoo_model("hierarchical-equality-mlp", steps=30, progress=False))
    b = _state(zoo.train_zoo_model("hierarchical-equality-mlp", steps=30, progress=False))
    c = _state(zoo.train_zoo_model("hierarchical-equality-mlp", steps=30, seed=1, progress=False))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_token_model_training_is_deterministic(tmp_cache):
    a = _state(zoo.train_zoo_model("interval-llama", steps=3, progress=False, save=False))
    b = _state(zoo.train_zoo_model("interval-llama", steps=3, progress=False, save=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_cache / "zoo" / "interval-llama").exists()


def test_cache_layout_meta_and_reload(tmp_cache):
    name = "hierarchical-equality-mlp"
    assert not zoo.is_cached(name)
    model = zoo.train_zoo_model(name, steps=20, progress=False)
    path = tmp_cache / "zoo" / name
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "meta.json", "model.safetensors"]
    assert [p.name for p in path.parent.iterdir()] == [name], "no temporary directories left behind"
    meta = json.loads((path / "meta.json").read_text())
    assert meta["task"] == "hierarchical-equality" and meta["seed"] == 0 and meta["recipe"]["steps"] == 20
    assert 0.0 <= meta["accuracy"] <= 1.0 and meta["train_seconds"] > 0 and meta["roadinterp_version"]
    assert zoo.zoo_meta(name) == meta
    assert json.loads((path / "config.json").read_text())["roadinterp_task"] == "hierarchical-equality"
    assert (path / "model.safetensors").read_bytes()[:1] != b"\x80", "not a pickle"

    loaded = zoo.load_model(f"zoo:{name}", device="cpu")
    assert not loaded.training and zoo.model_task(loaded) == "hierarchical-equality"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    row = {r["name"]: r for r in zoo.list_zoo()}[name]
    assert row["cached"] and row["accuracy"] == meta["accuracy"] and row["n_params"] == zoo.n_params(model)
    assert {r["name"] for r in zoo.list_zoo()} >= {
        "hierarchical-equality-mlp", "addition-carry-gpt2", "interval-llama", "behaviour-base-gpt2"}

    # A half-written directory (no meta.json) never counts as cached.
    (path / "meta.json").unlink()
    assert not zoo.is_cached(name)


def test_interrupted_write_leaves_no_model(tmp_cache, monkeypatch):
    import safetensors.torch

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_model", boom)
    with pytest.raises(KeyboardInterrupt):
        zoo.train_zoo_model("hierarchical-equality-mlp", steps=2, progress=False)
    zoo_dir = tmp_cache / "zoo"
    assert not zoo.is_cached("hierarchical-equality-mlp")
    assert list(zoo_dir.iterdir()) == []


def test_zoo_model_runs_its_task(tmp_cache):
    model = zoo.train_zoo_model("addition-carry-gpt2", steps=2, progress=False, save=False)
    task = get_task(zoo.model_task(model))
    inputs, _ = task.factual(8, seed=0)
    with torch.no_grad():
        logits = task.logits(model(**inputs))
    assert logits.shape == (8, task.n_classes)


def test_load_local_hf_directory(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=23, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "tiny")
    loaded = zoo.load_model(str(tmp_path / "tiny"), device="cpu")
    assert isinstance(loaded, GPT2LMHeadModel) and not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_load_local_mlp_directory(tmp_path):
    from pyvene.models.mlp.modelings_mlp import MLPConfig, MLPForClassification

    model = MLPForClassification(MLPConfig(h_dim=16, n_layer=2, num_classes=2, pdrop=0.0))
    model.save_pretrained(tmp_path / "mlp")
    loaded = zoo.load_model(tmp_path / "mlp", device="cpu")
    assert isinstance(loaded, MLPForClassification)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_unknown_names_list_the_zoo(tmp_cache):
    with pytest.raises(UnknownNameError, match="unknown zoo model 'nope'; known zoo models: .*interval-llama"):
        zoo.load_model("zoo:nope")
    with pytest.raises(UnknownNameError, match="addition-carry-gpt2"):
        zoo.train_zoo_model("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        zoo.load_model("./no/such/dir")
    with pytest.raises(ConfigError, match="device"):
        zoo.load_model("zoo:hierarchical-equality-mlp", device="tpu9")


def test_offline_hub_id_raises_offline_error(tmp_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineError, match="model hub unreachable.*zoo:hierarchical-equality-mlp"):
        zoo.load_model("roadinterp-test/definitely-not-cached-model")


def test_register_zoo_model_validates(tmp_cache):
    with pytest.raises(ConfigError, match="arch"):
        zoo.ZooEntry(name="x", task="interval", arch="bert", config={})
    with pytest.raises(UnknownNameError, match="unknown task"):
        zoo.register_zoo_model(zoo.ZooEntry(name="x", task="no-task", arch="mlp", config={}))
    with pytest.raises(ConfigError, match="already registered"):
        zoo.register_zoo_model(zoo.get_zoo_entry("interval-llama"))


@pytest.mark.slow
def test_mlp_trains_to_high_held_out_accuracy(tmp_cache):
    model = zoo.load_model("zoo:hierarchical-equality-mlp", device="cpu", progress=False)
    meta = zoo.zoo_meta("hierarchical-equality-mlp")
    assert meta["accuracy"] >= 0.99 and meta["train_seconds"] < 60
    task = get_task("hierarchical-equality")
    inputs, labels = task.factual(4000, split="test", seed=123)
    assert zoo.evaluate_accuracy(model, task, inputs, labels) >= 0.99
