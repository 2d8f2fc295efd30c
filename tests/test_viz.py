"""Figures plot the right data: each plotly figure and its matplotlib twin are checked
against numbers computed here from the adapter / table, not just for "it runs"."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from roadinterp import io
from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.errors import ConfigError
from roadinterp.road.module import RoadRotation
from roadinterp.road.rotation import param_block
from roadinterp.viz import figures as F
from roadinterp.viz import static as S

SITES = {"0:block_output:last": 16, "2:block_output:last": 16}


def make_adapter(variant="road_1", blocks=None, targets=SITES, seed=0):
    torch.manual_seed(seed)
    a = RoadAdapter(targets, variant=variant, group_size=8, blocks=blocks)
    with torch.no_grad():
        for r in a.rotations.values():  # ModuleDict of RoadRotation
            torch.nn.init.uniform_(r.theta, -math.pi, math.pi)
            torch.nn.init.uniform_(r.alpha, 0.5, 1.5)
    return a


def results_table(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for fam in ("road", "das"):
        for layer in (0, 1, 2):
            for pos in ("last", 0):
                for size in (2, 4):
                    for s in range(3):
                        rows.append({"family": fam, "layer": layer, "component": "block_output", "position": pos, "size": size,
                                         "seed": s, "iia": rng.random(), "iia_random_model": 0.3 * rng.random(),
                                         "iia_rival": 0.5 * rng.random()})
    return pd.DataFrame(rows)


def composition_results():
    rng = np.random.default_rng(1)
    return pd.DataFrame([{"condition": c, "target": t, "accuracy": rng.random(), "seed": s}
                         for c in ("A+B", "base", "A", "B") for t in ("task-a", "task-b") for s in range(3)])


# ------------------------------------------------------------------ angle data
@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_angle_table_holds_theta_alpha_and_blocks(variant):
    a = make_adapter(variant)
    df = F.angle_table(a)
    for key, r in a.items():
        d = df[df["target"] == key]
        np.testing.assert_allclose(d["theta"], r.theta.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(d["alpha"], r.alpha.detach().numpy(), rtol=1e-6)
        np.testing.assert_array_equal(d["block"], param_block(r.dim, variant, r.group_size).numpy())
        assert set(d["layer"]) == {int(key.split(":")[0])}
        assert set(d["variant"]) == {variant}


def test_angle_table_keeps_only_the_subspace():
    a = make_adapter("road_2", blocks=[1, 5])
    df = F.angle_table(a)
    assert set(df["block"]) == {1, 5}
    r = a.rotation("0:block_output:last")
    keep = np.isin(param_block(r.dim, "road_2", r.group_size).numpy(), [1, 5])
    np.testing.assert_allclose(df[df["target"] == "0:block_output:last"]["theta"], r.theta.detach().numpy()[keep],
                               rtol=1e-6)


def test_layer_of_site_and_linear_keys():
    assert F.layer_of("3:block_output:last") == 3
    assert F.layer_of("model.layers.12.self_attn.q_proj") == 12
    assert F.layer_of("transformer.h.4.attn.c_attn") == 4
    assert F.layer_of("lm_head") is None


def test_angle_table_of_interchange_rotation_array_and_dict():
    from roadinterp.interventions.road import RoadInterchange

    ic = RoadInterchange(16, family="butterfly", seed=0)
    df = F.angle_table(ic)
    assert df["target"].nunique() == len(ic.strides)
    np.testing.assert_allclose(df["theta"].to_numpy().reshape(len(ic.strides), -1), ic.theta.detach().numpy(),
                               rtol=1e-6)
    rot = RoadRotation(8, "road_1", 4)
    torch.nn.init.uniform_(rot.theta, -1, 1)
    np.testing.assert_allclose(F.angle_table(rot)["theta"], rot.theta.detach().numpy(), rtol=1e-6)
    arr = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(F.angle_table(arr)["theta"], arr.reshape(-1))
    both = F.angle_table({"A": make_adapter(), "B": make_adapter(seed=1)})
    assert {t.split("/")[0] for t in both["target"]} == {"A", "B"}


# ------------------------------------------------------------------ angles
def test_angles_histogram_plotly_x_is_theta():
    a = make_adapter()
    fig = F.angles(a)
    assert [t.type for t in fig.data] == ["histogram"] * len(SITES)
    for trace, (key, r) in zip(fig.data, a.items()):
        assert trace.name == key
        np.testing.assert_allclose(np.asarray(trace.x), r.theta.detach().numpy(), rtol=1e-6)


def test_angles_polar_plotly_points_are_theta_alpha():
    a = make_adapter("road_2")
    fig = F.angles(a, "polar")
    for trace, (_, r) in zip(fig.data, a.items()):
        assert trace.type == "scatterpolar" and trace.thetaunit == "radians"
        np.testing.assert_allclose(np.asarray(trace.theta), r.theta.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(trace.r), r.alpha.detach().numpy(), rtol=1e-6)
    with pytest.raises(ConfigError, match="histogram"):
        F.angles(a, "pie")


def test_angles_static_histogram_counts_and_polar_offsets():
    a = make_adapter()
    fig = S.angles(a, bins=10)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(SITES)
    for ax, (key, r) in zip(axes, a.items()):
        theta = r.theta.detach().numpy()
        heights = np.array([p.get_height() for p in ax.patches])
        expected, _ = np.histogram(theta, bins=10)
        np.testing.assert_array_equal(heights, expected)
        assert ax.get_title() == key
    fig = S.angles(a, "polar")
    for ax, (_, r) in zip([ax for ax in fig.axes if ax.get_visible()], a.items()):
        off = ax.collections[0].get_offsets()
        np.testing.assert_allclose(off[:, 0], r.theta.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(off[:, 1], r.alpha.detach().numpy(), rtol=1e-6)


def test_alphas_plotly_and_static():
    a = make_adapter("road_4")
    fig = F.alphas(a)
    for trace, (_, r) in zip(fig.data, a.items()):
        np.testing.assert_allclose(np.asarray(trace.x), r.alpha.detach().numpy(), rtol=1e-6)
    sfig = S.alphas(a, bins=7)
    for ax, (_, r) in zip([ax for ax in sfig.axes if ax.get_visible()], a.items()):
        expected, _ = np.histogram(r.alpha.detach().numpy(), bins=7)
        np.testing.assert_array_equal([p.get_height() for p in ax.patches], expected)


# ------------------------------------------------------------------ angle heatmap
def test_angle_heatmap_road1_z_is_theta_per_block():
    a = make_adapter("road_1")
    fig = F.angle_heatmap(a)
    z = np.asarray(fig.data[0].z, dtype=float)
    expected = np.stack([r.theta.detach().numpy() for _, r in a.items()], axis=1)  # [blocks, targets]
    np.testing.assert_allclose(z, expected, rtol=1e-6)
    assert list(fig.data[0].x) == list(SITES)
    img = S.angle_heatmap(a).axes[0].images[0].get_array()
    np.testing.assert_allclose(np.ma.getdata(img), expected, rtol=1e-6)


def test_angle_heatmap_blank_outside_subspace_and_block_mean():
    a = make_adapter("road_2", blocks=[0, 3])
    z = np.asarray(F.angle_heatmap(a).data[0].z, dtype=float)
    assert z.shape == (8, 2)  # every block of width 16 is a row
    assert np.isnan(z[[1, 2, 4, 5, 6, 7]]).all() and np.isfinite(z[[0, 3]]).all()
    r = a.rotation("0:block_output:last")
    owner = param_block(16, "road_2", 8).numpy()
    assert z[3, 0] == pytest.approx(r.theta.detach().numpy()[owner == 3].mean(), rel=1e-6)
    img = S.angle_heatmap(a).axes[0].images[0].get_array()
    assert img.mask[1, 0] and not img.mask[3, 0]
    assert img[3, 0] == pytest.approx(z[3, 0], rel=1e-6)


# ------------------------------------------------------------------ ownership
def test_ownership_marks_exactly_the_owned_blocks():
    owners = {"A": [0, 1, 4], "B": [2, 7]}
    fig = F.ownership(owners, 10)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (2, 10) and list(fig.data[0].y) == ["A", "B"]
    assert set(np.flatnonzero(z[0])) == {0, 1, 4} and set(np.flatnonzero(z[1])) == {2, 7}
    img = np.ma.getdata(S.ownership(owners, 10).axes[0].images[0].get_array())
    np.testing.assert_array_equal(img, z)
    assert "8 free" not in fig.layout.title.text and "5 free" in fig.layout.title.text
    with pytest.raises(ConfigError, match="block 12"):
        F.ownership({"A": [12]}, 10)


def test_ownership_of_a_composed_adapter_reads_meta_owners():
    a = RoadAdapter({"0:block_output:last": 16}, group_size=8, blocks=[0, 1, 6],
                    meta={"owners": {"A": [0, 1], "B": [6]}})
    z = np.asarray(F.ownership(a).data[0].z)
    assert z.shape == (2, 8) and set(np.flatnonzero(z[1])) == {6}
    np.testing.assert_array_equal(np.ma.getdata(S.ownership(a).axes[0].images[0].get_array()), z)
    with pytest.raises(ConfigError, match="owners"):
        F.ownership(make_adapter())


# ------------------------------------------------------------------ IIA heatmaps
@pytest.mark.parametrize(("x", "y"), [("layer", "position"), ("size", "family")])
def test_iia_heatmap_z_is_groupby_mean_with_controls(x, y):
    t = results_table()
    fig = F.iia_heatmap(t, x=x, y=y)
    assert len(fig.data) == 3  # IIA + two controls
    lab = t.assign(_x=t[x].map(str), _y=t[y].map(str))
    for trace, col in zip(fig.data, ["iia", "iia_random_model", "iia_rival"]):
        expected = lab.groupby(["_y", "_x"])[col].mean()
        z = np.asarray(trace.z, dtype=float)
        for i, yy in enumerate(trace.y):
            for j, xx in enumerate(trace.x):
                assert z[i, j] == pytest.approx(expected[(yy, xx)])
    assert [a.text for a in fig.layout.annotations][1:] == ["control: random-init model", "control: rival hypothesis"]
    assert fig.data[0].text[0][0] == f"{fig.data[0].z[0][0]:.2f}"  # values printed in the cells
    sfig = S.iia_heatmap(t, x=x, y=y)
    imgs = [ax.images[0].get_array() for ax in sfig.axes if ax.images]
    assert len(imgs) == 3
    for img, trace in zip(imgs, fig.data):
        np.testing.assert_allclose(np.ma.getdata(img), np.asarray(trace.z, dtype=float))


def test_iia_heatmap_best_uses_that_cells_controls():
    t = results_table()
    fig = F.iia_heatmap(t, "size", "family", reduce="best")
    cells = t.groupby(["family", "layer", "position", "size"])[["iia", "iia_random_model"]].mean().reset_index()
    d = cells[(cells["family"] == "road") & (cells["size"] == 2)]
    best = d.loc[d["iia"].idxmax()]
    i, j = list(fig.data[0].y).index("road"), list(fig.data[0].x).index("2")
    assert fig.data[0].z[i][j] == pytest.approx(best["iia"])
    assert fig.data[1].z[i][j] == pytest.approx(best["iia_random_model"])


def test_iia_heatmap_without_controls_and_with_filter():
    t = results_table().drop(columns=["iia_random_model", "iia_rival"])
    fig = F.iia_heatmap(t, where={"family": "das"})
    assert len(fig.data) == 1
    das = t[(t["family"] == "das") & (t["position"] == 0) & (t["layer"] == 1)]
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z[list(fig.data[0].y).index("0"), list(fig.data[0].x).index("1")] == pytest.approx(das["iia"].mean())
    assert "family=das" in fig.layout.title.text
    with pytest.raises(ConfigError, match="column 'nope'"):
        F.iia_heatmap(t, x="nope")


# ------------------------------------------------------------------ composition
def test_composition_bars_are_mean_accuracy():
    res = composition_results()
    fig = F.composition(res)
    assert [t.name for t in fig.data] == ["base", "A", "B", "A+B"]
    means = res.groupby(["condition", "target"])["accuracy"].mean()
    stds = res.groupby(["condition", "target"])["accuracy"].std()
    for trace in fig.data:
        for tgt, y, e in zip(trace.x, trace.y, trace.error_y.array):
            assert y == pytest.approx(means[(trace.name, tgt)])
            assert e == pytest.approx(stds[(trace.name, tgt)])
    ax = S.composition(res).axes[0]
    from matplotlib.container import BarContainer

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 4
    for cont, cond in zip(bars, ["base", "A", "B", "A+B"]):
        heights = [p.get_height() for p in cont.patches]
        np.testing.assert_allclose(heights, [means[(cond, t)] for t in ("task-a", "task-b")])


# ------------------------------------------------------------------ lambda sweep
def test_lambda_sweep_grid_and_line():
    grid = pd.DataFrame([{"lambda_a": a, "lambda_b": b, "accuracy_a": a / 2, "accuracy_b": b / 2, "accuracy_combined": a * b / 4,
                              "seed": s} for a in (0.0, 1.0, 2.0) for b in (0.0, 1.0) for s in range(2)])
    fig = F.lambda_sweep(grid)
    assert [t.name for t in fig.data] == ["accuracy_a", "accuracy_b", "accuracy_combined"]
    z = np.asarray(fig.data[2].z)  # rows lambda_b, columns lambda_a
    np.testing.assert_allclose(z, np.outer([0.0, 1.0], [0.0, 1.0, 2.0]) / 4)
    imgs = [np.ma.getdata(ax.images[0].get_array()) for ax in S.lambda_sweep(grid).axes if ax.images]
    np.testing.assert_allclose(imgs[0], np.tile([0.0, 0.5, 1.0], (2, 1)))
    line = pd.DataFrame({"lambda": [0.0, 0.5, 1.0, 1.0], "accuracy_a": [0.1, 0.5, 0.8, 1.0],
                         "accuracy_combined": [0.0, 0.2, 0.4, 0.6]})
    fig = F.lambda_sweep(line)
    np.testing.assert_allclose(fig.data[0].y, [0.1, 0.5, 0.9])
    ax = S.lambda_sweep(line).axes[0]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.0, 0.2, 0.5])
    with pytest.raises(ConfigError, match="lambda"):
        F.lambda_sweep(pd.DataFrame({"x": [1]}))


# ------------------------------------------------------------------ examples
def test_examples_table_plotly_and_static():
    rows = [{"condition": "A", "input": "3 < 5 & 2", "output": "yes"}, {"condition": "A+B", "input": "7", "output": None}]
    fig = F.examples(rows)
    assert list(fig.data[0].header.values) == ["condition", "input", "output"]
    cells = fig.data[0].cells.values
    assert list(cells[1]) == ["3 &lt; 5 &amp; 2", "7"]  # escaped: plotly renders entities as text
    assert list(cells[2]) == ["yes", ""]
    tab = S.examples(pd.DataFrame(rows)).axes[0].tables[0].get_celld()
    assert tab[(1, 1)].get_text().get_text() == "3 < 5 & 2"
    assert tab[(0, 2)].get_text().get_text() == "output"


# ------------------------------------------------------------------ saving, CLI hook
def test_save_static_png_pdf_and_bad_suffix(tmp_path):
    fig = S.angles(make_adapter())
    png = S.save_static(fig, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert S.save_static(fig, tmp_path / "a.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ConfigError, match=r"\.png"):
        S.save_static(fig, tmp_path / "a.jpg")
    with pytest.raises(ConfigError, match="matplotlib"):
        S.save_static(F.angles(make_adapter()), tmp_path / "b.png")


def test_plot_angles_adapter_dir_and_run_dir(tmp_path):
    from roadinterp.viz import plot_angles

    a = make_adapter()
    io.save(a, tmp_path / "adapter")
    html = plot_angles(tmp_path / "adapter", tmp_path / "angles.html").read_text()
    assert "Plotly.newPlot" in html and "cdn.plot.ly/plotly" not in html.split("</script>")[-1]
    assert '<script src="http' not in html
    png = plot_angles(tmp_path / "adapter", tmp_path / "angles.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match=r"\.html"):
        plot_angles(tmp_path / "adapter", tmp_path / "angles.txt")

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match="no saved adapters"):
        plot_angles(run, tmp_path / "x.png")
    io.save(a, run / "adapters" / "cell0")
    assert plot_angles(run, tmp_path / "run.pdf").read_bytes()[:4] == b"%PDF"
    from roadinterp.errors import FileFormatError

    with pytest.raises(FileFormatError, match="neither"):
        plot_angles(tmp_path / "nothing", tmp_path / "x.png")


# ------------------------------------------------------------------ reports (no browser)
def _fake_run(path, n_cells, model="zoo:<b>m</b>"):
    from roadinterp.store import RunStore

    cfg = {"task": "hierarchical-equality", "model": model, "layers": [0, 1], "components": ["block_output"],
               "positions": ["last"], "families": ["road"], "sizes": [2], "seeds": 2}
    st = RunStore(path, cfg)
    rng = np.random.default_rng(0)
    for k in range(n_cells):
        st.add(f"c{k}", {"task": "hierarchical-equality", "model": "m", "family": "road", "layer": k // 2,
                             "component": "block_output", "position": "last", "size": 2, "seed": k % 2, "iia": float(rng.random()),
                             "train_iia": 0.9, "iia_random_model": 0.1, "iia_rival": 0.2, "rival": "r", "seconds": 1.0})
    st.close()
    return path


def test_report_empty_run_says_so_and_escapes(tmp_path):
    from roadinterp.viz.report import write_report

    run = _fake_run(tmp_path / "run", 0)
    out = write_report(run, run / "report.html")
    text = out.read_text()
    assert "no finished cells yet" in text.lower()
    assert "zoo:<b>m</b>" not in text and "zoo:&lt;b&gt;m&lt;/b&gt;" in text
    assert "Plotly" not in text  # no figures, so no plotly.js


def test_report_partial_run_has_best_sentence_and_one_plotlyjs(tmp_path):
    from plotly.offline import get_plotlyjs

    from roadinterp.viz.report import write_report

    run = _fake_run(tmp_path / "run", 3)
    text = write_report(run, run / "report.html").read_text()
    assert "3 finished cells of 4" in text and "Partial run" in text
    assert "Best alignment: road at layer" in text and "random-init model 0.100" in text
    assert text.count(get_plotlyjs()[:200]) == 1
    # layer x position map (one family), size x family, layer sweep, MIB's layer x position map (one group)
    assert text.count("Plotly.newPlot") == 4


def test_report_of_a_30_layer_scan_collapses_long_tables(tmp_path):
    from roadinterp.viz.report import SHOWN_ROWS, write_report

    run = _fake_run(tmp_path / "run", 60)  # 30 layers x 2 seeds
    text = write_report(run, run / "report.html").read_text()
    assert "<details><summary>all 30 cells</summary>" in text and "<details><summary>all 60 rows</summary>" in text
    head = text.split("<h2>Summary over seeds</h2>", 1)[1].split("<details>", 1)[0]
    assert head.count("<tr") == 1 + SHOWN_ROWS


def test_control_warnings_compare_gains_over_each_hypothesis_no_op():
    from roadinterp.viz.report import _control_warnings

    best = {"iia_mean": 0.846, "iia_null_mean": 0.626, "iia_rival_mean": 0.818, "iia_rival_null_mean": 0.751,
            "iia_random_model_mean": 0.50}
    assert _control_warnings(best) == []  # rival gains +0.07, the claim +0.22
    rival_wins = dict(best, iia_rival_null_mean=0.55)  # rival gains +0.27
    assert any("rival hypothesis gains almost as much" in w for w in _control_warnings(rival_wins))
    dead = dict(best, iia_mean=0.66)
    assert any("barely above the no-op baseline" in w for w in _control_warnings(dead))
    no_null = {"iia_mean": 0.846, "iia_rival_mean": 0.818}  # old runs: raw comparison
    assert any("aligns almost as well" in w for w in _control_warnings(no_null))
    rnd = dict(best, iia_random_model_mean=0.80)
    assert any("randomly initialised" in w for w in _control_warnings(rnd))


# ------------------------------------------------------------------ learned angles (a real run)
@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    from learned_run import small_learned_run

    return small_learned_run(tmp_path_factory.mktemp("learned") / "run")


def _run_table(run):
    from roadinterp.store import read_run

    return read_run(run)[1]


def test_seed_angles_plot_the_thetas_saved_for_each_seed_and_control(learned_run):
    from roadinterp.viz import learned as L

    rows = L.cell_rows(_run_table(learned_run), "butterfly|0|block_output|last|2")
    fig = L.seed_angles(learned_run, rows)
    assert [a.text for a in fig.layout.annotations] == ["trained model", "control: random-init model"]
    assert len(fig.data) == 2 * 3  # 3 seeds x (trained, control)
    for trace in fig.data:
        seed = int(trace.name.split()[1])
        control = "-random_model" if trace.xaxis == "x2" else ""
        saved = io.load(learned_run / "cells" / f"butterfly-L0-block_output-last-s2-seed{seed}{control}")
        np.testing.assert_allclose(np.asarray(trace.x), saved.theta.detach().numpy().reshape(-1), rtol=1e-6)
        assert list(dict.fromkeys(trace.y)) == [f"butterfly layer {i} (stride {s})" for i, s in enumerate(saved.strides)]
    sfig = S.seed_angles(learned_run, rows)
    for ax, control in zip(sfig.axes[:2], ("", "-random_model")):
        data = ax.collections[::2]  # each seed: its angles, then its medians
        assert len(data) == 3
        for seed, coll in enumerate(data):
            saved = io.load(learned_run / "cells" / f"butterfly-L0-block_output-last-s2-seed{seed}{control}")
            np.testing.assert_allclose(coll.get_offsets()[:, 0], saved.theta.detach().numpy().reshape(-1), rtol=1e-6)
    with pytest.raises(ConfigError, match="only road and butterfly"):
        L.seed_angles(learned_run, L.cell_rows(_run_table(learned_run), "das|0|block_output|last|2"))


@pytest.mark.parametrize("family", ["das", "butterfly"])
def test_seed_subspaces_match_scipy_principal_angles_of_the_saved_subspaces(learned_run, family):
    from scipy.linalg import subspace_angles

    from roadinterp.viz import learned as L

    table = _run_table(learned_run)
    rows = L.cell_rows(table, f"{family}|0|block_output|last|2")
    fig = L.seed_subspaces(learned_run, rows)
    for trace, control in zip(fig.data[:2], ("", "-random_model")):
        bases = [io.load(learned_run / "subspaces" / f"{family}-L0-block_output-last-s2-seed{s}{control}")
                 for s in range(3)]
        want = np.eye(3)
        for i in range(3):
            for j in range(3):
                if i != j:
                    want[i, j] = np.mean([np.cos(subspace_angles(a.T, b.T)).mean()
                                          for a, b in zip(bases[i].rows.split(bases[i].sizes),
                                                          bases[j].rows.split(bases[j].sizes))])
        np.testing.assert_allclose(np.asarray(trace.z, dtype=float), want, atol=1e-6)
        if not control:  # the cell's seed agreement (results.csv, summarize) is the mean off the diagonal
            assert rows["seed_agreement"].iloc[0] == pytest.approx(want[np.triu_indices(3, 1)].mean(), abs=1e-6)
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines+markers"]
    assert len(lines) == 2 * 3 * 2  # (trained, control) x 3 seed pairs x 2 variables
    smat = [ax.images[0].get_array() for ax in S.seed_subspaces(learned_run, rows).axes if ax.images]
    np.testing.assert_allclose(np.ma.getdata(smat[0]), np.asarray(fig.data[0].z, dtype=float), atol=1e-9)


def test_layer_sweep_lines_are_the_best_cell_per_layer_and_bands_the_control_range():
    from roadinterp.viz import learned as L

    t = results_table()
    fig = L.layer_sweep(t)
    cells = t.groupby(["family", "layer", "position", "size"])[["iia", "iia_random_model"]].mean().reset_index()
    for trace in [d for d in fig.data if d.name in ("road", "das")]:
        want = cells[cells["family"] == trace.name].groupby("layer")["iia"].max()
        np.testing.assert_allclose(np.asarray(trace.y), want.to_numpy())
    band = next(d for d in fig.data if d.name.startswith("control: random-init"))
    rng = cells.groupby("layer")["iia_random_model"]
    np.testing.assert_allclose(np.asarray(band.y), np.r_[rng.max().to_numpy(), rng.min().to_numpy()[::-1]])
    ax = S.layer_sweep(t).axes[0]
    road = next(c for c in ax.containers if c.get_label() == "road")
    np.testing.assert_allclose(road.lines[0].get_ydata(),
                               cells[cells["family"] == "road"].groupby("layer")["iia"].max().to_numpy())


def test_heatmap_has_train_panel_agreement_on_hover_and_stays_readable_at_30_layers():
    t = results_table().assign(train_iia=0.9, seed_agreement=0.42)
    fig = F.iia_heatmap(t, "position", "layer", reduce="best")
    assert [a.text for a in fig.layout.annotations][:2] == ["held-out IIA (best cell)", "train IIA"]
    np.testing.assert_allclose(np.asarray(fig.data[1].z, dtype=float), 0.9)  # the train panel is train_iia
    assert "seed agreement 0.42" in fig.data[0].customdata[0][0][3]
    assert "%{customdata[3]}" in fig.data[0].hovertemplate
    deep = pd.concat([t.assign(layer=t["layer"] + 3 * k) for k in range(10)])  # 30 layers
    fig = F.iia_heatmap(deep, "position", "layer", reduce="best")
    assert len(fig.data[0].y) == 30 and fig.data[0].texttemplate is None and fig.layout.height <= 800
    sfig = S.iia_heatmap(deep, "position", "layer", reduce="best")
    assert not sfig.axes[0].texts and sfig.get_size_inches()[1] < 9


def test_subspace_warning_fires_when_seeds_agree_on_iia_but_not_on_the_subspace():
    from roadinterp.viz.learned import subspace_warnings

    row = {"family": "das", "layer": 0, "component": "block_output", "position": "last", "size": 8, "n_seeds": 5,
           "iia_mean": 0.95, "iia_std": 0.01, "iia_null_mean": 0.5, "seed_agreement": 0.66,
           "seed_agreement_chance": 0.63}
    assert "agree on IIA" in subspace_warnings(pd.DataFrame([row]))[0]
    assert subspace_warnings(pd.DataFrame([dict(row, seed_agreement=0.95)])) == []  # same subspace
    assert subspace_warnings(pd.DataFrame([dict(row, iia_std=0.12)])) == []  # seeds differ on IIA too
    assert subspace_warnings(pd.DataFrame([dict(row, iia_mean=0.55)])) == []  # nothing learned


@pytest.mark.slow
def test_rowspace_split_plots_the_stored_shares_and_iia_and_is_absent_without_a_reader(learned_run):
    from roadinterp.viz import learned as L
    from roadinterp.viz import static as S
    from roadinterp.viz.report import learned_figures

    table = _run_table(learned_run)
    rows = L.cell_rows(table, "das|0|block_output|last|2")
    stored = rows.sort_values("seed")
    assert stored["dormant_fraction"].notna().all()  # the MLP's next layer is a registered reader
    fig = L.rowspace_split(rows)
    y = {tr.name: np.asarray(tr.y, dtype=float) for tr in fig.data}
    np.testing.assert_allclose(y["null space (dormant)"], stored["dormant_fraction"])
    np.testing.assert_allclose(y["row space (read downstream)"] + y["null space (dormant)"], 1.0)
    dormant = next(tr for tr in fig.data if tr.name == "null space (dormant)")
    np.testing.assert_allclose(np.asarray(dormant.base, dtype=float), 1 - stored["dormant_fraction"])  # stacked
    np.testing.assert_allclose(y["IIA, whole subspace"], stored["iia_joint"])
    np.testing.assert_allclose(y["IIA, row-space part only"], stored["iia_rowspace"])
    np.testing.assert_allclose(y["no-op baseline"], stored["iia_joint_null"].mean())
    # the static twin draws the same bars: 3 row-space + 3 dormant on the left, 3 + 3 IIA on the right
    share, iia = S.rowspace_split(rows).axes
    heights = [p.get_height() for p in share.patches]
    np.testing.assert_allclose(heights, [*(1 - stored["dormant_fraction"]), *stored["dormant_fraction"]], atol=1e-12)
    np.testing.assert_allclose([p.get_height() for p in iia.patches], [*stored["iia_joint"], *stored["iia_rowspace"]])
    # a site with no reader stores NaN: no table, no figure in the report's section
    blind = table.assign(dormant_fraction=float("nan"), iia_rowspace=float("nan"))
    assert L.rowspace_table(L.cell_rows(blind, "das|0|block_output|last|2")).empty
    assert not [n for _, _, n, _ in learned_figures(learned_run, blind) if n.startswith("rowspace-")]
    assert len([n for _, _, n, _ in learned_figures(learned_run, table) if n.startswith("rowspace-")]) == 2


def test_report_learned_section_cell_option_and_figures(learned_run, tmp_path):
    import subprocess
    import sys

    from roadinterp.viz.report import write_report

    text = write_report(learned_run, tmp_path / "r.html").read_text()
    assert "<h2>Learned angles</h2>" in text
    # best butterfly cell: angles + subspaces; best das cell: subspaces; + 2 heat maps per family... see run_figures
    assert text.count('title="angles-butterfly') == 1 and text.count('title="subspaces-') == 2
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cli = [sys.executable, "-m", "roadinterp.cli", "report", str(learned_run)]
    r = subprocess.run([*cli, "--out", str(tmp_path / "c.html"), "--cell", "das|0|block_output|last|2|1",
                        "--figures", str(tmp_path / "figs")], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    pngs = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    assert {"layer-sweep.png", "iia-das.png", "iia-butterfly.png", "angles-butterfly-0-block_output-last-2.png",
            "subspaces-das-0-block_output-last-2.png"} <= set(pngs)
    assert all((tmp_path / "figs" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert (tmp_path / "figs" / "layer-sweep.pdf").read_bytes()[:4] == b"%PDF"
    r = subprocess.run([*cli, "--out", str(tmp_path / "d.html"), "--cell", "das|7|block_output|last|2"], env=env,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and r.stderr.startswith("error: no cell 'das|7|block_output|last|2'")
    (tmp_path / "afile").write_text("x")
    r = subprocess.run([*cli, "--out", str(tmp_path / "e.html"), "--figures", str(tmp_path / "afile")], env=env,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and r.stderr.startswith(f"error: cannot write figures to {tmp_path / 'afile'}"), r.stderr


def test_align_prints_seed_agreement_with_its_chance_level(tmp_path):
    import os
    import subprocess
    import sys

    from roadinterp.search import summarize
    from roadinterp.store import read_run

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    r = subprocess.run([sys.executable, "-m", "roadinterp.cli", "align", "--task", "hierarchical-equality",
                        "--layers", "0", "--family", "road", "--size", "2", "--seeds", "2", "--n-train", "256",
                        "--n-test", "256", "--epochs", "1", "--no-controls", "--no-report", "--workers", "1",
                        "--wide", "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    s = summarize(read_run(tmp_path / "run")[1]).iloc[0]
    assert "seed agree (random)" in r.stdout and "…" not in r.stdout  # nothing truncated
    assert f"{s['seed_agreement']:.2f} ({s['seed_agreement_chance']:.2f})" in r.stdout
