"""The KV engine: same DII outputs and gradients as pyvene, running only the intervened positions.

References are independent: pyvene's own hooks (``engine="pyvene"``, full forwards of
base and sources) and plain model forwards. Tiny random gpt2/llama/qwen2, token-id
counterfactual batches with and without padding (per-row attention masks); no network.
"""

from typing import ClassVar

import pytest
import torch
from conftest import tiny_model

import roadinterp.dii.kvreplay as kv
from roadinterp.dii.runners import make_runner
from roadinterp.dii.train import train_dii
from roadinterp.errors import ConfigError
from roadinterp.interventions import get_family
from roadinterp.sites import Site
from roadinterp.tasks import get_task
from roadinterp.tasks.base import CounterfactualBatch

ARCHS = ["gpt2", "llama", "qwen2"]
SITES = [
    Site(0, "block_output", "last"),
    Site(1, "block_output", "last"),  # the last block: the tail is the norm and the answer rows only
    Site(0, "block_input", "last"),  # the tail runs every block
    Site(1, "block_input", (2, 5)),  # positions 2..5 run, 0..1 come from the cache
    Site(0, "block_output", "all"),  # nothing cached: the tail is the whole sequence
]
FAMILIES = ["butterfly", "road", "das", "lowrank", "neuron", "boundless"]


class AnswerTask:
    """The reading of a token task: the last position's logits of a few answer tokens."""

    positions: ClassVar[dict] = {}
    answer_ids: ClassVar[list[int]] = [3, 7, 11, 19]

    def logits(self, output):
        return output.logits[:, -1, self.answer_ids]


def token_batch(n: int, seq: int, n_vars: int, *, padded: str | None, seed: int = 0, vocab: int = 50):
    """Random token-id counterfactuals; ``padded`` = "left"/"right" gives rows 0..3 tokens of padding."""
    g = torch.Generator().manual_seed(seed)

    def inputs():
        ids = torch.randint(1, vocab, (n, seq), generator=g)
        out = {"input_ids": ids}
        if padded:
            pad = torch.randint(0, 4, (n,), generator=g)
            mask = torch.ones(n, seq, dtype=torch.long)
            for r, p in enumerate(pad.tolist()):
                if p:
                    mask[r, :p] = 0 if padded == "left" else 1
                    if padded == "right":
                        mask[r, seq - p:] = 0
            ids[mask == 0] = 0
            out["attention_mask"] = mask
        return out

    base = inputs()
    sources = []
    for _ in range(n_vars):
        s = inputs()
        keep = torch.rand(n, generator=g) < 0.3  # some rows keep the base (a no-op variable), as tasks build them
        sources.append({k: torch.where(keep[:, None], base[k], v) for k, v in s.items()})
    labels = torch.randint(0, 4, (n,), generator=g)
    return CounterfactualBatch(base=base, sources=sources, intervened=torch.ones(n, n_vars, dtype=torch.bool),
                               labels=labels, base_labels=labels.clone(), variables=tuple(f"v{i}" for i in range(n_vars)))


def _outputs_and_grads(model, site, task, built, data, engine):
    runner, (h,) = make_runner(model, site, task, built.interventions, built.coords, shared=built.shared,
                               datasets=[data], engine=engine)
    params = [p for iv in {id(i): i for i in built.interventions}.values() for p in iv.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    out = task.logits(runner([(h, torch.arange(len(data)))]))
    if params:
        torch.nn.functional.cross_entropy(out.float(), data.labels).backward()
    return runner.engine, out.detach(), [p.grad.clone() for p in params]


def _compare(model, site, task, family, data, engine="kv", atol=1e-5):
    built = get_family(family).build(32, [4] * len(data.sources), seed=1)
    e_ref, ref, g_ref = _outputs_and_grads(model, site, task, built, data, "pyvene")
    e_kv, got, g_kv = _outputs_and_grads(model, site, task, built, data, engine)
    assert (e_ref, e_kv) == ("pyvene", engine)
    assert torch.allclose(ref, got, atol=atol), (ref - got).abs().max()
    for a, b in zip(g_ref, g_kv):
        assert torch.allclose(a, b, atol=atol, rtol=1e-4), (a - b).abs().max()
    return float((ref - got).abs().max()), max([float((a - b).abs().max()) for a, b in zip(g_ref, g_kv)] or [0.0])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", SITES, ids=lambda s: s.label())
@pytest.mark.parametrize("padded", [None, "left"])
def test_kv_outputs_and_gradients_equal_pyvene(arch, site, padded):
    model = tiny_model(arch)
    data = token_batch(24, 8, 2, padded=padded, seed=len(arch))
    _compare(model, site, AnswerTask(), "butterfly", data)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_family_equals_pyvene_on_padded_prompts(family, arch):
    model = tiny_model(arch)
    data = token_batch(20, 7, 2, padded="left", seed=5)
    site = Site(1, "block_input", "last")
    _compare(model, site, AnswerTask(), family, data)


def test_multi_position_sites_on_padded_prompts_equal_pyvene_and_right_padding_is_refused():
    model = tiny_model("llama")
    data = token_batch(20, 8, 1, padded="left", seed=2)
    for site in (Site(0, "block_output", (3, 6)), Site(1, "block_input", "all")):
        _compare(model, site, AnswerTask(), "das", data)
    right = token_batch(8, 8, 1, padded="right", seed=2)
    built = get_family("neuron").build(32, [4], seed=0)
    with pytest.raises(ConfigError, match="right-padded"):
        make_runner(model, Site(0), AnswerTask(), built.interventions, built.coords, shared=True, datasets=[right],
                    engine="kv")


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_on_a_registered_token_task(arch):
    model, task = tiny_model(arch), get_task("interval")
    data = task.counterfactuals(32, split="train", seed=1)
    for site in (Site(0, "block_output", "last"), Site(1, "block_input", "x")):
        _compare(model, site, task, "butterfly", data)


def test_bf16_cache_stays_within_its_tolerance():
    model = tiny_model("llama")
    data = token_batch(24, 8, 2, padded="left", seed=1)
    out, _ = _compare(model, Site(0, "block_output", "last"), AnswerTask(), "butterfly", data, engine="kv-bf16",
                         atol=2e-2)
    assert out > 0  # the bf16 cache really is used (not bit-identical to fp32)


def test_the_tail_only_runs_the_intervened_positions():
    model, task = tiny_model("llama"), AnswerTask()
    kv.clear_tables()
    data = token_batch(16, 8, 2, padded="left", seed=0)
    built = get_family("butterfly").build(32, [4, 4], seed=0)
    runner, _ = make_runner(model, Site(0), task, built.interventions, built.coords, shared=True, datasets=[data])
    table = runner.table
    assert runner.engine == "kv" and (table.p0, table.T) == (7, 1)
    assert table.res.shape == (table.rows, 3, 1, 32)  # entering block 0, 1, and after block 1
    assert [k.shape for k, v in table.kv] == [(table.rows, 4, 7, 8)] * 2  # every layer's prefix keys


def test_one_table_serves_every_layer_and_seed():
    model, task = tiny_model("qwen2"), AnswerTask()
    kv.clear_tables()
    data = token_batch(16, 6, 2, padded=None, seed=0)
    built = get_family("butterfly").build(32, [4, 4], seed=0)
    r0, _ = make_runner(model, Site(0), task, built.interventions, built.coords, shared=True, datasets=[data])
    n = r0.table.n_forward_rows
    assert 16 <= n <= 48
    r1, _ = make_runner(model, Site(1, "block_input", "last"), task, built.interventions, built.coords, shared=True,
                        datasets=[data])
    assert r1.table is r0.table and r0.table.n_forward_rows == n  # no new forwards for another layer


def test_a_full_table_is_cleared_and_old_runners_refuse():
    model, task = tiny_model("gpt2"), AnswerTask()
    kv.clear_tables()
    built = get_family("neuron").build(32, [4, 4], seed=0)
    a = token_batch(8, 6, 2, padded=None, seed=0)
    b = token_batch(8, 6, 2, padded=None, seed=1)
    old = kv.DEFAULT_MAX_BYTES
    try:
        r_a, (h_a,) = make_runner(model, Site(0), task, built.interventions, built.coords, shared=True, datasets=[a])
        per_row = r_a.table.per_row_bytes()
        kv.DEFAULT_MAX_BYTES = per_row * (r_a.table.rows + 4)  # room for 4 more inputs only
        import roadinterp.dii.kvreplay as kvm

        runner = kvm.KVReplayRunner(model, Site(0), task, built.interventions, built.coords,
                                    max_bytes=kv.DEFAULT_MAX_BYTES)
        h_b = runner.prepare(b)
        assert runner.table is r_a.table and runner.table.rows <= 24
        assert runner([(h_b, torch.arange(8))]).logits.shape == (8, 1, 50)
        with pytest.raises(ConfigError, match="cleared"):
            r_a([(h_a, torch.arange(8))])
    finally:
        kv.DEFAULT_MAX_BYTES = old


def test_unsupported_sites_fall_back_with_the_reason():
    model, task = tiny_model("llama"), get_task("interval")
    data = task.counterfactuals(16, split="train", seed=0)
    built = get_family("butterfly").build(32, [4, 4], seed=0)
    runner, _ = make_runner(model, Site(0, "mlp_output", "last"), task, built.interventions, built.coords,
                            shared=True, datasets=[data])
    assert runner.engine == "pyvene" and "kv:" in runner.reason and "mlp_output" in runner.reason
    with pytest.raises(ConfigError, match="kv"):
        make_runner(model, Site(0, "mlp_output", "last"), task, built.interventions, built.coords, shared=True,
                    datasets=[data], engine="kv")


def test_a_fallback_names_its_reason_in_the_results_row():
    """results.csv's engine_reason says why a cell ran on pyvene; empty when the fast engine ran."""
    model, task = tiny_model("llama"), get_task("interval")
    common = {"family": "butterfly", "size": 4, "n_train": 64, "n_test": 32, "epochs": 1, "batch_size": 32}
    slow = train_dii(model, task, Site(0, "mlp_output", "last"), **common).row()
    fast = train_dii(model, task, Site(0), **common).row()
    assert slow["engine"] == "pyvene" and "kv:" in slow["engine_reason"] and "mlp_output" in slow["engine_reason"]
    assert fast["engine"] == "kv" and fast["engine_reason"] == ""


def test_train_dii_with_kv_matches_pyvene():
    model, task = tiny_model("llama"), get_task("interval")
    common = {"family": "butterfly", "size": 4, "n_train": 256, "n_test": 128, "epochs": 2, "batch_size": 64}
    a = train_dii(model, task, Site(0), engine="pyvene", **common)
    b = train_dii(model, task, Site(0), **common)
    assert (a.engine, b.engine) == ("pyvene", "kv")
    assert max(abs(x - y) for x, y in zip(a.losses, b.losses)) < 1e-4
    assert abs(a.iia - b.iia) <= 0.01
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_batched_seeds_run_on_the_kv_engine():
    from roadinterp.dii.batched import train_dii_batched

    model, task = tiny_model("gpt2"), get_task("interval")
    configs = [{"family": "butterfly", "size": 4, "n_train": 128, "n_test": 64, "epochs": 1, "batch_size": 32, "seed": s}
               for s in range(2)]
    batched = train_dii_batched(model, task, Site(1, "block_input", "last"), configs)
    one = [train_dii(model, task, Site(1, "block_input", "last"), engine="pyvene", **c) for c in configs]
    assert {r.engine for r in batched} == {"kv"}
    for a, b in zip(batched, one):
        assert abs(a.iia - b.iia) <= 0.02


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ioi_padded_prompts_with_position_ids_equal_pyvene(arch):
    """The IOI task's left-padded prompts (attention_mask + position_ids per row) on its own tokenizer."""
    from conftest import word_tokenizer
    from test_prompt_tasks import tiny_lm

    tok = word_tokenizer(get_task("ioi"))
    model, task = tiny_lm(arch, len(tok)), get_task("ioi").bind(tokenizer=tok)
    data = task.counterfactuals(24, split="train", seed=0)
    assert (data.base["attention_mask"] == 0).any() and "position_ids" in data.base
    for site in (Site(0, "block_output", "last"), Site(1, "block_input", "last")):
        _compare(model, site, task, "butterfly", data)
    _compare(model, Site(0, "block_output", "io"), task, "butterfly", data)  # per-row: tests/test_kv_per_row.py


def test_a_bf16_model_runs_on_the_kv_engine_within_bf16_rounding():
    """``search --dtype bfloat16``: the frozen model itself in bf16; ``auto`` still picks the KV engine."""
    model = tiny_model("llama").to(torch.bfloat16)
    data = token_batch(16, 8, 2, padded="left", seed=3)
    built = get_family("butterfly").build(32, [4, 4], seed=1)
    runner, (h,) = make_runner(model, Site(0), AnswerTask(), built.interventions, built.coords, shared=True,
                               datasets=[data])
    ref_runner, (h_ref,) = make_runner(model, Site(0), AnswerTask(), built.interventions, built.coords, shared=True,
                                       datasets=[data], engine="pyvene")
    assert runner.engine == "kv", runner.reason
    got = AnswerTask().logits(runner([(h, torch.arange(16))])).float()
    ref = AnswerTask().logits(ref_runner([(h_ref, torch.arange(16))])).float()
    assert (got - ref).abs().max() <= 2e-2 * max(ref.abs().max(), 1.0)
