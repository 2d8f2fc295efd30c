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
