"""The KV engine at a task-named position that differs per row (RAVEL's city, IOI's names).

Each row intervenes at its own index: the sources' states are read at each source's own
index and the mixed state is written at the base's. The reference is pyvene's own hooks
(``engine="pyvene"``, full forwards with full per-example ``unit_locations``), row for row,
outputs and gradients, on left-padded batches; tiny random models, no network.
"""

from dataclasses import replace
from typing import ClassVar

import pytest
import torch
from conftest import tiny_model
from test_kvreplay import AnswerTask, _compare, _outputs_and_grads, token_batch

from roadinterp.dii.runners import make_runner
from roadinterp.errors import ConfigError
from roadinterp.interventions import get_family
from roadinterp.sites import Site
from roadinterp.tasks import get_task


class EntityTask(AnswerTask):
    """A token task with one position that differs per row ("ent", as PromptTask declares it)."""

    positions: ClassVar[dict] = {"last": -1, "ent": None}


def with_entities(data, *, seed: int, low: int = 0):
    """``data`` with per-row "ent" indices: a real (unpadded) token of each base and source, at least ``low``."""
    g = torch.Generator().manual_seed(seed)
    cols = []
    for inputs in (data.base, *data.sources):
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        seq = mask.shape[1]
        first = torch.clamp((mask == 0).sum(1), min=low)  # the first real token (left padding)
        cols.append(first + (torch.rand(len(first), generator=g) * (seq - first)).long().clamp(max=seq - 1 - first))
    return replace(data, positions={"ent": torch.stack(cols, 1)})


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("site", [Site(0, "block_output", "ent"), Site(1, "block_input", "ent"),
                                  Site(1, "block_output", "ent")], ids=lambda s: s.key())
def test_per_row_positions_equal_pyvene_row_for_row(arch, site):
    model = tiny_model(arch)
    data = with_entities(token_batch(24, 9, 2, padded="left", seed=3), seed=len(arch))
    assert len(set(data.positions["ent"][:, 0].tolist())) > 3  # the rows really differ
    _compare(model, site, EntityTask(), "butterfly", data)


@pytest.mark.parametrize("family", ["das", "neuron", "road", "boundless"])
def test_every_family_at_per_row_positions_equals_pyvene(family):
    model = tiny_model("llama")
    data = with_entities(token_batch(20, 8, 2, padded="left", seed=4), seed=1)
    _compare(model, Site(0, "block_output", "ent"), EntityTask(), family, data)


def test_the_kv_engine_runs_per_row_and_each_row_uses_its_own_index():
    """The test can fail: one index for every row (row 0's) gives other outputs than pyvene's per-row run."""
    model, task = tiny_model("llama"), EntityTask()
    data = with_entities(token_batch(16, 8, 1, padded="left", seed=5), seed=2)
    site = Site(0, "block_output", "ent")
    built = get_family("das").build(32, [8], seed=1)
    engine, got, _ = _outputs_and_grads(model, site, task, built, data, "auto")
    assert engine == "kv"
    same = data.positions["ent"][:1].expand_as(data.positions["ent"]).clone()
    _, wrong, _ = _outputs_and_grads(model, site, task, built, replace(data, positions={"ent": same}), "pyvene")
    _, ref, _ = _outputs_and_grads(model, site, task, built, data, "pyvene")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, wrong, atol=1e-3)


def test_the_tail_starts_at_the_earliest_index_of_every_dataset():
    model, task = tiny_model("gpt2"), EntityTask()
    train = with_entities(token_batch(12, 9, 1, padded=None, seed=6), seed=3, low=5)
    test = with_entities(token_batch(12, 9, 1, padded=None, seed=7), seed=4, low=3)
    built = get_family("butterfly").build(32, [4], seed=0)
    runner, handles = make_runner(model, Site(0, "block_output", "ent"), task, built.interventions, built.coords,
                                  shared=True, datasets=[train, test], engine="kv")
    lo = min(int(train.positions["ent"].min()), int(test.positions["ent"].min()))
    assert runner.table.p0 == lo and runner.table.T == 9 - lo
    early = with_entities(token_batch(4, 9, 1, padded=None, seed=8), seed=5)
    early.positions["ent"][0, 1] = 0
    with pytest.raises(ConfigError, match="one prepare_all call"):
        runner.prepare(early)


def test_bad_per_row_positions_are_one_clear_error():
    model, task = tiny_model("llama"), EntityTask()
    data = with_entities(token_batch(8, 8, 1, padded=None, seed=9), seed=6)
    built = get_family("butterfly").build(32, [4], seed=0)
    bad = replace(data, positions={"ent": data.positions["ent"][:, :1]})  # the source's column is missing
    with pytest.raises(ConfigError, match=r"\[rows, 1 \+ sources\]"):
        make_runner(model, Site(0, "block_output", "ent"), task, built.interventions, built.coords, shared=True,
                    datasets=[bad], engine="kv")
    with pytest.raises(ConfigError, match="differs per example"):  # no per-row positions at all
        make_runner(model, Site(0, "block_output", "ent"), task, built.interventions, built.coords, shared=True,
                    datasets=[replace(data, positions=None)], engine="kv")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("position", ["io", "s1", "s2"])
def test_ioi_name_positions_run_on_the_kv_engine_and_equal_pyvene(arch, position):
    """IOI's left-padded prompts (attention_mask + position_ids per row) on its own tokenizer."""
    from conftest import word_tokenizer
    from test_prompt_tasks import tiny_lm

    tok = word_tokenizer(get_task("ioi"))
    model, task = tiny_lm(arch, len(tok)), get_task("ioi").bind(tokenizer=tok)
    data = task.counterfactuals(24, split="train", seed=0)
    assert (data.base["attention_mask"] == 0).any() and "position_ids" in data.base
    assert len(set(data.positions[position][:, 0].tolist())) > 1
    built = get_family("butterfly").build(32, [4, 4], seed=1)
    e_kv, got, g_kv = _outputs_and_grads(model, Site(0, "block_output", position), task, built, data, "auto")
    e_ref, ref, g_ref = _outputs_and_grads(model, Site(0, "block_output", position), task, built, data, "pyvene")
    assert (e_kv, e_ref) == ("kv", "pyvene")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(g_kv, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
