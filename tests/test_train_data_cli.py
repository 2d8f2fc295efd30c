"""`roadinterp train --data` end to end through the CLI: a tiny chat LM saved as an HF directory.

Training, saving, composing and generating with the saved adapters (subprocesses: the installed
entry point); every bad input is one `error:` line (the row number for a bad row), exit status 2,
and nothing written (in-process through the same `roadinterp.cli.main`, to keep the suite quick).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _text_lm import chat_tokenizer, tiny_llama  # noqa: E402

CLI = [sys.executable, "-m", "roadinterp.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_chat_lm")
    tiny_llama().save_pretrained(d)
    chat_tokenizer().save_pretrained(d)
    return d


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"what is the opposite of {a}", "completion": b}
        for a, b in (("hot", "cold"), ("big", "small"), ("up", "down"), ("yes", "no"))]


def _run(*args, cwd):
    return subprocess.run([*CLI, *map(str, args)], env=ENV, capture_output=True, text=True, cwd=cwd, timeout=600)


def _run_here(args, cwd, capsys, monkeypatch):
    """The same entry point in this process (no interpreter start-up): (exit status, stderr lines)."""
    from roadinterp.cli import main

    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err.splitlines()


def test_train_data_saves_an_adapter_that_generate_serves(lm_dir, tmp_path):
    data = _jsonl(tmp_path / "opp.jsonl", ROWS)
    msgs = _jsonl(tmp_path / "msgs.jsonl", [{"messages": [{"role": "user", "content": r["prompt"]},
                                                           {"role": "assistant", "content": "yes " + r["completion"]}]}
                                            for r in ROWS])
    keep = _jsonl(tmp_path / "keep.jsonl", [{"prompt": "hello world"}])
    r = _run("train", "--data", data, "--model", lm_dir, "--layers", "1", "--blocks", "1/2", "--epochs", "4",
             "--batch-size", "2", "--lr", "0.05", "--out", "a", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "saved a:" in r.stdout and "loss per epoch" in r.stdout
    losses = [float(x) for x in r.stdout.split("loss per epoch")[1].split("->")]
    assert len(losses) == 4 and losses[-1] < losses[0]  # it learns
    r = _run("train", "--data", msgs, "--model", lm_dir, "--layers", "1", "--blocks", "2/2", "--epochs", "2",
             "--batch-size", "2", "--preserve", keep, "--out", "b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads(next((tmp_path / "b").glob("*.json")).read_text())
    assert "keep.jsonl" in json.dumps(meta)
    r = _run("generate", "--model", lm_dir, "-p", "what is the opposite of hot", "-p", "hello world",
             "-a", "a", "-a", "b", "--compare", "--max-new-tokens", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    conds = {line.split("]")[0][1:] for line in r.stdout.splitlines() if line.startswith("[")}
    assert conds == {"base", "a+b", "a", "b"}
    assert sum(line.startswith("[") for line in r.stdout.splitlines()) == 8


def test_train_data_is_the_library_recipe(lm_dir, tmp_path):
    """The CLI's adapter equals the library's train_from_data on the same rows and seed (one way to do it)."""
    import torch

    import roadinterp as ri
    from roadinterp.adapters.behaviour import train_from_data
    from roadinterp.zoo import load_model, load_tokenizer

    data = _jsonl(tmp_path / "opp.jsonl", ROWS)
    r = _run("train", "--data", data, "--model", lm_dir, "--layers", "1", "--epochs", "2", "--batch-size", "2",
             "--seed", "3", "--out", "cli", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = ri.load(tmp_path / "cli")
    want = train_from_data(load_model(str(lm_dir)), load_tokenizer(str(lm_dir)), str(data), layers=[1], epochs=2,
                           batch_size=2, seed=3).adapter
    assert got.targets == want.targets
    for (k, a), (_, b) in zip(got.items(), want.items()):
        assert torch.allclose(a.theta, b.theta, atol=1e-6), k


@pytest.mark.parametrize("rows, why", [
    ([ROWS[0], "{not json", ROWS[1]], "row 2"),
    ([ROWS[0], ROWS[1], {"prompt": "what is hot", "completion": ""}], "row 3"),
    ([ROWS[0], {"completion": "cold"}], "row 2"),
    ([], "empty"),
    ([{"prompt": " ".join(["hello"] * 80), "completion": "cold"}], "context"),
])
def test_bad_rows_are_one_line_and_write_nothing(lm_dir, tmp_path, rows, why, capsys, monkeypatch):
    data = _jsonl(tmp_path / "bad.jsonl", rows)
    code, lines = _run_here(["train", "--data", data, "--model", lm_dir, "--layers", "1", "--out", "never"],
                            tmp_path, capsys, monkeypatch)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert why in lines[0]
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("args, why", [
    (["--model", "zoo:hierarchical-equality-mlp"], "no tokenizer"),
    (["--model", "{lm}", "--task", "ioi"], "exactly one of --data"),
    (["--model", "{lm}", "--variant", "road_9"], "--variant"),
    (["--model", "{lm}", "--positions", "middle"], "--positions"),
    (["--model", "{lm}", "--placement", "attention"], "--placement"),
    (["--model", "{lm}", "--template", "chatml"], "--template"),
    ([], "--data needs --model"),
])
def test_bad_options_are_one_line_and_write_nothing(lm_dir, tmp_path, args, why, capsys, monkeypatch):
    data = _jsonl(tmp_path / "ok.jsonl", ROWS)
    args = [str(lm_dir) if a == "{lm}" else a for a in args]
    code, lines = _run_here(["train", "--data", data, *args, "--out", "never"], tmp_path, capsys, monkeypatch)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert why in lines[0], lines[0]
    assert not (tmp_path / "never").exists()
