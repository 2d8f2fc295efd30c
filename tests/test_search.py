"""Alignment search: store, resume after SIGKILL, executors, controls, CLI errors."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from roadinterp.errors import ConfigError, RunDirError
from roadinterp.search import SearchConfig, search
from roadinterp.store import RunStore, read_run
from roadinterp.summary import best_alignment, summarize

CLI = [sys.executable, "-m", "roadinterp.cli"]
SMALL = ["--task", "hierarchical-equality", "--layers", "0,2", "--family", "neuron,road", "--size", "2",
         "--seeds", "2", "--n-train", "256", "--n-test", "256", "--epochs", "1", "--no-controls", "--no-report"]
SMALL_CFG = dict(task="hierarchical-equality", layers=[0, 2], families=["neuron", "road"], sizes=[2], seeds=2,
                 n_train=256, n_test=256, epochs=1, controls=False)
COMPARE = ["task", "model", "family", "layer", "component", "position", "size", "seed", "iia", "train_iia",
           "iia_vocab", "iia_random_model", "iia_rival"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _started_after(pid: int, t: float) -> bool:
    """Did process ``pid`` start after wall time ``t``? (/proc: boot time + start ticks)"""
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(l.split()[1]) for l in Path("/proc/stat").read_text().splitlines() if l.startswith("btime"))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK") >= t - 1
    except (OSError, IndexError, ValueError, StopIteration):
        return False


def _cmp(a: pd.DataFrame, b: pd.DataFrame):
    a = a[COMPARE].sort_values(["family", "layer", "seed"]).reset_index(drop=True)
    b = b[COMPARE].sort_values(["family", "layer", "seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_a_closed_store_leaves_only_its_database(tmp_path):
    """WAL is for the writing run: after close, and after a read-only reader, no -wal/-shm remain."""
    s = RunStore(tmp_path / "r", {"a": 1})
    s.add("k1", {"family": "x", "layer": 0, "iia": 0.5})
    assert (tmp_path / "r" / "results.db-wal").exists()  # while it writes
    s.close()
    read_run(tmp_path / "r")
    assert not [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith("results.db-")]
    s = RunStore(tmp_path / "r", {"a": 1}, resume=True)  # resumes in WAL again, cells intact
    assert s.done_keys() == {"k1"}
    s.close()


def test_store_refuses_other_config_and_unwritable(tmp_path):
    s = RunStore(tmp_path / "r", {"a": 1})
    s.add("k1", {"family": "x", "layer": 0, "iia": 0.5})
    s.close()
    with pytest.raises(RunDirError, match="different config"):
        RunStore(tmp_path / "r", {"a": 2})
    with pytest.raises(RunDirError, match="--resume"):
        RunStore(tmp_path / "r", {"a": 1})
    s = RunStore(tmp_path / "r", {"a": 1}, resume=True)
    assert s.done_keys() == {"k1"}
    s.close()
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    if os.geteuid() != 0:  # root ignores permissions
        with pytest.raises(RunDirError, match="cannot write"):
            RunStore(tmp_path / "ro" / "r", {})
    with pytest.raises(RunDirError, match="cannot write"):
        RunStore("/proc/roadinterp-run", {})


def test_config_validation_names_the_value():
    with pytest.raises(ConfigError, match="seeds must be a positive int, got 'three'"):
        SearchConfig(seeds="three")
    with pytest.raises(ConfigError, match="layers must contain ints, got '0'"):
        SearchConfig(layers=["0"])
    with pytest.raises(ConfigError, match="unknown search config fields"):
        SearchConfig.from_json({"famlies": ["das"]})
    with pytest.raises(Exception, match="unknown family 'dense'"):
        SearchConfig(families=["dense"])


def test_search_local_with_controls_and_summary(tmp_path):
    cfg = dict(SMALL_CFG, families=["road"], layers=[0], controls=True)
    table = search(out=str(tmp_path / "run"), **cfg)
    assert len(table) == 2
    assert table["iia_random_model"].notna().all() and table["iia_rival"].notna().all()
    assert (table["rival"] == "first-argument").all()
    # no-op baselines: the IIA of an intervention that changes nothing, per hypothesis
    from roadinterp.summary import null_baseline

    assert table["iia_null"].nunique() == 1 and 0.3 < table["iia_null"].iloc[0] < 0.7
    assert table["iia_null"].iloc[0] == pytest.approx(null_baseline(SearchConfig(**cfg)))
    assert table["iia_rival_null"].iloc[0] == pytest.approx(null_baseline(SearchConfig(**cfg), "first-argument"))
    s = summarize(table)
    assert s.loc[0, "n_seeds"] == 2
    assert s.loc[0, "iia_mean"] == pytest.approx(table["iia"].mean())
    assert s.loc[0, "iia_std"] == pytest.approx(table["iia"].std())
    best = best_alignment(table)
    assert best["family"] == "road" and best["layer"] == 0
    config, stored = read_run(tmp_path / "run")
    assert config["families"] == ["road"] and len(stored) == 2
    # the learned RoAd bases are saved per cell, load back exactly and feed the angle figures
    from roadinterp import io
    from roadinterp.interventions import RoadInterchange
    from roadinterp.viz import plot_angles

    saved = sorted((tmp_path / "run" / "cells").iterdir())
    assert [p.name for p in saved] == ["road-L0-block_output-last-s2-seed0",
                                       "road-L0-block_output-last-s2-seed0-random_model",
                                       "road-L0-block_output-last-s2-seed1",
                                       "road-L0-block_output-last-s2-seed1-random_model"]
    assert sorted(p.name for p in (tmp_path / "run" / "subspaces").iterdir()) == [p.name for p in saved]
    # seed agreement: from the saved subspaces, the same on both seeds' rows and in summarize
    from roadinterp.subspace import agreement_of, load_bases

    agree, chance = agreement_of(load_bases([tmp_path / "run" / "subspaces" / p.name for p in saved[::2]]))
    assert 0 < agree <= 1 and 0 < chance < 1
    assert stored["seed_agreement"].tolist() == pytest.approx([agree, agree])
    assert s.loc[0, "seed_agreement"] == pytest.approx(agree) and s.loc[0, "seed_agreement_chance"] == pytest.approx(chance)
    iv = io.load(saved[0])
    assert isinstance(iv, RoadInterchange) and iv.theta.abs().sum() > 0
    again = io.load(saved[0])
    assert torch.equal(iv.matrix(), again.matrix())
    assert plot_angles(tmp_path / "run", tmp_path / "angles.html").stat().st_size > 1000
    csv = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(csv.columns[:15]) == ["task", "model", "family", "layer", "component", "position", "size",
                                       "seed", "iia", "train_iia", "iia_vocab", "iia_random_model", "iia_rival",
                                       "rival", "seconds"]
    assert csv["iia_vocab"].isna().all()  # a vector task: no vocabulary to take a top-1 over


# long enough per cell that the run is still going when two cells are stored (training got fast)
KILLABLE = [*SMALL[:SMALL.index("--n-train")], "--n-train", "8192", "--n-test", "256", "--epochs", "8",
            *SMALL[SMALL.index("--no-controls"):]]


@pytest.mark.slow
def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path):
    full = tmp_path / "full"
    subprocess.run([*CLI, "align", *KILLABLE, "--out", str(full)], check=True, env=_env(), capture_output=True)
    _, ref = read_run(full)
    assert len(ref) == 8

    run = tmp_path / "killed"
    started = time.time()
    proc = subprocess.Popen([*CLI, "align", *KILLABLE, "--out", str(run)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = run / "results.db"
    deadline = time.time() + 300
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                n = con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
                con.close()
            except sqlite3.Error:
                n = 0
            if n >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed; make it larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # its worker processes die with it (no orphaned trainers left running)
    time.sleep(1.0)
    orphans = subprocess.run(["pgrep", "-f", "spawn_main"], capture_output=True, text=True).stdout.split()
    assert not [p for p in orphans if _ppid(int(p)) == 1 and _started_after(int(p), started)], orphans
    _, partial = read_run(run)
    assert 2 <= len(partial) < 8
    # without --resume the directory is refused (finished work is not silently discarded)
    r = subprocess.run([*CLI, "align", *KILLABLE, "--out", str(run)], env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "--resume" in r.stderr
    subprocess.run([*CLI, "align", *KILLABLE, "--out", str(run), "--resume"], check=True, env=_env(),
                   capture_output=True)
    _, resumed = read_run(run)
    assert len(resumed) == 8
    assert resumed["key"].is_unique
    _cmp(resumed, ref)


@pytest.mark.slow
def test_ray_executor_gives_the_same_table(tmp_path):
    ray = pytest.importorskip("ray")  # ray is in the dev extra, installed by `make test`
    local = search(out=str(tmp_path / "local"), **SMALL_CFG)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = search(out=str(tmp_path / "ray"), executor="ray", **SMALL_CFG)
    finally:
        ray.shutdown()
    _cmp(local, remote)


BAD = [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--family", "dense"], "unknown family 'dense'"),
    (["--component", "mlp_out"], "unknown component 'mlp_out'"),
    (["--layers", "9"], "layer 9 is out of range"),
    (["--size", "20"], "exceeds the site width 16"),
    (["--layers", "a"], "--layers must be comma-separated integers"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--executor", "spark"], "executor must be one of"),
    (["--device", "tpu"], "device must be auto, cpu or cuda"),
    (["--dtype", "int8"], "dtype must be one of"),
    (["--variables", "V3"], "unknown variable 'V3' for task hierarchical-equality; its variables: V1, V2"),
    (["--variables", "V1,V1"], "variables must be distinct"),
    (["--mode", "some"], "mode must be each, all or mixed"),
    (["--lr", "nan"], "lr must be a finite number"),
]


@pytest.mark.parametrize("args,msg", BAD)
def test_bad_input_one_error_line_exit_2_nothing_trusted(tmp_path, args, msg):
    out = tmp_path / "run"
    base = ["--task", "hierarchical-equality", "--seeds", "1", "--n-train", "64", "--n-test", "64",
            "--epochs", "1", "--no-report"]
    r = subprocess.run([*CLI, "align", *base, *args, "--out", str(out)], env=_env(), capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip() and "nnsight" not in l]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert msg in lines[0]
    assert "Traceback" not in r.stderr
    assert not (out / "results.db").exists() and not (out / "run.json").exists()


def test_config_file_with_wrong_types(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"task": "hierarchical-equality", "sizes": "8"}))
    r = subprocess.run([*CLI, "align", "--config", str(cfg), "--out", str(tmp_path / "r")], env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 2 and "sizes must be a non-empty list" in r.stderr and "Traceback" not in r.stderr


def test_unwritable_out(tmp_path):
    r = subprocess.run([*CLI, "align", "--task", "hierarchical-equality", "--out", "/proc/x/run"], env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cannot write to run directory" in r.stderr and "Traceback" not in r.stderr


def test_batched_search_matches_one_cell_at_a_time(tmp_path):
    cfg = dict(SMALL_CFG, families=["butterfly", "neuron"], layers=[0], seeds=3, controls=True)
    seq = search(**cfg)
    bat = search(batched=True, **cfg)
    a = seq.sort_values(["family", "seed"]).reset_index(drop=True)
    b = bat.sort_values(["family", "seed"]).reset_index(drop=True)
    assert list(a["key"]) == list(b["key"]) if "key" in a else True
    for col in ("iia", "iia_random_model", "iia_rival"):
        assert (a[col] - b[col]).abs().max() <= 0.02, (col, a[col].tolist(), b[col].tolist())


def test_dtype_places_the_frozen_model_and_results_follow_float32():
    from roadinterp.search.frozen import _MODELS

    cfg = {**SMALL_CFG, "families": ["road"], "layers": [1]}  # inputs_embeds: cast to the model's dtype
    ref = search(**cfg)
    half = search(device="cpu", dtype="bfloat16", **cfg)
    assert any(k.endswith("@cpu:bfloat16") and next(m.parameters()).dtype == torch.bfloat16
               for k, m in _MODELS.items())
    assert (ref["iia"] - half["iia"]).abs().max() <= 0.05  # bf16 rounding of the frozen MLP only


@pytest.mark.slow
def test_ray_scan_of_an_lm_on_the_kv_engine_gives_the_local_table(tmp_path):
    """A layer scan of a causal LM (every layer, last token, seeds batched, controls, the KV engine)
    through Ray workers gives the table the local executor gives."""
    ray = pytest.importorskip("ray")
    cfg = dict(task="interval", model="zoo:interval-llama", families=["butterfly"], sizes=[4], seeds=2,
               n_train=64, n_test=64, epochs=1, batch_size=32, controls=True)
    local = search(out=str(tmp_path / "local"), batched=True, **cfg)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = search(out=str(tmp_path / "ray"), executor="ray", batched=True, **cfg)
    finally:
        ray.shutdown()
    assert sorted(local["layer"].unique()) == [0, 1]
    _cmp(local, remote)


def test_one_variable_of_several_is_aligned_with_its_own_labels_and_controls(tmp_path):
    """--variables V1 aligns V1 alone (MIB-style): one subspace, counterfactuals that swap only V1,
    and every control (no-op, site patch) scored on those same counterfactuals."""
    from roadinterp.controls import joint_counterfactuals, null_iia
    from roadinterp.tasks import get_task

    cfg = dict(SMALL_CFG, families=["road"], layers=[0], seeds=1, controls=True, variables=["V1"])
    table = search(out=str(tmp_path / "run"), **cfg)
    task = get_task("hierarchical-equality")
    d = SearchConfig(**cfg).cell("road", 2, 0)
    test = task.counterfactuals(d.n_test, split="test", seed=d.test_seed, variables=("V1",), mode=d.mode)
    both = task.counterfactuals(d.n_test, split="test", seed=d.test_seed, mode=d.mode)
    assert test.variables == ("V1",) and len(test.sources) == 1
    assert table["iia_null"].iloc[0] == pytest.approx(null_iia(test))
    assert null_iia(test) != pytest.approx(null_iia(both))  # the labels really are V1's alone
    joint, k = joint_counterfactuals(task, d.n_test, seed=d.test_seed, variables=["V1"])
    assert k == 1 and table["iia_joint_null"].iloc[0] == pytest.approx(null_iia(joint))
    from roadinterp import io

    basis = io.load(next((tmp_path / "run" / "subspaces").iterdir()))
    assert basis.variables == ["V1"] and basis.sizes == [2]
    config, _ = read_run(tmp_path / "run")
    assert config["variables"] == ["V1"]
    # a rival hypothesis aligns its own variables: variables= does not apply to it
    with pytest.raises(ConfigError, match="variables selects among the main hypothesis"):
        SearchConfig(**cfg).cell("road", 2, 0).__class__(hypothesis="first-argument", variables=("V1",))


def test_a_cuda_run_loads_its_model_once_and_binds_the_task_on_that_copy(monkeypatch):
    """get_bound_task filters a prompt task on the model the search runs (device, dtype), never on a
    second, CPU float32 copy (mocked CUDA: zoo.load_model records where each copy goes)."""
    from roadinterp import zoo
    from roadinterp.search import frozen

    loads, bound = [], {}

    class Model(torch.nn.Module):
        def __init__(self, device):
            super().__init__()
            self.device_name = device
            self.w = torch.nn.Parameter(torch.zeros(1))

        def to(self, *args, **kwargs):  # "cuda" here is only a label
            return self

    class PromptTask:
        name, needs_tokenizer = "mock-prompt", True

        def bind(self, *, tokenizer, model, cache_dir, template="auto"):
            bound["model"] = model
            return self

    monkeypatch.setattr(zoo, "_resolve_device", lambda d: "cuda:0" if d in ("auto", "cuda") else d)
    monkeypatch.setattr(zoo, "load_model", lambda spec, device="cpu": loads.append((spec, device)) or Model(device))
    monkeypatch.setattr(frozen, "get_tokenizer", lambda spec: object())
    monkeypatch.setattr("roadinterp.tasks.get_task", lambda name: PromptTask())
    monkeypatch.setattr(frozen, "_MODELS", {})
    monkeypatch.setattr(frozen, "_BOUND", {})
    model = frozen.get_model("zoo:mock", "cuda", "bfloat16")
    frozen.get_bound_task("mock-prompt", "zoo:mock", "cuda", "bfloat16")
    assert loads == [("zoo:mock", "cuda:0")] and bound["model"] is model
    assert list(frozen._MODELS) == ["zoo:mock@cuda:0:bfloat16"]  # no CPU float32 copy was made


def test_an_auto_binding_serves_the_form_it_resolved_to(monkeypatch):
    """search() binds with template='auto' and then hands jobs the resolved form ('chat'): in one
    process that is one binding (one filtering pass over the prompts), not two."""
    from roadinterp import zoo
    from roadinterp.search import frozen

    binds = []

    class PromptTask:
        name, needs_tokenizer = "mock-prompt", True

        def bind(self, *, tokenizer, model, cache_dir, template="auto"):
            binds.append(template)
            self.template = "chat" if template == "auto" else template
            return self

    monkeypatch.setattr(zoo, "load_model", lambda spec, device="cpu": torch.nn.Linear(1, 1))
    monkeypatch.setattr(frozen, "get_tokenizer", lambda spec: object())
    monkeypatch.setattr("roadinterp.tasks.get_task", lambda name: PromptTask())
    monkeypatch.setattr(frozen, "_MODELS", {})
    monkeypatch.setattr(frozen, "_BOUND", {})
    first = frozen.get_bound_task("mock-prompt", "zoo:mock", template="auto")
    assert frozen.get_bound_task("mock-prompt", "zoo:mock", template="chat") is first
    assert binds == ["auto"]
    frozen.get_bound_task("mock-prompt", "zoo:mock", template="raw")  # another form is another binding
    assert binds == ["auto", "raw"]


def test_run_options_are_shared_and_the_config_crosses_as_a_dataclass():
    import pickle

    from roadinterp.search import Cell, Job, RunOptions, SearchConfig
    from roadinterp.search.executors import LocalExecutor, PoolExecutor, make_executor

    assert isinstance(make_executor("local", 1, n_jobs=5), LocalExecutor)
    assert isinstance(make_executor("local", 2, n_jobs=5), PoolExecutor)
    cfg = SearchConfig(families=["road"])
    job = Job(cfg, (Cell("road", 0, "block_output", "last", 8, 0),), "zoo:hierarchical-equality-mlp")
    again = pickle.loads(pickle.dumps(job))
    assert again.config == cfg and isinstance(again.config, SearchConfig)
    assert RunOptions().batched and RunOptions().workers == 1
    with pytest.raises(ConfigError):
        Job(cfg, (Cell("road", 0, "block_output", "last", 8, 0), Cell("road", 1, "block_output", "last", 8, 1)),
            "m")


def test_one_cell_identity_renders_every_name_a_run_uses():
    from roadinterp.cellid import CellId
    from roadinterp.search import Cell
    from roadinterp.store import row_slug

    c = Cell("butterfly", 3, "block_output", (1, 2), 8, 2)
    assert c.key == "butterfly|3|block_output|1,2|8|2" and c.cell == "butterfly|3|block_output|1,2|8"
    assert c.slug() == "butterfly-L3-block_output-(1,2)-s8-seed2"  # run files keep their names
    assert c.slug("random_model") == c.slug() + "-random_model"
    row = {"family": "butterfly", "layer": 3.0, "component": "block_output", "position": "(1, 2)", "size": 8,
           "seed": 2}
    assert CellId.from_row(row).cell == c.cell and row_slug(row) == c.slug()
    assert CellId.parse(c.key).cell == c.cell and CellId.parse(c.cell).seed is None
    assert c.where == "block_output@1,2" and c.stem == "butterfly-3-block_output-1-2-8"
    with pytest.raises(ConfigError):
        CellId.parse("butterfly|x")
