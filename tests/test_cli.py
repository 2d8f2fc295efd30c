"""CLI contract beyond align: unknown names and bad files are one `error:` line, exit 2."""

import json
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


def _main(args, capsys):
    from roadinterp.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr()


def test_an_unexpected_exception_is_one_line_and_debug_shows_it(monkeypatch, capsys):
    from roadinterp import zoo

    def boom():
        raise RuntimeError("the loader fell over\nat line two")

    monkeypatch.setattr(zoo, "list_zoo", boom)
    code, out = _main(["zoo", "--json"], capsys)
    lines = [l for l in out.err.splitlines() if l.strip()]
    assert code == 1 and len(lines) == 1, out.err
    assert lines[0] == "error: RuntimeError: the loader fell over at line two (run with --debug for the traceback)"
    from roadinterp.cli import main

    with pytest.raises(RuntimeError):
        main(["--debug", "zoo", "--json"])


def test_train_checks_the_variant_before_any_work(tmp_path):
    r = subprocess.run([*CLI, "train", "--task", "hierarchical-equality", "--variant", "road_9", "--out",
                        str(tmp_path / "a")], env=ENV, capture_output=True, text=True, cwd=tmp_path)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--variant must be one of road_1" in lines[0], r.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("config", [{"positions": [{"a": 1}]}, {"layers": {"x": 0}}, {"dii": [1]},
                                    {"n_train": [64]}, {"variables": {"io": 1}}])
def test_a_config_value_of_the_wrong_shape_is_one_line(tmp_path, capsys, config):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    code, out = _main(["align", "--config", str(path), "--out", str(tmp_path / "run")], capsys)
    lines = [l for l in out.err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), out.err


def test_an_adapter_path_that_is_a_symlink_loop_is_one_line(tmp_path, capsys):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    code, out = _main(["compose", str(loop), "--out", str(tmp_path / "out")], capsys)
    lines = [l for l in out.err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "symlink loop" in lines[0], out.err


def test_atomic_files_keep_the_users_umask(tmp_path):
    from roadinterp import io
    from roadinterp.store import RunStore

    old = os.umask(0o022)
    try:
        assert (io.write_text_atomic(tmp_path / "a.txt", "x").stat().st_mode & 0o777) == 0o644
        store = RunStore(tmp_path / "run", {"task": "t"})
        store.add("k", {"family": "road", "layer": 0, "component": "block_output", "position": "last", "size": 1,
                        "seed": 0, "iia": 0.5})
        store.close()
        for name in ("run.json", "results.csv"):
            assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name
        os.umask(0o077)
        assert (io.write_text_atomic(tmp_path / "b.txt", "x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_the_results_table_fits_120_columns_and_wide_adds_the_rest():
    import pandas as pd
    from rich.console import Console

    from roadinterp.summary import best_alignment, summarize
    from roadinterp.viz.terminal import print_summary

    rows = [{"family": f, "layer": l, "component": "block_output", "position": "last", "size": 8, "seed": s,
             "iia": 0.5 + 0.01 * l, "train_iia": 0.9, "iia_vocab": 0.4, "iia_null": 0.3, "iia_random_model": 0.31,
             "iia_rival": 0.2, "iia_site_patch": 0.99, "seed_agreement": 0.5, "seed_agreement_chance": 0.1}
            for f in ("butterfly", "das") for l in range(30) for s in range(3)]
    table = pd.DataFrame(rows)
    for wide, limit in ((False, 120), (True, 240)):
        console = Console(record=True, width=limit)
        print_summary(console, summarize(table), best_alignment(table), "runs/x", wide=wide)
        text = console.export_text()
        assert max(map(len, text.splitlines()[:-2])) <= 120 or wide
        assert ("train IIA" in text) == wide and "random-init" in text
        assert "Best alignment: " in text
