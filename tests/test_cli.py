"""CLI contract beyond align: unknown names and bad files are one `error:` line, exit 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "roadinterp.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


@pytest.mark.parametrize(
    "args,msg",
    [
        (["zoo", "train", "nope"], "unknown zoo model 'nope'; known zoo models: addition-carry-gpt2"),
        (["bench", "nope"], "unknown benchmark 'nope'; known benchmarks: batching, dii"),
        (["bench", "dii", "--model", "zoo:smollm2-135m"], "--model/--reps are options of 'bench batching'"),
        (["compose", "/nonexistent/adapter", "--out", "OUT"], "/nonexistent/adapter does not exist"),
        (["plot", "angles", "/nonexistent", "--out", "x.html"], "is neither a saved adapter"),
        (["train", "--task", "nope", "--out", "OUT"], "unknown task 'nope'"),
    ],
)
def test_bad_names_and_files(tmp_path, args, msg):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    r = subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_tasks_and_zoo_list_json():
    import json

    r = subprocess.run([*CLI, "tasks", "--json"], env=ENV, capture_output=True, text=True, check=True)
    names = {t["name"] for t in json.loads(r.stdout)}
    assert {"hierarchical-equality", "addition-carry", "interval", "behaviour-op", "behaviour-format"} <= names
    r = subprocess.run([*CLI, "zoo", "--json"], env=ENV, capture_output=True, text=True, check=True)
    rows = {z["name"]: z for z in json.loads(r.stdout)}
    assert rows["hierarchical-equality-mlp"]["task"] == "hierarchical-equality"
    assert rows["hierarchical-equality-mlp"]["n_params"] == 850
