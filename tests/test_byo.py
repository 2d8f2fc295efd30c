"""Bring your own task and model: the docs example end to end through the CLI, user tasks
in worker processes, in-memory models, and one `error:` line for each kind of bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import word_tokenizer

import roadinterp as ri
from roadinterp.errors import ConfigError
from roadinterp.tasks import get_task

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "byo_task.py"
CLI = [sys.executable, "-m", "roadinterp.cli"]


def env(tmp_path):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "ROADINTERP_CACHE": str(tmp_path / "cache")}


def run(tmp_path, *args):
    return subprocess.run([*CLI, *args], env=env(tmp_path), capture_output=True, text=True, cwd=tmp_path, timeout=900)


def one_error(r, msg):
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], r.stderr


@pytest.mark.slow
def test_docs_example_runs_through_the_cli_with_workers(tmp_path):
    r = run(tmp_path, "align", "--task", f"{EXAMPLE}:TASK", "--layers", "0", "--family", "butterfly", "--size", "2",
            "--seeds", "2", "--n-train", "256", "--n-test", "128", "--epochs", "1", "--workers", "2",
            "--sequential", "--out", "run", "--no-report", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["cells"]) == 2 and all(0 <= c["iia"] <= 1 for c in out["cells"])
    assert {c["task"] for c in out["cells"]} == {"compare-pairs"}
    assert f"{EXAMPLE}:TASK" in (tmp_path / "run" / "run.json").read_text()  # what --resume and workers re-import


def test_reference_forms_and_errors(tmp_path):
    task = get_task(f"{EXAMPLE}:TASK")
    assert task.name == "compare-pairs" and get_task("compare-pairs") is task
    assert get_task(f"{EXAMPLE}:ComparePairs").name == "compare-pairs"  # a subclass is built
    assert get_task("roadinterp.tasks.ioi:IOI").name == "ioi"
    with pytest.raises(ConfigError, match="defines no 'NOPE'; tasks it defines: ComparePairs, TASK"):
        get_task(f"{EXAMPLE}:NOPE")
    with pytest.raises(ConfigError, match="is a list, not a roadinterp Task"):
        get_task(f"{EXAMPLE}:DIGITS")
    with pytest.raises(ConfigError, match="does not exist"):
        get_task(f"{tmp_path}/missing.py:TASK")


def _tiny_lm_dir(path, tok, vocab):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64)
    tf.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no-name", "wrong-type", "mismatch", "multi-token", "truncated-gguf"])
def test_bad_input_is_one_error_line(tmp_path, case):
    ioi = get_task("ioi")
    if case == "no-name":
        args, msg = ["--task", f"{EXAMPLE}:NOPE"], "defines no 'NOPE'"
    elif case == "wrong-type":
        args, msg = ["--task", f"{EXAMPLE}:PAIRS"], "is a ndarray, not a roadinterp Task"
    elif case == "truncated-gguf":  # a GGUF header cut short inside its first key
        (tmp_path / "m.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little")
                                          + (1).to_bytes(8, "little") + (100).to_bytes(8, "little") + b"gen")
        args, msg = ["--task", "ioi", "--model", str(tmp_path / "m.gguf")], "cannot load GGUF file"
    elif case == "mismatch":
        model = _tiny_lm_dir(tmp_path / "m", word_tokenizer(ioi), 20)
        args, msg = ["--task", "ioi", "--model", model], "do not belong together"
    else:
        tok = word_tokenizer(ioi)
        from tokenizers import pre_tokenizers

        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "isolated")  # " Mary" -> " ", "Mary"
        model = _tiny_lm_dir(tmp_path / "m", tok, len(tok))
        args, msg = ["--task", "ioi", "--model", model], "answer ' Mary' is 2 tokens"
    one_error(run(tmp_path, "align", *args, "--layers", "0", "--out", "run"), msg)


def test_search_takes_an_nn_module_and_ships_caller_tasks(tmp_path):
    from conftest import tiny_model

    model = tiny_model("llama")
    model.config.vocab_size = 50
    table = ri.search(task="interval", model=model, layers=[0], families=["road"], sizes=[2], seeds=1,
                      n_train=64, n_test=32, epochs=1, batch_size=32, controls=False)
    assert len(table) == 1 and table["model"].iloc[0].startswith("module:LlamaForCausalLM")
    with pytest.raises(ConfigError, match="use workers=1"):
        ri.search(task="interval", model=model, layers=[0], families=["road"], workers=2)
