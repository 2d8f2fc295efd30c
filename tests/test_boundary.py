"""The input boundary: every bad input is one line, nothing the user owns is overwritten.

The matrix runs the real CLI entry point (``roadinterp.cli.main``) in-process, as the
console script does, and asserts for each bad input: exit status 2, exactly one
stderr line starting ``error:``, no traceback, and no file created, changed or
removed anywhere under the test's directory (which is also the working directory,
so default outputs such as ``runs/<task>`` would show up). Lock, Ctrl-C and SIGTERM
cases that need real processes and signals are at the end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from roadinterp import io
from roadinterp.adapters import RoadAdapter

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ helpers
def _adapter(width=16, blocks=(0, 1, 2)):
    a = RoadAdapter({"0:block_output:last": width}, variant="road_2", group_size=8, blocks=list(blocks),
                    meta={"task": "t"})
    for r in a.rotations.values():
        torch.nn.init.uniform_(r.theta, -1, 1)
    return a


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A directory with the user's own files and some hostile inputs; also the working directory."""
    monkeypatch.chdir(tmp_path)
    w = {"tmp": str(tmp_path)}
    (tmp_path / "notes.txt").write_text("the user's file\n")
    w["file"] = str(tmp_path / "notes.txt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("do not delete\n")
    w["userdir"] = str(tmp_path / "mine")
    for name, blocks in (("op", (0, 1, 2)), ("fmt", (3, 4))):
        io.save(_adapter(blocks=blocks), tmp_path / "a" / name)
    w["adapter"], w["adapter2"] = str(tmp_path / "a" / "op"), str(tmp_path / "a" / "fmt")
    io.save(_adapter(), tmp_path / "b" / "op")  # same directory name as a/op
    w["same_name"] = str(tmp_path / "b" / "op")
    # hostile adapters: a width of 10**12, JSON nested 200,000 deep, NaN parameters
    io.save(_adapter(), tmp_path / "huge")
    doc = json.loads((tmp_path / "huge" / io.CONFIG_NAME).read_text())
    doc["config"]["targets"] = {k: 10**12 for k in doc["config"]["targets"]}
    (tmp_path / "huge" / io.CONFIG_NAME).write_text(json.dumps(doc))
    w["huge"] = str(tmp_path / "huge")
    io.save(_adapter(), tmp_path / "deep")
    (tmp_path / "deep" / io.CONFIG_NAME).write_text("[" * 200_000 + "]" * 200_000)
    w["deep_adapter"] = str(tmp_path / "deep")
    io.save(_adapter(), tmp_path / "nan")
    from safetensors.torch import load_file, save_file

    t = load_file(str(tmp_path / "nan" / io.WEIGHTS_NAME))
    next(iter(t.values()))[0] = math.nan
    save_file(t, str(tmp_path / "nan" / io.WEIGHTS_NAME))
    w["nan_adapter"] = str(tmp_path / "nan")
    # config files for align --config
    cfgs = {"deep.json": '{"task": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "unhashable.json": json.dumps({"families": [["das"]]}),
            "nan.json": '{"lr": NaN}', "list.json": "[1, 2]",
            "negative.json": json.dumps({"layers": [-1]}), "epochs.json": json.dumps({"epochs": 10**9})}
    for name, text in cfgs.items():
        (tmp_path / name).write_text(text)
        w[name.split(".")[0]] = str(tmp_path / name)
    (tmp_path / "latin1.json").write_bytes(b'{"task": "caf\xe9"}')
    w["latin1"] = str(tmp_path / "latin1.json")
    # run directories: a healthy one, one with a corrupted store, one with an invalid run.json
    from roadinterp.store import RunStore

    for name in ("run", "corrupt", "badjson"):
        s = RunStore(tmp_path / name, {"task": "hierarchical-equality", "families": ["road"], "sizes": [2]})
        s.add("k", {"family": "road", "layer": 0, "component": "block_output", "position": "last", "size": 2,
                    "seed": 0, "iia": 0.5})
        s.close()
    (tmp_path / "corrupt" / "results.db").write_bytes(b"this is not a database" * 100)
    for p in (tmp_path / "corrupt").glob("results.db-*"):
        p.unlink()
    (tmp_path / "badjson" / "run.json").write_text("{not json")
    w.update(run=str(tmp_path / "run"), corrupt=str(tmp_path / "corrupt"), badjson=str(tmp_path / "badjson"))
    return w


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """The console script in-process: (exit status, stdout, stderr)."""
    from roadinterp.cli import main

    saved = [(s, signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)]
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for s, h in saved:
            signal.signal(s, h)
    out, err = capsys.readouterr()
    return code, out, err


ALIGN = ["align", "--task", "hierarchical-equality", "--seeds", "1", "--n-train", "64", "--n-test", "64",
         "--epochs", "1", "--layers", "0", "--family", "road", "--size", "2", "--no-controls", "--no-report",
         "--workers", "1"]
TRAIN = ["train", "--task", "behaviour-op", "--steps", "2", "--n-train", "64"]

# (id, argv with {placeholders}, a fragment the one error line must contain)
MATRIX = [
    # usage errors (Typer/Click): before the fix these were tracebacks, exit 1
    ("unknown-command", ["nope"], "No such command 'nope'"),
    ("unknown-subcommand-zoo", ["zoo", "nope"], "No such command 'nope'"),
    ("unknown-subcommand-plot", ["plot", "nope"], "No such command 'nope'"),
    ("plot-no-subcommand", ["plot"], "Missing command"),
    ("bench-missing-name", ["bench"], "Missing argument"),
    ("zoo-train-missing-name", ["zoo", "train"], "Missing argument"),
    ("tasks-extra-argument", ["tasks", "extra"], "unexpected extra argument"),
    ("align-unknown-option", ["align", "--bogus"], "No such option: --bogus"),
    ("align-seeds-not-int", ["align", "--seeds", "abc"], "'--seeds'"),
    ("align-epochs-float", ["align", "--epochs", "1e3"], "'--epochs'"),
    ("align-workers-not-int", ["align", "--workers", "two"], "'--workers'"),
    ("zoo-train-seed-not-int", ["zoo", "train", "x", "--seed", "abc"], "'--seed'"),
    ("train-missing-out", ["train", "--task", "behaviour-op"], "Missing option '--out'"),
    ("report-missing-run", ["report"], "Missing argument"),
    ("compose-missing-adapters", ["compose", "-o", "{tmp}/c"], "Missing argument"),
    ("plot-missing-out", ["plot", "angles", "{adapter}"], "Missing option '--out'"),
    # align: counts, bounds, memory
    ("align-seeds-0", [*ALIGN, "--seeds", "0", "-o", "r"], "--seeds must be >= 1"),
    ("align-seeds-1e12", [*ALIGN, "--seeds", "1000000000000", "-o", "r"], "--seeds must be >= 1 and <= 10,000"),
    ("align-epochs-1e9", [*ALIGN, "--epochs", "1000000000", "-o", "r"], "--epochs must be >= 1 and <= 10,000"),
    ("align-n-train-1e13", [*ALIGN, "--n-train", "10000000000000", "-o", "r"], "--n-train must be >= 1"),
    ("align-n-test-0", [*ALIGN, "--n-test", "0", "-o", "r"], "--n-test must be >= 1"),
    ("align-memory-estimate", [*ALIGN, "--n-train", "999000000", "--seeds", "3", "-o", "r"],
     "of memory (estimate)"),
    ("align-workers-0", [*ALIGN, "--workers", "0", "-o", "r"], "--workers must be >= 1"),
    ("align-layers-empty", [*ALIGN, "--layers", ",", "-o", "r"], "--layers must list at least one"),
    ("align-layers-negative", [*ALIGN, "--layers", "-1", "-o", "r"], "--layers values must be >= 0"),
    ("align-size-0", [*ALIGN, "--size", "0", "-o", "r"], "sizes must be >= 1"),
    ("align-positions-99", [*ALIGN, "--positions", "99", "-o", "r"], "position 99 is out of range"),
    ("align-executor", [*ALIGN, "--executor", "spark", "-o", "r"], "executor must be one of"),
    ("align-out-empty", [*ALIGN, "--out", ""], "--out must be a non-empty string"),
    ("align-model-empty", [*ALIGN, "--model", "", "-o", "r"], "--model must be a non-empty string"),
    ("align-task-empty", ["align", "--task", "", "-o", "r"], "--task must be a non-empty string"),
    ("align-resume-overwrite", [*ALIGN, "--resume", "--overwrite", "-o", "r"], "contradict"),
    ("align-out-is-file", [*ALIGN, "-o", "{file}"], "is an existing file"),
    ("align-out-foreign-dir", [*ALIGN, "-o", "{userdir}"], "roadinterp did not write"),
    ("align-out-parent-file", [*ALIGN, "-o", "{file}/run"], "is not a directory"),
    # align --config files
    ("config-is-directory", ["align", "--config", "{tmp}", "-o", "r"], "is a directory"),
    ("config-missing", ["align", "--config", "{tmp}/none.json", "-o", "r"], "does not exist"),
    ("config-not-utf8", ["align", "--config", "{latin1}", "-o", "r"], "is not UTF-8"),
    ("config-deep", ["align", "--config", "{deep}", "-o", "r"], "levels deep"),
    ("config-unhashable", ["align", "--config", "{unhashable}", "-o", "r"], "families must contain strs"),
    ("config-lr-nan", [*ALIGN, "--config", "{nan}", "-o", "r"], "lr must be a finite number"),
    ("config-not-object", ["align", "--config", "{list}", "-o", "r"], "must hold a JSON object"),
    ("config-negative-layer", ["align", "--config", "{negative}", "-o", "r"], "layers must be >= 0"),
    ("config-epochs-1e9", ["align", "--config", "{epochs}", "-o", "r"], "epochs must be >= 1 and <= 10,000"),
    # train
    ("train-lr-nan", [*TRAIN, "--lr", "nan", "-o", "ad"], "--lr must be a finite number"),
    ("train-lr-inf", [*TRAIN, "--lr", "inf", "-o", "ad"], "--lr must be a finite number"),
    ("train-lr-negative", [*TRAIN, "--lr", "-1", "-o", "ad"], "--lr must be > 0"),
    ("train-lr-zero", [*TRAIN, "--lr", "0", "-o", "ad"], "--lr must be > 0"),
    ("train-steps-0", [*TRAIN, "--steps", "0", "-o", "ad"], "--steps must be >= 1"),
    ("train-steps-1e9", [*TRAIN, "--steps", "1000000000", "-o", "ad"], "<= 10,000,000"),
    ("train-n-train-1e13", [*TRAIN, "--n-train", "10000000000000", "-o", "ad"], "--n-train must be"),
    ("train-seed-negative", [*TRAIN, "--seed", "-1", "-o", "ad"], "--seed must be >= 0"),
    ("train-blocks-empty-range", [*TRAIN, "--blocks", "7-3", "-o", "ad"], "start <= end"),
    ("train-blocks-garbage", [*TRAIN, "--blocks", "a-b", "-o", "ad"], "--blocks must look like"),
    ("train-blocks-repeated", [*TRAIN, "--blocks", "0-3,2", "-o", "ad"], "lists a block twice"),
    ("train-out-is-file", [*TRAIN, "-o", "{file}"], "is an existing file that roadinterp did not write"),
    ("train-out-foreign-dir", [*TRAIN, "-o", "{userdir}"], "is an existing directory that roadinterp"),
    ("train-out-empty", [*TRAIN, "-o", ""], "--out must be a non-empty string"),
    ("train-out-parent-file", [*TRAIN, "-o", "{file}/ad"], "is not a directory"),
    ("train-model-empty", [*TRAIN, "--model", "", "-o", "ad"], "--model must be a non-empty string"),
    ("train-unknown-task", ["train", "--task", "nope", "-o", "ad"], "unknown task 'nope'"),
    # compose
    ("compose-same-names", ["compose", "{adapter}", "{same_name}", "-o", "c"], "are both named 'op'"),
    ("compose-weight-inf", ["compose", "{adapter}", "{adapter2}", "--weights", "op=inf", "-o", "c"],
     "must be a finite number"),
    ("compose-weight-nan", ["compose", "{adapter}", "{adapter2}", "--weights", "op=nan", "-o", "c"],
     "must be a finite number"),
    ("compose-weight-garbage", ["compose", "{adapter}", "{adapter2}", "--weights", "op", "-o", "c"],
     "--weights must look like"),
    ("compose-weight-unknown", ["compose", "{adapter}", "{adapter2}", "--weights", "x=1", "-o", "c"],
     "not among the adapters"),
    ("compose-huge-width", ["compose", "{huge}", "-o", "c"], "must be an int in [1, 1,048,576]"),
    ("compose-deep-json", ["compose", "{deep_adapter}", "-o", "c"], "levels deep"),
    ("compose-nan-adapter", ["compose", "{nan_adapter}", "-o", "c"], "NaN or infinite"),
    ("compose-out-is-file", ["compose", "{adapter}", "-o", "{file}"], "is an existing file"),
    ("compose-missing-adapter", ["compose", "{tmp}/none", "-o", "c"], "does not exist"),
    # generate (fails before the model is loaded)
    ("generate-same-names", ["generate", "-m", "zoo:x", "-p", "hi", "-a", "{adapter}", "-a", "{same_name}"],
     "are both named 'op'"),
    ("generate-weight-inf", ["generate", "-m", "zoo:x", "-p", "hi", "-a", "{adapter}", "--weights", "op=inf"],
     "must be a finite number"),
    ("generate-max-new-tokens-0", ["generate", "-m", "zoo:x", "-p", "hi", "--max-new-tokens", "0"],
     "--max-new-tokens must be >= 1"),
    ("generate-nan-adapter", ["generate", "-m", "zoo:x", "-p", "hi", "-a", "{nan_adapter}"], "NaN or infinite"),
    ("generate-model-empty", ["generate", "-m", "", "-p", "hi"], "--model must be a non-empty string"),
    ("generate-model-without-tokenizer", ["generate", "-m", "zoo:hierarchical-equality-mlp", "-p", "hi"],
     "has no tokenizer"),
    # plot / report
    ("plot-out-is-file", ["plot", "angles", "{adapter}", "-o", "{file}"], "is an existing file"),
    ("plot-out-parent-file", ["plot", "angles", "{adapter}", "-o", "{file}/x.html"], "is not a directory"),
    ("plot-bad-suffix", ["plot", "angles", "{adapter}", "-o", "x.txt"], "--out must end in .html"),
    ("plot-missing-input", ["plot", "angles", "{tmp}/none", "-o", "x.html"], "is neither a saved adapter"),
    ("report-corrupt-db", ["report", "{corrupt}", "-o", "r.html"], "is not a readable results store"),
    ("report-invalid-run-json", ["report", "{badjson}", "-o", "r.html"], "is not valid JSON"),
    ("report-out-is-file", ["report", "{run}", "-o", "{file}"], "is an existing file"),
    ("report-not-a-run", ["report", "{userdir}"], "is not a run directory"),
    # zoo / bench
    ("zoo-unknown", ["zoo", "train", "nope"], "unknown zoo model 'nope'"),
    ("zoo-train-pretrained", ["zoo", "train", "smollm2-135m"], "nothing to train"),
    ("zoo-seed-negative", ["zoo", "train", "hierarchical-equality-mlp", "--seed", "-1"], "--seed must be >= 0"),
    ("bench-unknown", ["bench", "nope"], "unknown benchmark 'nope'"),
    # screen: refused before any model is loaded or trained
    ("screen-unknown-task", ["screen", "--task", "nope", "-o", "{tmp}/scr"], "unknown task 'nope'"),
    ("screen-n-zero", ["screen", "--task", "hierarchical-equality", "--n", "0", "-o", "{tmp}/scr"], "--n must be >= 1"),
    ("screen-exact-unknown", ["screen", "--task", "hierarchical-equality", "--exact", "bogus", "-o", "{tmp}/scr"],
     "exact must be one of all, named, none"),
    ("screen-engine-unknown", ["screen", "--task", "hierarchical-equality", "--engine", "warp", "-o", "{tmp}/scr"],
     "engine must be one of auto, kv, hooks"),
]


@pytest.mark.parametrize("argv,fragment", [pytest.param(a, f, id=i) for i, a, f in MATRIX])
def test_bad_input_is_one_line_exit_2_nothing_changed(world, capsys, argv, fragment):
    argv = [a.format(**world) for a in argv]
    before = _snapshot(Path(world["tmp"]))
    code, out, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    assert fragment in lines[0], lines[0]
    assert _snapshot(Path(world["tmp"])) == before, "a refused run created, changed or removed files"


def test_debug_shows_the_traceback(world, capsys):
    from roadinterp.errors import ConfigError

    with pytest.raises(ConfigError, match="--lr must be a finite number"):
        run_cli(["--debug", *TRAIN, "--lr", "nan", "-o", "ad"], capsys)


def test_matrix_is_large_and_covers_every_command():
    from typer.main import get_command

    from roadinterp.cli import app

    assert len(MATRIX) >= 40
    covered = {" ".join(a for a in argv[:2] if not a.startswith("-")) for _, argv, _ in MATRIX}
    group = get_command(app)
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None)
        for full in ([f"{name} {s}" for s in subs] if subs else [name]):
            assert any(c == full or c.startswith(full) or full.startswith(c) for c in covered), full


def test_every_error_class_is_public():
    """Each RoadinterpError subclass is re-exported by ``roadinterp`` (callers catch them by name)."""
    import roadinterp
    from roadinterp import errors

    classes = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.RoadinterpError)}
    assert len(classes) >= 13
    missing = sorted(n for n in classes if n not in roadinterp.__all__ or getattr(roadinterp, n) is not
                     getattr(errors, n))
    assert not missing, f"errors not exported by roadinterp: {missing}"


# ------------------------------------------------------------------ outputs the user owns
def test_save_replaces_its_own_output_atomically_and_refuses_others(tmp_path):
    a, b = _adapter(), _adapter(blocks=(5, 6))
    io.save(a, tmp_path / "ad")
    io.save(b, tmp_path / "ad")  # our own save: replaced
    assert io.load(tmp_path / "ad").blocks == [5, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]  # no temporary or old copies left
    (tmp_path / "f").write_text("x")
    from roadinterp.errors import OutputError

    with pytest.raises(OutputError, match="did not write"):
        io.save(a, tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"
    io.save(a, tmp_path / "f", overwrite=True)
    assert io.load(tmp_path / "f").blocks == [0, 1, 2]


def test_replace_path_keeps_the_old_copy_until_the_new_one_is_in(tmp_path, monkeypatch):
    """Without renameat2 the fallback renames the old copy aside first; a crash after that leaves
    it beside the target (never deleted)."""
    io.save(_adapter(), tmp_path / "ad")
    monkeypatch.setattr(io, "_renameat2_exchange", lambda: None)
    real = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", crash_on_second)
    with pytest.raises(OSError):
        io.save(_adapter(blocks=(5,)), tmp_path / "ad")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".ad.old-")]
    assert len(aside) == 1 and io.load(aside[0]).blocks == [0, 1, 2]


def test_hostile_width_is_refused_before_allocating(tmp_path):
    import tracemalloc

    io.save(_adapter(), tmp_path / "ad")
    doc = json.loads((tmp_path / "ad" / io.CONFIG_NAME).read_text())
    doc["config"]["targets"] = {k: 1 << 19 for k in doc["config"]["targets"]}  # in bounds, wrong for the file
    (tmp_path / "ad" / io.CONFIG_NAME).write_text(json.dumps(doc))
    from roadinterp.errors import RoadinterpError

    tracemalloc.start()
    with pytest.raises(RoadinterpError, match="needs"):
        io.load(tmp_path / "ad")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20  # a width-524288 road_2 map would be 4 MiB of parameters


# ------------------------------------------------------------------ non-finite training
def test_dii_training_stops_at_a_nan_loss_and_saves_nothing(tmp_path):
    from roadinterp.dii import DIIConfig, make_data, train_dii
    from roadinterp.errors import NonFiniteError
    from roadinterp.sites import Site
    from roadinterp.tasks import get_task
    from tests.conftest import tiny_mlp

    task = get_task("hierarchical-equality")
    config = DIIConfig(family="road", size=2, n_train=64, n_test=64, epochs=1, batch_size=32, engine="pyvene")
    train, test = make_data(task, config)
    train.base["inputs_embeds"][3] = math.nan
    with pytest.raises(NonFiniteError, match="step 0"):
        train_dii(tiny_mlp(), task, Site(0, "block_output", "last"), config=config, data=(train, test))


def test_batched_dii_training_stops_at_a_nan_loss():
    from roadinterp.dii import DIIConfig, make_data
    from roadinterp.dii.batched import train_dii_batched
    from roadinterp.errors import NonFiniteError
    from roadinterp.sites import Site
    from roadinterp.tasks import get_task
    from tests.conftest import tiny_mlp

    task = get_task("hierarchical-equality")
    configs = [DIIConfig(family="road", size=2, seed=s, n_train=64, n_test=64, epochs=1, batch_size=32,
                         engine="pyvene") for s in (0, 1)]
    data = [make_data(task, c) for c in configs]
    data[1][0].sources[0]["inputs_embeds"][:] = math.inf
    with pytest.raises(NonFiniteError, match="batched DII training"):
        train_dii_batched(tiny_mlp(), task, Site(0, "block_output", "last"), configs, data=data)


def test_adapter_training_stops_at_a_nan_loss():
    from roadinterp.adapters import adapter_interventions
    from roadinterp.errors import NonFiniteError
    from roadinterp.sites import Site
    from roadinterp.tasks import get_task
    from roadinterp.training import train_adapter
    from tests.conftest import tiny_mlp

    task = get_task("hierarchical-equality")
    x, y = task.factual(64, split="train", seed=0)
    x["inputs_embeds"][5] = math.nan
    site = Site(0, "block_output", "all")
    adapter = RoadAdapter({site.key(): 16}, variant="road_2", group_size=8)
    ivs = adapter_interventions(adapter)
    with pytest.raises(NonFiniteError, match="adapter training"):
        train_adapter(tiny_mlp(), [site], [ivs[site.key()]], x, y, task=task, steps=3, batch_size=64)
    with pytest.raises(Exception, match="NaN or infinite"):
        with torch.no_grad():
            next(iter(adapter.rotations.values())).theta[0] = math.nan
        io.save(adapter, "/tmp/never-written-by-roadinterp-tests")
    assert not Path("/tmp/never-written-by-roadinterp-tests").exists()


def test_zoo_training_stops_at_a_nan_loss_and_keeps_the_cache(tmp_path, monkeypatch):
    from roadinterp import zoo
    from roadinterp.errors import NonFiniteError

    monkeypatch.setenv("ROADINTERP_CACHE", str(tmp_path))
    real = zoo._loss
    monkeypatch.setattr(zoo, "_loss", lambda *a: real(*a) * math.nan)
    with pytest.raises(NonFiniteError, match="zoo training"):
        zoo.train_zoo_model("hierarchical-equality-mlp", steps=3, progress=False)
    assert not (tmp_path / "zoo" / "hierarchical-equality-mlp").exists()


# ------------------------------------------------------------------ one writer per run directory
def _holder(run: Path, *extra: str) -> subprocess.Popen:
    code = ("import sys, time\nfrom roadinterp.store import lock_run\n"
            "with lock_run(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(run), *extra], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_is_refused_naming_the_holder_and_stale_lock_is_taken_over(world, capsys):
    run = Path(world["run"])
    holder = _holder(run)
    before = _snapshot(run)
    try:
        for extra in ([], ["--overwrite"], ["--resume"]):
            code, _, err = run_cli([*ALIGN, "-o", str(run), *extra], capsys)
            assert code == 2 and err.count("\n") == 1, err
            assert f"in use by another roadinterp run (process {holder.pid} on" in err, err
        assert _snapshot(run) == before  # --overwrite did not wipe the live run
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's lock is stale: the kernel released it, the next writer takes over
    from roadinterp.store import RunStore

    s = RunStore(run, json.loads((run / "run.json").read_text()), resume=True)
    assert s.done_keys() == {"k"}
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    s.close()


def test_library_refuses_resume_with_overwrite_and_foreign_directories(tmp_path):
    from roadinterp.errors import RunDirError
    from roadinterp.store import RunStore

    with pytest.raises(RunDirError, match="contradict"):
        RunStore(tmp_path / "r", {}, resume=True, overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.csv").write_text("precious")
    with pytest.raises(RunDirError, match="holds no roadinterp run"):
        RunStore(tmp_path / "mine", {})
    assert (tmp_path / "mine" / "results.csv").read_text() == "precious"
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ signals (real processes)
def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "COLUMNS": "130"}


LONG = ["--task", "hierarchical-equality", "--layers", "0,1,2", "--family", "road", "--size", "2", "--seeds", "2",
        "--n-train", "4096", "--n-test", "256", "--epochs", "6", "--no-controls", "--no-report", "--workers", "2",
        "--sequential"]


def _count(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _wait(pred, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    return [int(p) for p in out]


def _alive(pids) -> list[int]:
    alive = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.append(p)
        except OSError:
            pass
    return alive


@pytest.mark.slow
def test_ctrl_c_after_a_cell_exits_130_one_line_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "roadinterp.cli", "align", *LONG, "-o", str(run)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert _wait(lambda: _count(run / "results.db") >= 1 or proc.poll() is not None, 300)
    assert proc.poll() is None, "the run ended before it could be interrupted; make LONG longer"
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--resume" in lines[0] and lines[0].startswith("interrupted"), err
    assert _wait(lambda: not _alive(workers), 10), "workers outlived the interrupted run"
    kept = _count(run / "results.db")
    assert kept >= 1
    r = subprocess.run([sys.executable, "-m", "roadinterp.cli", "align", *LONG, "-o", str(run), "--resume"],
                       env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert _count(run / "results.db") == 6


@pytest.mark.parametrize("code", [130, 143, 2, 0])
def test_process_exit_keeps_the_status_runs_atexit_and_flushes(tmp_path, code):
    # run_process: an interrupted exit (130/143) leaves through os._exit, after the atexit functions
    # and a flush of buffered output; any other status is Python's own exit. Either way the
    # status the boundary chose is the process's, and nothing registered at exit is skipped.
    mark = tmp_path / "atexit"
    script = (f"import atexit, sys\nfrom _roadinterp_entry import run_process\n"
              f"atexit.register(lambda: open({str(mark)!r}, 'w').write('ran'))\n"
              f"sys.stdout.write('buffered')\n"
              f"run_process(lambda: sys.exit({code}))\n")
    r = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == code, r.stderr
    assert r.stdout == "buffered"
    assert mark.read_text() == "ran"


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["import", "worker-start-up"])
def test_ctrl_c_at_start_up_is_one_line(tmp_path, moment):
    run = tmp_path / "run"
    # what the console script runs (pyproject [project.scripts]): the handler before `import roadinterp`
    proc = subprocess.Popen([sys.executable, "-m", "_roadinterp_entry", "align", *LONG, "-o", str(run)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    if moment == "import":
        time.sleep(0.3)  # torch / transformers / pyvene are still importing (>= 1 s on this machine)
    else:  # the first spawned worker exists but is still importing
        assert _wait(lambda: _children(proc.pid) or proc.poll() is not None, 120)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), err
    if moment == "import":  # the launcher's own line, so the signal did land mid-import
        assert lines == ["interrupted"], err


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_started_with_sigint_ignored_can_still_be_stopped(tmp_path, sig, code):
    """``nohup roadinterp align ... &`` starts with SIGINT ignored; `kill -INT`/`kill` still stop it."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "roadinterp.cli", "align", *LONG, "-o", str(run)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_sigint)  # noqa: PLW1509 (the test process starts no threads here)
    assert _wait(lambda: (run / ".lock").exists() or proc.poll() is not None, 120)
    os.kill(proc.pid, sig)  # the leader only, as `kill PID` does
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--resume" in lines[0], err
