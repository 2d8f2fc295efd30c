"""The experiment scripts that write docs/results.md sections run end to end (--quick)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_butterfly_depth_quick(tmp_path):
    out = tmp_path / "results.md"
    out.write_text("# Results\n\n## Other\n\nkept\n")
    subprocess.run([sys.executable, str(ROOT / "experiments" / "butterfly_depth.py"), "--quick", "--depths", "1,2",
                    "--out", str(out)], check=True, env=ENV, capture_output=True)
    text = out.read_text()
    assert "## Other\n\nkept" in text and text.count("## Butterfly depth") == 1
    rows = [l for l in text.splitlines() if l.startswith("| 1 |") or l.startswith("| 2 |")]
    assert len(rows) == 2 and "| 32 |" in rows[0] and "| 64 |" in rows[1]


@pytest.mark.slow
def test_alignment_reproduction_quick(tmp_path):
    out = tmp_path / "results.md"
    run = tmp_path / "run"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "alignment_hierarchical_equality.py"), "--quick",
                    "--run", str(run), "--out", str(out), "--workers", "1"], check=True, env=ENV, capture_output=True)
    text = out.read_text()
    assert "## Alignment: hierarchical equality" in text and f"--out {run}" in text
    table = [l for l in text.splitlines() if l.startswith("| das |") or l.startswith("| butterfly |")]
    assert len(table) == 6  # 2 families x every layer (0, 1, 2)
    assert "Partial run" not in text
    assert (run / "results.csv").exists()


@pytest.mark.slow
def test_composition_linear_quick(tmp_path):
    out = tmp_path / "results.md"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "composition_linear.py"), "--quick", "--out", str(out)],
                   check=True, env=ENV, capture_output=True)
    text = out.read_text()
    assert text.count("## Composition on Linear outputs") == 1
    for cond in ("base", "op only", "format only", "op+format"):
        assert f"| {cond} |" in text
    # the base model solves its own task and none of the behaviours
    base_row = next(l for l in text.splitlines() if l.startswith("| base |"))
    assert base_row.split("|")[2].strip().startswith("1.000")
