"""Held-out IIA over the full vocabulary (``iia_vocab``) beside IIA over the task's answers.

The reference is independent of every engine: a plain forward of the base with a hook that
writes the intervened state (the intervention applied to the base's and sources' states,
read by hooks from plain forwards) at the site, then the argmax over *all* logits of the
last position. The KV engine computes only the answer columns while training; these tests
hold its evaluation (and replay's, and pyvene's) to that full-vocabulary reference, row for
row. Old runs stored without the column still load, summarise and render.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_model

from roadinterp.dii._tables import answer_columns, first
from roadinterp.dii.fit import iia_scores
from roadinterp.dii.runners import make_runner
from roadinterp.dii.train import train_dii
from roadinterp.interventions import get_family
from roadinterp.sites import Site
from roadinterp.tasks import get_task

ENGINES = ["kv", "replay", "pyvene"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as a search runs: tiny forwards only lose to thread hand-offs on a shared CPU."""
    from roadinterp._scoped import torch_threads

    with torch_threads(1):
        yield


def _zoo_interval():
    from roadinterp.zoo import load_model

    return load_model("zoo:interval-llama").eval()


@torch.no_grad()
def brute_force_hits(model, site: Site, interventions, coords, data, columns):
    """Per row: (answer-set hit, full-vocabulary hit) of the intervened model, by plain forwards and hooks."""
    assert site.component == "block_output" and site.positions == "last"
    layer = model.model.layers[site.layer]

    def last_state(inputs):  # the block's output at the last position of a plain forward  # [n, d]
        got = []
        h = layer.register_forward_hook(lambda m, a, o: got.append(first(o)[:, -1].clone()))
        try:
            model(**inputs)
        finally:
            h.remove()
        return got[0]

    b = last_state(data.base)
    n = b.shape[0]
    for iv, c, src in zip(interventions, coords, data.sources):  # as pyvene's hooks: one variable after another
        b = iv(b, last_state(src), [list(c)] * n)

    def patch(module, args, output):
        h = first(output).clone()
        h[:, -1] = b
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = layer.register_forward_hook(patch)
    try:
        logits = model(**data.base).logits[:, -1]  # [n, vocab]
    finally:
        handle.remove()
    y = data.labels
    return logits[:, columns].argmax(-1) == y, logits.argmax(-1) == columns[y]


def _perturbed(family, width, n_vars, seed=0):
    built = get_family(family).build(width, [4] * n_vars, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for iv in {id(i): i for i in built.interventions}.values():
            for name, p in iv.named_parameters():
                if "theta" in name:  # RoAd angles start at 0: turn them, so the basis is not the neurons'
                    p.copy_(torch.randn(p.shape, generator=g))
    for iv in built.interventions:
        iv.eval()
    return built


def _tiny_ioi():
    from conftest import word_tokenizer
    from test_prompt_tasks import tiny_lm

    tok = word_tokenizer(get_task("ioi"))
    return tiny_lm("llama", len(tok)), get_task("ioi").bind(tokenizer=tok)


CASES = {  # name -> (model and task, family, engines)
    # a random tiny Llama (vocab 50) on the interval task: its top-1 token is rarely yes/no, so the
    # two IIAs differ and a runner that filled only the answer columns would be caught
    "random-llama-interval": (lambda: (tiny_model("llama"), get_task("interval")), "butterfly", ENGINES),
    # the zoo's trained interval Llama (vocab 24): top-1 is nearly always an answer token
    "zoo-interval-llama": (lambda: (_zoo_interval(), get_task("interval")), "das", ENGINES),
    # left-padded IOI prompts on a word tokenizer (per-row attention masks and position ids: replay
    # cannot take them, kv and pyvene can)
    "tiny-llama-ioi-padded": (_tiny_ioi, "butterfly", ["kv", "pyvene"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_engine_gives_the_brute_force_iia_vocab(case):
    make, family, engines = CASES[case]
    model, task = make()
    data = task.counterfactuals(96, split="test", seed=3)
    site = Site(0, "block_output", "last")
    width = model.config.hidden_size
    built = _perturbed(family, width, len(data.sources))
    columns = answer_columns(task)
    hit_a, hit_v = brute_force_hits(model, site, built.interventions, built.coords, data, columns)
    want = (int(hit_a.sum()) / len(data), int(hit_v.sum()) / len(data))
    assert want[1] <= want[0]
    if case == "random-llama-interval":
        assert want[1] < want[0] - 0.2, want  # the full vocabulary really is stricter here
    for engine in engines:
        runner, (h,) = make_runner(model, site, task, built.interventions, built.coords, shared=built.shared,
                                   datasets=[data], engine=engine)
        assert runner.engine == engine
        got = iia_scores(runner, built.interventions[0], task, [h], [data.labels], [len(data)], vocab=True,
                         batch_size=40)  # several chunks
        assert (got[0][0], got[1][0]) == pytest.approx(want, abs=1e-12), (engine, got, want)
        no_vocab = iia_scores(runner, built.interventions[0], task, [h], [data.labels], [len(data)])
        assert no_vocab == ([want[0]], None)


def test_the_kv_engine_computes_the_full_unembedding_only_when_asked():
    model, task = tiny_model("llama"), get_task("interval")
    data = task.counterfactuals(16, split="train", seed=0)
    built = get_family("butterfly").build(32, [4, 4], seed=0)
    runner, (h,) = make_runner(model, Site(1), task, built.interventions, built.coords, shared=True,
                               datasets=[data], engine="kv")
    rows = torch.arange(len(data))
    cheap = runner([(h, rows)]).logits[:, -1]  # [n, vocab]: the answer columns only
    full = runner([(h, rows)], vocab=True).logits[:, -1]
    ids = task.answer_ids
    others = torch.ones(full.shape[-1], dtype=torch.bool)
    others[ids] = False
    assert torch.equal(cheap[:, others], torch.zeros_like(cheap[:, others]))
    assert (full[:, others] != 0).all()
    torch.testing.assert_close(cheap[:, ids], full[:, ids], rtol=0, atol=1e-6)


@pytest.mark.parametrize("batched", [False, True])
def test_train_dii_reports_iia_vocab_on_every_engine(batched):
    """A trained cell on the zoo Llama: the same iia_vocab on kv, replay and pyvene, and it is the
    brute-force full-vocabulary IIA of the result's own interventions on the held-out set."""
    from roadinterp.dii.batched import train_dii_batched
    from roadinterp.dii.config import DIIConfig, make_data

    model, task = _zoo_interval(), get_task("interval")
    common = {"family": "butterfly", "size": 4, "n_train": 256, "n_test": 128, "epochs": 1, "batch_size": 64}
    site = Site(0)
    results = {}
    for engine in ENGINES:
        if batched:
            results[engine] = train_dii_batched(model, task, site, [{**common, "seed": s, "engine": engine}
                                                                    for s in range(2)])
        else:
            results[engine] = [train_dii(model, task, site, engine=engine, **common)]
    for engine, rs in results.items():
        for r in rs:
            assert r.engine == engine and r.iia_vocab is not None and 0 <= r.iia_vocab <= r.iia
            assert r.row()["iia_vocab"] == r.iia_vocab
    for k, r in enumerate(results["kv"]):
        for engine in ("replay", "pyvene"):  # training agrees to float error, so the scores agree closely
            assert abs(results[engine][k].iia_vocab - r.iia_vocab) <= 0.02
        _, test = make_data(task, DIIConfig(**common, seed=k))
        _, hit_v = brute_force_hits(model, site, r.interventions, r.coords, test, answer_columns(task))
        assert r.iia_vocab == pytest.approx(int(hit_v.sum()) / len(test), abs=1e-12)


def test_a_task_without_a_vocabulary_has_no_iia_vocab():
    from conftest import tiny_mlp

    r = train_dii(tiny_mlp(), get_task("hierarchical-equality"), Site(0), family="road", size=2, n_train=64,
                  n_test=64, epochs=1)
    assert r.iia_vocab is None and r.row()["iia_vocab"] is None and 0 <= r.iia <= 1


# ------------------------------------------------------------------ tables, CLI, report
def _run(path, rows, cfg=None):
    from roadinterp.store import RunStore

    cfg = cfg or {"task": "interval", "model": "zoo:interval-llama", "layers": [0, 1],
                  "components": ["block_output"], "positions": ["last"], "families": ["road"], "sizes": [2],
                  "seeds": 2}
    st = RunStore(path, cfg)
    for k, row in enumerate(rows):
        st.add(f"c{k}", row)
    st.close()
    return path


def _rows(with_vocab: bool):
    rng = np.random.default_rng(0)
    out = []
    for k in range(4):
        row = {"task": "interval", "model": "zoo:interval-llama", "family": "road", "layer": k // 2,
               "component": "block_output", "position": "last", "size": 2, "seed": k % 2,
               "iia": float(rng.uniform(0.6, 1.0)), "train_iia": 0.95, "iia_null": 0.5, "seconds": 1.0}
        if with_vocab:
            row["iia_vocab"] = row["iia"] - 0.25
        out.append(row)
    return out


def test_summaries_carry_iia_vocab_and_old_tables_without_it_still_summarise(tmp_path):
    from roadinterp.store import read_run
    from roadinterp.summary import summarize

    _, new = read_run(_run(tmp_path / "new", _rows(True)))
    s = summarize(new)
    want = new.groupby("layer")["iia_vocab"].mean().to_numpy()
    np.testing.assert_allclose(s.sort_values("layer")["iia_vocab_mean"].to_numpy(), want)
    assert (s["iia_vocab_max"] <= s["iia_max"]).all()
    csv = pd.read_csv(tmp_path / "new" / "results.csv")
    assert list(csv.columns[8:11]) == ["iia", "train_iia", "iia_vocab"]
    # an old results.csv / results store, written before the column existed
    old_csv = tmp_path / "old.csv"
    csv.drop(columns=["iia_vocab"]).to_csv(old_csv, index=False)
    s_old = summarize(pd.read_csv(old_csv))
    assert "iia_vocab_mean" not in s_old and list(s_old["iia_mean"]) == pytest.approx(list(s["iia_mean"]))
    _, old = read_run(_run(tmp_path / "old", _rows(False)))
    assert old["iia_vocab"].isna().all() and "iia_vocab_mean" not in summarize(old)


def test_the_cli_table_and_the_report_show_iia_vocab_when_stored(tmp_path):
    from rich.console import Console

    from roadinterp.viz.terminal import print_summary as _print_summary
    from roadinterp.store import read_run
    from roadinterp.summary import best_alignment, summarize
    from roadinterp.viz.report import write_report

    for name, with_vocab in (("new", True), ("old", False)):
        run = _run(tmp_path / name, _rows(with_vocab))
        _, table = read_run(run)
        console = Console(record=True, width=400)
        _print_summary(console, summarize(table), best_alignment(table), str(run), wide=True)
        text = console.export_text()
        header = next(line for line in text.splitlines() if "train IIA" in line)
        assert "vocab IIA" in header
        best = summarize(table).iloc[0]
        line = next(line for line in text.splitlines() if f"{best['iia_mean']:.3f} ±" in line)
        cells = [c.strip() for c in line.split("│")]
        heads = [c.strip() for c in header.split("┃")]
        shown = cells[heads.index("vocab IIA")]
        assert shown == (f"{best['iia_vocab_mean']:.3f}" if with_vocab else "-"), line
        html = write_report(run, run / "report.html").read_text()
        assert ("full-vocabulary IIA</th>" in html) == with_vocab
        if with_vocab:
            assert f"{best['iia_vocab_mean']:.3f}" in html


def test_align_through_the_cli_writes_iia_vocab(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1]), "COLUMNS": "300"}
    r = subprocess.run([sys.executable, "-m", "roadinterp.cli", "align", "--task", "interval", "--model",
                        "zoo:interval-llama", "--layers", "1", "--family", "butterfly", "--size", "4", "--seeds", "1",
                        "--n-train", "64", "--n-test", "64", "--epochs", "1", "--no-controls", "--workers", "1",
                        "--wide", "--out", "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "vocab IIA" in r.stdout  # a --wide column: the default table fits 120 columns
    csv = pd.read_csv(tmp_path / "run" / "results.csv")
    assert csv["iia_vocab"].notna().all() and (csv["iia_vocab"] <= csv["iia"]).all()
    assert "full-vocabulary IIA" in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.slow
def test_smollm2_ioi_iia_vocab_is_the_brute_force_one_on_kv_and_pyvene():
    """The real LM (vocab 49152) on IOI's padded prompts: the KV engine's full unembedding at
    evaluation and pyvene's full forward give the hooked-forward reference, row for row."""
    from roadinterp.search.frozen import get_bound_task, get_model

    model, task = get_model("zoo:smollm2-135m"), get_bound_task("ioi", "zoo:smollm2-135m")
    data = task.counterfactuals(48, split="test", seed=0, variables=("io_position",))
    site = Site(20, "block_output", "last")
    built = _perturbed("butterfly", model.config.hidden_size, 1)
    columns = answer_columns(task)
    hit_a, hit_v = brute_force_hits(model, site, built.interventions, built.coords, data, columns)
    want = (int(hit_a.sum()) / len(data), int(hit_v.sum()) / len(data))
    assert want[1] <= want[0]
    for engine in ("kv", "pyvene"):
        runner, (h,) = make_runner(model, site, task, built.interventions, built.coords, shared=built.shared,
                                   datasets=[data], engine=engine)
        got = iia_scores(runner, built.interventions[0], task, [h], [data.labels], [len(data)], vocab=True,
                         batch_size=16)
        assert (got[0][0], got[1][0]) == pytest.approx(want, abs=1e-12), (engine, got, want)
