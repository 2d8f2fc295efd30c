"""The screen (issue 28): exact whole-vector patches against a brute-force hook implementation and
pyvene's site-patch control, AtP against the finite-difference derivative, a variable at a known
position ranked first, the position grid, and the CLI end to end (files, refusals, resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from roadinterp.screen.grid import GridPosition

TASK_FILE = '''
import numpy as np
from roadinterp.tasks.base import do
from roadinterp.tasks.interval import Interval


class IntervalZ(Interval):
    """interval with one variable that is exactly one input token: z (position 3, offset -2)."""
    name = "interval-z"
    variables = ("z",)
    rivals = {}

    def _evaluate(self, raw, hypothesis, interventions):
        x, y = raw["x"], raw["y"]
        z = do(interventions, "z", raw["z"])
        return {"z": z, "output": ((x <= z) & (z <= y)).astype(np.int64)}


TASK = IntervalZ()
'''


# ------------------------------------------------------------------ a tiny LM with padded prompts
class _Answers:
    """Enough of a token task for the engines: class scores = last-position logits at answer ids."""

    answer_ids = list(range(5, 13))

    def logits(self, out):
        return out.logits[:, -1, self.answer_ids]


def _padded(n, seq, gen):
    lengths = torch.randint(seq - 3, seq + 1, (n,), generator=gen)
    ids = torch.randint(4, 64, (n, seq), generator=gen)
    mask = (torch.arange(seq)[None, :] >= (seq - lengths)[:, None]).long()
    ids = ids * mask  # pad id 0 on the left
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}


@pytest.fixture(scope="module")
def lm():
    from tests._text_lm import tiny_llama

    model = tiny_llama(64, layers=3, seed=1)
    gen = torch.Generator().manual_seed(0)
    n, seq = 6, 9
    base, src = _padded(n, seq, gen), _padded(n, seq, gen)
    batch = SimpleNamespace(base=base, sources=[src], labels=torch.randint(0, 8, (n,), generator=gen),
                            base_labels=torch.randint(0, 8, (n,), generator=gen))
    lo = int(seq - torch.minimum(base["attention_mask"].sum(1), src["attention_mask"].sum(1)).min())
    per_row = GridPosition("named", torch.randint(lo, seq, (n,), generator=gen),
                           torch.randint(lo, seq, (n,), generator=gen), None, "named")
    offset = GridPosition("-2", torch.full((n,), seq - 2), torch.full((n,), seq - 2), -2, None)
    return model, batch, [per_row, offset]


def _brute_force(model, batch, component, layer, pos):
    """One row at a time: the source's state from output_hidden_states, written by a plain forward hook."""
    block = model.model.layers[layer]
    out = []
    for i in range(len(batch.labels)):
        row = lambda d: {k: v[i:i + 1] for k, v in d.items()}  # noqa: E731
        with torch.no_grad():
            hs = model(**row(batch.sources[0]), output_hidden_states=True).hidden_states
        # hidden_states[l] enters block l; the last entry is after the final norm, so take block outputs by hook
        grabbed = {}
        h = model.model.layers[layer].register_forward_hook(lambda m, a, o: grabbed.setdefault("s", o))
        with torch.no_grad():
            model(**row(batch.sources[0]))
        h.remove()
        src_state = (hs[layer] if component == "block_input" else grabbed["s"])[0, int(pos.source[i])]

        def put(t):
            t = t.clone()
            t[0, int(pos.base[i])] = src_state
            return t

        if component == "block_input":
            handle = block.register_forward_pre_hook(lambda m, a, k: ((put(a[0]), *a[1:]), k) if a else
                                                     (a, {**k, "hidden_states": put(k["hidden_states"])}),
                                                     with_kwargs=True)
        else:
            handle = block.register_forward_hook(lambda m, a, o: put(o))
        try:
            with torch.no_grad():
                out.append(_Answers().logits(model(**row(batch.base))).float())
        finally:
            handle.remove()
    return torch.cat(out)


@pytest.mark.parametrize("component", ["block_output", "block_input"])
def test_exact_engines_equal_a_brute_force_patch(lm, component):
    from roadinterp.screen.exact import hook_cells, kv_cells

    model, batch, positions = lm
    layers = [0, 1, 2]
    want = {(l, p.label): _brute_force(model, batch, component, l, p) for l in layers for p in positions}
    for engine in (kv_cells, hook_cells):
        got = {}
        for layer, label, rows, z in engine(model, _Answers(), batch, layers, component, positions, batch_size=4):
            if layer is not None:
                got.setdefault((layer, label), []).append(z)
        assert set(got) == set(want)
        for key, z in got.items():
            torch.testing.assert_close(torch.cat(z), want[key], atol=1e-4, rtol=1e-4, msg=f"{engine.__name__} {key}")


def test_atp_equals_the_directional_derivative(lm):
    """AtP = d/de m(h_base + e (h_src - h_base)) at e = 0: per cell, a forward with e in the hook and
    autograd's derivative in e (one row each: e is per row), and central differences as a check."""
    import copy

    from roadinterp.screen.atp import atp_cells

    model, batch, positions = lm
    model = copy.deepcopy(model).double()
    task = _Answers()
    batch = SimpleNamespace(**vars(batch))
    batch.labels, batch.base_labels = batch.labels.clone(), batch.base_labels.clone()
    batch.labels[0] = batch.base_labels[0]  # a row whose labels agree: its metric, and estimate, is 0
    est: dict = {}
    for layer, label, _, e in atp_cells(model, task, batch, [0, 2], "block_output", positions, 4):  # 2 row batches
        est.setdefault((layer, label), []).append(e)
    est = {k: torch.cat(v) for k, v in est.items()}
    ar = torch.arange(len(batch.labels))

    def metric(layer, pos, eps):
        grabbed = {}
        h = model.model.layers[layer].register_forward_hook(lambda m, a, o: grabbed.setdefault("s", o))
        with torch.no_grad():
            model(**batch.sources[0])
        h.remove()
        src = grabbed["s"][ar, pos.source]

        def shift(m, a, o):
            o = o.clone()
            o[ar, pos.base] = o[ar, pos.base] + eps[:, None] * (src - o[ar, pos.base])
            return o

        h = model.model.layers[layer].register_forward_hook(shift)
        try:
            z = task.logits(model(**batch.base))
        finally:
            h.remove()
        return (z[ar, batch.labels] - z[ar, batch.base_labels]) * (batch.labels != batch.base_labels)

    n = len(ar)
    for layer in (0, 2):
        for pos in positions:
            e = torch.zeros(n, dtype=torch.float64, requires_grad=True)
            (deriv,) = torch.autograd.grad(metric(layer, pos, e).sum(), [e])
            got = est[(layer, pos.label)].double()
            torch.testing.assert_close(got, deriv, atol=1e-5, rtol=1e-5)
            with torch.no_grad():
                step = torch.full((n,), 1e-3, dtype=torch.float64)
                fd = (metric(layer, pos, step) - metric(layer, pos, -step)) / 2e-3
            torch.testing.assert_close(got, fd, atol=1e-2, rtol=2e-2)
            assert float(got[0]) == 0.0


# ------------------------------------------------------------------ a task whose variable sits at one token
@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("task") / "interval_z.py"
    path.write_text(TASK_FILE)
    return f"{path}:TASK"


def test_screen_ranks_the_known_position_first_and_scores_as_the_site_patch_control(task_file):
    from roadinterp import controls as C
    from roadinterp.screen import screen
    from roadinterp.sites import Site
    from roadinterp.tasks import get_task
    from roadinterp.zoo import load_model

    r = screen(task=task_file, model="zoo:interval-llama", component="block_input", n=128)
    g = r.grid
    assert r.meta["positions"] == ["-5 bos", "-4 x", "-3 y", "-2 z", "-1 last"]
    layer0 = g[g["layer"] == 0].set_index("position")
    assert layer0["iia"].idxmax() == "-2 z" and layer0.loc["-2 z", "iia"] > 0.95
    assert (layer0.drop("-2 z")["iia"] < 0.9).all()
    assert g["iia"].idxmax() == g.index[(g["layer"] == 0) & (g["position"] == "-2 z")][0]
    assert bool(layer0.loc["-1 last", "identical"])  # '?' in every prompt: the patch is the clean run
    # the same number DII's whole-site control gives at Site(0, block_input, -2), through pyvene
    model, task = load_model("zoo:interval-llama"), get_task(task_file)
    single = C.single_source(C.joint_counterfactuals(task, 128, seed=r.config.seed)[0])
    ref = C.site_patch_iia(model, task, Site(0, "block_input", -2), single, engine="pyvene")
    assert layer0.loc["-2 z", "iia"] == pytest.approx(ref)
    assert r.meta["iia_null"] == pytest.approx(C.null_iia(single))
    assert r.meta["compare"]["cells"] == len(g) and "spearman_delta" in r.meta["compare"]


def test_grid_counts_from_the_end_and_keeps_per_row_names():
    from roadinterp.screen.grid import grid_positions

    task = SimpleNamespace(positions={"last": -1, "io": None, "first": 1})
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    inputs = {"input_ids": torch.zeros(2, 6, dtype=torch.long), "attention_mask": mask}
    batch = SimpleNamespace(base=inputs, sources=[inputs], positions={"io": torch.tensor([[3, 4], [5, 1]])})
    got = grid_positions(task, batch)
    assert [p.label for p in got] == ["io", "-4", "-3", "-2", "-1 last"]  # the shortest prompt has 4 tokens
    assert got[0].base.tolist() == [3, 5] and got[0].source.tolist() == [4, 1]
    assert got[1].base.tolist() == [2, 2] and got[-1].name == "last"


def test_spearman_and_compare():
    import pandas as pd

    from roadinterp.screen.compare import compare, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 50]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    grid = pd.DataFrame({"layer": [0, 0, 1, 1], "position": ["a", "b", "a", "b"], "iia": [0.9, 0.5, 0.5, 0.5],
                         "delta": [3.0, 0.1, 0.2, 0.0], "atp": [1.0, 0.2, 0.3, 0.1]})
    c = compare(grid, null=0.5)
    assert c["spearman_delta"] == pytest.approx(1.0) and c["hits"] == 1 and c["recall"] == 1.0


# ------------------------------------------------------------------ the CLI
CLI = [sys.executable, "-m", "_roadinterp_entry"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


def _cli(args, cwd):
    return subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_end_to_end(tmp_path, task_file):
    out = tmp_path / "scr"
    args = ["screen", "--task", task_file, "--model", "zoo:interval-llama", "--n", "64", "--out", str(out)]
    r = _cli(args, tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert {p.name for p in out.iterdir()} == {"screen.json", "screen.csv", "screen.html", "screen.png"}
    assert max(len(line) for line in r.stdout.splitlines() if not line.startswith("grid: ")) <= 120
    assert "AtP vs exact over 10 cells" in r.stdout and "peak memory" in r.stdout
    doc = json.loads((out / "screen.json").read_text())
    assert doc["kind"] == "roadinterp-screen" and len(doc["grid"]) == 10
    assert "<script" in (out / "screen.html").read_text()[:200_000]
    before = (out / "screen.json").read_text()
    again = _cli(args, tmp_path)  # an existing screen is not replaced unasked
    assert again.returncode == 2 and again.stderr.startswith("error: --out") and len(again.stderr.splitlines()) == 1
    resumed = _cli([*args, "--resume", "--json"], tmp_path)
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["grid"] == doc["grid"]
    other = _cli([*args[:-4], "--n", "32", "--out", str(out), "--resume"], tmp_path)
    assert other.returncode == 2 and "differs in n" in other.stderr
    assert (out / "screen.json").read_text() == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    r = _cli([*args[:-1], str(foreign)], tmp_path)
    assert r.returncode == 2 and "did not write" in r.stderr and (foreign / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("extra,msg", [
    (["--variables", "nope"], "unknown variable 'nope'"),
    (["--layers", "7"], "layer 7 is out of range"),
    (["--exact", "some"], "exact must be one of all, named, none"),
    (["--engine", "kv", "--component", "mlp_output"], "engine='kv' is not possible here"),
])
def test_cli_bad_input_is_one_error_line(tmp_path, extra, msg):
    r = _cli(["screen", "--task", "interval", "--model", "zoo:interval-llama", "--out", str(tmp_path / "o"),
              *extra], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_help_loads_no_torch():
    code = ("import sys; from roadinterp.cli import app; import typer.testing as t; "
            "r = t.CliRunner().invoke(app, ['screen', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--exact' in r.output; print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_no_atp_no_exact_is_refused():
    from roadinterp.errors import ConfigError
    from roadinterp.screen import ScreenConfig

    with pytest.raises(ConfigError, match="nothing to compute"):
        ScreenConfig(exact="none", atp=False)
    assert np.isfinite(ScreenConfig().n)


def test_hooks_engine_on_a_model_without_sequence_axis():
    """pyvene's MLP (no KV engine, [n, d] states): the hooks engine runs, and after the last block,
    whose readout is linear, AtP's first-order estimate is the exact change."""
    from roadinterp.screen import screen

    r = screen(task="hierarchical-equality", n=64)
    assert r.meta["engine"] == "hooks" and r.meta["positions"] == ["-1 last"]
    last = r.grid[r.grid["layer"] == r.grid["layer"].max()].iloc[0]
    assert last["atp"] == pytest.approx(last["delta"], rel=1e-4)
    assert r.grid["iia"].between(0, 1).all()
