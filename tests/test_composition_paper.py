"""experiments/composition_paper.py runs at --quick on the real SmolLM2, writes its outputs and resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_composition_paper_quick_writes_cells_outputs_and_resumes(tmp_path):
    run = tmp_path / "run"
    out_json = tmp_path / "composition_lm.json"
    out_json.write_text(json.dumps({"kept": 1}))
    cmd = [sys.executable, str(ROOT / "experiments" / "composition_paper.py"), "--quick", "--run-dir", str(run),
           "--protocols", "joint,separate,own_layers,loreft", "--out-json", str(out_json),
           "--out-md", str(tmp_path / "t.md")]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    assert doc["kept"] == 1  # other keys of the file are kept
    assert set(doc["road"]) >= {"A", "B", "A+B", "neutral", "base_neutral", "protocol"}
    block = doc["pairs"]["upper+frame"]
    assert set(block) >= {"A", "B", "A+B", "neutral", "base_neutral", "protocol", "protocols"}
    assert set(block["protocols"]) == {"joint", "separate", "own_layers", "loreft"}
    cell = json.loads((run / "cells" / "upper+frame" / "joint" / "seed0.json").read_text())
    curve = cell["curves"]["A+B joint"]
    assert len(curve["loss"]) == curve.get("steps", len(curve["loss"])) >= 1 and curve["step_seconds"] > 0
    assert set(cell["diagnosis"]) >= {"kl", "cos", "additivity", "top1", "layers"}
    assert (run / "curves.png").stat().st_size > 1000 and (run / "diagnosis.json").exists()
    assert "| joint | 1 |" in (tmp_path / "t.md").read_text()
    # resumable: a second run skips every finished cell
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stderr.count("(done)") == 4, r.stderr[-2000:]


@pytest.mark.slow
def test_linear_protocol_with_a_calibrated_lambda_grid(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "experiments" / "composition_paper.py"), "--quick", "--run-dir", str(run),
           "--protocols", "linear", "--lambda-grid", "0,1", "--out-json", str(tmp_path / "c.json"),
           "--out-md", str(tmp_path / "t.md")]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    cell = json.loads((run / "cells" / "upper+frame" / "linear" / "seed0.json").read_text())
    cal = cell["calibration"]
    assert sorted(map(tuple, (g["lambda"] for g in cal["grid"]))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert cal["lambda"] in [g["lambda"] for g in cal["grid"]] and cal["n_val"] == 4
    assert {"A+B_cal", "content_cal", "neutral_cal"} <= set(cell)
    for curve in cell["curves"].values():
        assert curve["stopped"] in ("epochs", "plateau", "time") and len(curve["window_loss"]) >= 1
    assert cell["diagnosis"]["layers"][0]["layer"] == 15  # linear adapters read from their first block
    doc = json.loads((tmp_path / "c.json").read_text())
    assert set(doc["pairs"]["upper+frame"]["protocols"]) == {"linear", "linear+cal"}
    assert "| linear+cal (lambda " in (tmp_path / "t.md").read_text()
