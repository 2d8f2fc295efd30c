"""The DII and search benchmarks run in quick mode and return their keys (no timing claims)."""

import json

import pytest


@pytest.mark.slow
def test_bench_dii_quick_returns_its_keys():
    from roadinterp.bench.bench_dii import FAMILIES, run

    out = run(quick=True)
    json.dumps(out)  # what `roadinterp bench dii --json` prints
    assert out["benchmark"] == "dii" and out["quick"] is True
    for key in ("alone_s", "model_s", "skipped", "ratios", "config", "machine", "targets"):
        assert key in out
    assert set(out["alone_s"]) == {"16", "32"} and set(out["model_s"]) == {"16"}
    for fam in FAMILIES:
        assert out["alone_s"]["32"][fam] > 0
    assert {"das_vs_butterfly_32", "lowrank_vs_butterfly_32", "butterfly_vs_neuron_model_16"} <= set(out["ratios"])


@pytest.mark.slow
def test_bench_search_quick_returns_its_keys(tmp_path):
    from roadinterp.bench.bench_search import plot, run

    out = run(quick=True)
    plot(out, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 5000
    json.dumps(out)
    assert out["benchmark"] == "search"
    assert "batched_vs_sequential" in out["ratios"] and out["ratios"]["batched_vs_sequential"] > 0
    for t in out["tasks"].values():
        assert set(t["cells_per_min"]) == {"sequential", "batched", "sequential_pyvene", "batched_pyvene"}
        assert len(t["iia_sequential"]) == len(t["iia_batched"]) == out["config"]["seeds"]
        assert t["max_iia_diff"] <= 0.02 and t["max_iia_diff_engines"] <= 0.02
        # both zoo sites are block outputs: the MLP replays, the LM runs the KV engine
        assert t["engine"] == (["kv"] if t["model"].endswith("llama") else ["replay"])
        ks = t["ksweep"]
        assert set(ks["seconds"]) == {"one", "K=1", "K=2"} and min(ks["seconds"].values()) > 0
        assert set(ks["ratio"]) == {"K=1", "K=2"} and ks["fit"]["points"] == 2
    g = out["grid"]
    assert g["cells"] == [3, 6] and all(len(v) == 2 and min(v) > 0 for v in g["seconds"].values())


@pytest.mark.slow
def test_bench_lm_quick_returns_its_keys():
    from roadinterp.bench.bench_lm import run

    out = run(quick=True)
    json.dumps(out)  # what `roadinterp bench lm --json` prints
    assert out["benchmark"] == "lm" and out["quick"] is True and out["engine"] == "kv" and out["device"] == "cpu"
    assert out["cells"] == {"scan": 4, "naive": 1, "layers": 2, "model_layers": 2} and out["reduced"] is False
    assert out["ratios"]["scan_vs_naive"] > 0 and out["seconds"]["scan"] > 0 and out["peak_rss_gb"] > 0
    assert out["ratios"]["iia_gap"] <= 0.02  # fp32 on both arms in the quick setting: the same IIA
    assert set(out["step_ms"]) == {"butterfly", "das"}
    assert all(r["kv"] > 0 and r["pyvene"] > 0 for r in out["step_ms"].values())


def test_profile_step_quick_profiles_both_engines():
    from roadinterp.bench.profile_step import markdown, run

    out = run(quick=True)
    json.dumps(out)
    pv, kv = out["engines"]["pyvene"], out["engines"]["kv"]
    assert pv["engine"] == "pyvene" and kv["engine"] == "kv"  # each engine really ran (no silent fallback)
    for e in (pv, kv):
        assert e["wall_s"] > 0 and e["groups"]["matmul"]["calls"] > 0
        assert abs(sum(g["share"] for g in e["groups"].values()) - 1) < 1e-6
        assert e["top"] and all(r["op"].startswith("aten::") for r in e["top"])
    # the KV engine runs one position of the blocks after the site, pyvene every position of all of them
    assert kv["groups"]["matmul"]["calls"] < pv["groups"]["matmul"]["calls"]
    table = markdown(out)
    assert "pyvene (before)" in table and f"{kv['wall_s']:.3f} s" in table
