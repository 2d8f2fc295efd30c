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


@pytest.mark.slow
def test_lm_alignment_quick_on_the_real_model(tmp_path):
    """The SmolLM2 scan script: one variable (io_position), its run stored, a section with a row per
    family and layer, the controls' columns filled, then --render-only gives the same table."""
    out = tmp_path / "results.md"
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "experiments" / "lm_alignment.py"), "--quick", "--scans", "ioi-io_position",
           "--run", str(run), "--out", str(out), "--workers", "1"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "### ioi: `io_position`" in text and "--variables io_position" in text
    rows = [l for l in text.splitlines() if l.startswith(("| butterfly | 21 |", "| das | 21 |"))]
    assert len(rows) == 2, text
    for row in rows:  # family, layer, seeds, IIA, range, vocab IIA, train IIA, no-op, site patch, random-init, ...
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert cells[2] == "2" and all(0 <= float(cells[i]) <= 1 for i in (5, 6, 7, 8, 9)), row
        assert float(cells[5]) <= float(cells[3].split("±")[0]) + 1e-9  # the full vocabulary is the stricter reading
    wall = [l for l in text.splitlines() if l.startswith("Base accuracy")]
    import json

    assert json.loads((run / "ioi-io_position" / "run.json").read_text())["variables"] == ["io_position"]
    again = subprocess.run([*cmd, "--render-only"], env=ENV, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [l for l in out.read_text().splitlines() if l.startswith("| butterfly | 21 |")] == rows[:1]
    # the live scan's wall time is kept in the run directory and rendered again
    assert [l for l in out.read_text().splitlines() if l.startswith("Base accuracy")] == wall and "min." in wall[0]


@pytest.mark.slow
def test_planted_rotation_quick(tmp_path):
    """A random rotation plants V1, V2 in a 48-wide layer: the planted subspaces are the ideal DII
    (oracle IIA 1), a random subspace and the no-op are near chance, and das finds the planted one."""
    out, data = tmp_path / "results.md", tmp_path / "planted.json"
    out.write_text("# Results\n\n## Other\n\nkept\n")
    cmd = [sys.executable, str(ROOT / "experiments" / "planted_rotation.py"), "--quick", "--out", str(out),
           "--data", str(data)]
    subprocess.run(cmd, check=True, env=ENV, capture_output=True)
    text = out.read_text()
    assert "## Other\n\nkept" in text and text.count("## Planted rotation") == 1
    rows = [[c.strip() for c in l.strip().strip("|").split("|")] for l in text.splitlines() if l.startswith("| 48 |")]
    (_, accuracy, planted, random_subspace, dof), = [r for r in rows if len(r) == 5]  # the model's checks
    assert accuracy == planted == "1.000" and float(random_subspace) < 0.3 and dof == str(4 * 44 + 4 * 40)
    # d, family, free parameters, seeds, IIA mean ± std, range, train IIA, no-op, s per seed
    das, butterfly = (next(r for r in rows if r[1] == f) for f in ("das", "butterfly"))
    assert das[2] == str(48 * 47 // 2) and das[3] == "2"
    assert float(das[4].split("±")[0]) > 0.85, das  # the setup is learnable
    assert float(das[7]) < 0.15 and das[7] == butterfly[7]  # no-op at chance, one held-out set
    assert 0.0 <= float(butterfly[4].split("±")[0]) <= 1.0
    section = text[text.index("## Planted rotation"):]
    out.write_text("# Results\n")
    subprocess.run([*cmd, "--render-only"], check=True, env=ENV, capture_output=True)
    assert out.read_text().endswith(section)
