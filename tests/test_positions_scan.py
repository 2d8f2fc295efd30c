"""A scan over several positions, one of them per row, and MIB's aggregates of it.

``positions=["zpos", "last"]`` on a task whose ``zpos`` differs per row: one cell per
(layer, position), each with its own controls, on the KV engine, scoring what pyvene scores;
aggregates.json holds per layer the best position and the mean and max over layers, for IIA and
for every control, checked against a brute-force reading of the stored rows.
"""

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import tiny_model

from roadinterp import aggregates as A
from roadinterp.errors import ConfigError
from roadinterp.search import search
from roadinterp.summary import summarize
from roadinterp.tasks import register_task
from roadinterp.tasks.interval import Interval


class IntervalRows(Interval):
    """Interval with a filler token that moves Z: ``<bos> X Y Z ? ?`` or ``<bos> X ? Y Z ?``."""

    name = "interval-rows"
    positions: ClassVar[dict] = {"last": 5, "zpos": None}

    def encode_rows(self, raw):
        n, num, q = len(raw["x"]), self.token_id["0"], self.token_id["?"]
        late = (raw["x"] + raw["y"]) % 2 == 1
        x, y, z = num + raw["x"], num + raw["y"], num + raw["z"]
        ids = np.where(late[:, None], np.stack([np.zeros(n), x, np.full(n, q), y, z, np.full(n, q)], 1),
                       np.stack([np.zeros(n), x, y, z, np.full(n, q), np.full(n, q)], 1))
        return {"input_ids": torch.as_tensor(ids, dtype=torch.long)}, {"zpos": np.where(late, 4, 3)}

    def encode(self, raw):
        return self.encode_rows(raw)[0]


COMMON = {"task": "interval-rows", "layers": [0, 1], "positions": ["zpos", "last"], "families": ["butterfly"],
          "sizes": [4], "seeds": 2, "n_train": 64, "n_test": 48, "epochs": 1, "batch_size": 32}


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    register_task(IntervalRows(), overwrite=True)
    model = tiny_model("llama")
    out = tmp_path_factory.mktemp("scan")
    kv = search(model=model, out=str(out / "kv"), **COMMON)
    ref = search(model=model, out=str(out / "pyvene"), engine="pyvene", **COMMON)
    return out, kv, ref


def test_one_cell_per_layer_and_position_each_with_its_controls(scans):
    out, kv, _ = scans
    assert len(kv) == 2 * 2 * 2
    assert set(kv["engine"]) == {"kv"}  # the per-row position runs on the KV engine too
    cells = {k.rsplit("|", 1)[0] for k in kv["key"]}
    assert cells == {f"butterfly|{layer}|block_output|{p}|4" for layer in (0, 1) for p in ("zpos", "last")}
    for col in ("iia_random_model", "iia_site_patch", "iia_null", "iia_rival"):
        assert kv[col].notna().all(), col
    assert kv.groupby(["layer", "position"])["iia_site_patch"].nunique().eq(1).all()  # one per site, every seed


def test_kv_scores_what_pyvene_scores(scans):
    _, kv, ref = scans
    a, b = kv.set_index("key"), ref.set_index("key").loc[kv["key"]]
    assert set(ref["engine"]) == {"pyvene"}
    for col in ("iia", "iia_site_patch", "iia_random_model"):
        assert np.abs(a[col].to_numpy() - b[col].to_numpy()).max() <= 1 / 48 + 1e-9, col


def test_aggregates_json_is_mib_s_reading_of_the_rows(scans):
    out, kv, _ = scans
    got = json.loads((out / "kv" / A.FILE).read_text())
    assert got["task"] == "interval-rows" and "best position" in got["protocol"]
    (group,) = got["groups"]
    assert (group["family"], group["size"], group["layers"], group["positions"]) == ("butterfly", 4, 2, 2)
    rows = kv.to_dict("records")
    for metric in ("iia", "iia_site_patch", "iia_random_model", "iia_null"):
        best = {}  # brute force: per layer, per position the mean over seeds, then the best position
        for layer in (0, 1):
            means = {p: np.mean([r[metric] for r in rows if r["layer"] == layer and r["position"] == p])
                     for p in ("zpos", "last")}
            best[layer] = max(means.values())
            cell = next(x for x in group["per_layer"] if x["layer"] == layer)[metric]
            assert cell["value"] == pytest.approx(best[layer])
            assert means[cell["position"]] == pytest.approx(best[layer])
        assert group["mean_over_layers"][metric] == pytest.approx(np.mean(list(best.values())))
        assert group["max_over_layers"][metric] == pytest.approx(max(best.values()))


def test_over_layers_from_a_summary_and_old_tables_without_controls():
    import pandas as pd

    t = pd.DataFrame([{"family": "das", "layer": lay, "component": "block_output", "position": pos, "size": 8,
                       "seed": s, "iia": v + 0.01 * s}
                      for lay, pos, v in [(0, "last", 0.2), (0, "3", 0.6), (1, "last", 0.9), (1, "3", 0.1)]
                      for s in range(2)])
    o = A.over_layers(summarize(t)).iloc[0]
    assert o["iia_layer_mean"] == pytest.approx((0.605 + 0.905) / 2) and o["iia_layer_max"] == pytest.approx(0.905)
    assert (o["best_layer"], o["best_position"]) == (1, "last")
    assert "iia_null_layer_mean" not in o  # a run without controls: nothing invented
    assert A.over_layers(summarize(t.iloc[:0])).empty


def test_a_per_row_position_the_batches_do_not_carry_is_one_error():
    class NoRows(IntervalRows):
        name = "interval-norows"

        def encode_rows(self, raw):
            return super().encode_rows(raw)[0], None

    register_task(NoRows(), overwrite=True)
    with pytest.raises(ConfigError, match="carry no per-row index"):
        search(model=tiny_model("llama"), **{**COMMON, "task": "interval-norows", "seeds": 1})


def test_the_report_terminal_and_figures_show_the_aggregates(scans, tmp_path):
    import io

    from rich.console import Console

    from roadinterp.store import read_run
    from roadinterp.viz import mib
    from roadinterp.viz.report import write_figures, write_report
    from roadinterp.viz.terminal import print_summary

    out, kv, _ = scans
    page = write_report(out / "kv", tmp_path / "r.html").read_text()
    assert "<h2>MIB's aggregates</h2>" in page and "Best position per layer" in page
    assert 'title="layer-position-butterfly-block_output-s4"' in page
    files = {p.name for p in write_figures(out / "kv", tmp_path / "figs")}
    assert "layer-position-butterfly-block_output-s4.png" in files
    # the heat map draws the stored means; its rings sit on the positions aggregates.json keeps
    _, table = read_run(out / "kv")
    fig = mib.layer_position(table, family="butterfly", component="block_output", size=4)
    heat, rings = fig.data[0], fig.data[1]
    means = table.groupby(["layer", "position"])["iia"].mean()
    for i, layer in enumerate(heat.y):
        for j, pos in enumerate(heat.x):
            assert heat.z[i][j] == pytest.approx(means.loc[int(layer), pos])
    kept = {x["layer"]: x["iia"]["position"] for x in json.loads((out / "kv" / A.FILE).read_text())["groups"][0]
            ["per_layer"]}
    assert dict(zip(map(int, rings.y), rings.x)) == kept
    buf = io.StringIO()
    print_summary(Console(file=buf, width=120), summarize(table), None, str(out / "kv"))
    text = buf.getvalue()
    assert "MIB's aggregates" in text and "2 x 2" in text and max(map(len, text.splitlines())) <= 120
