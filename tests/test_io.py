"""Save/load: bit-exact round trips; every bad file is a FileFormatError naming the problem."""

import json
import pickle

import pytest
import torch

import roadinterp.io as rio
from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.errors import FileFormatError, RoadinterpError


def _adapter(width=16, variant="road_2"):
    a = RoadAdapter({"0:block_output:last": width, "1:block_output:last": width}, variant=variant,
                    group_size=8, blocks=[0, 1, 2], meta={"task": "t"})
    for _, r in a.items():
        torch.nn.init.uniform_(r.theta, -3, 3)
        torch.nn.init.uniform_(r.alpha, 0.5, 1.5)
    return a


@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_round_trip_is_bit_exact(tmp_path, variant):
    a = _adapter(variant=variant)
    rio.save(a, tmp_path / "ad")
    b = rio.load(tmp_path / "ad")
    assert isinstance(b, RoadAdapter)
    assert b.blocks == a.blocks and b.variant == a.variant and b.meta == a.meta
    for (k1, r1), (k2, r2) in zip(a.items(), b.items()):
        assert k1 == k2
        assert torch.equal(r1.theta, r2.theta) and torch.equal(r1.alpha, r2.alpha)
    h = torch.randn(3, 16)
    assert torch.equal(a.rotation("0:block_output:last")(h), b.rotation("0:block_output:last")(h))


def test_pickle_file_is_refused(tmp_path):
    p = tmp_path / "adapter.pt"
    p.write_bytes(pickle.dumps({"theta": [1, 2]}))
    with pytest.raises(FileFormatError, match="pickle"):
        rio.load(p)
    # a pickle hidden in the weights file of a saved directory as well
    rio.save(_adapter(), tmp_path / "ad")
    (tmp_path / "ad" / rio.WEIGHTS_NAME).write_bytes(pickle.dumps([1]))
    with pytest.raises(FileFormatError, match="pickle"):
        rio.load(tmp_path / "ad")


def test_truncated_weights(tmp_path):
    rio.save(_adapter(), tmp_path / "ad")
    w = tmp_path / "ad" / rio.WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[:40])
    with pytest.raises(FileFormatError, match="truncated"):
        rio.load(tmp_path / "ad")


def test_other_width_is_named(tmp_path):
    rio.save(_adapter(16), tmp_path / "ad")
    cfg_path = tmp_path / "ad" / rio.CONFIG_NAME
    doc = json.loads(cfg_path.read_text())
    doc["config"]["targets"] = {k: 32 for k in doc["config"]["targets"]}
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(RoadinterpError, match="width 32"):
        rio.load(tmp_path / "ad")


@pytest.mark.parametrize(
    "field,value,msg",
    [("variant", 3, "'variant' must be str"), ("targets", [1], "'targets' must be dict"),
     ("blocks", "0,1", "'blocks' must be a list of ints")],
)
def test_wrong_json_types(tmp_path, field, value, msg):
    rio.save(_adapter(), tmp_path / "ad")
    cfg_path = tmp_path / "ad" / rio.CONFIG_NAME
    doc = json.loads(cfg_path.read_text())
    doc["config"][field] = value
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(FileFormatError, match=msg):
        rio.load(tmp_path / "ad")


def test_not_json_missing_and_future_version(tmp_path):
    rio.save(_adapter(), tmp_path / "ad")
    cfg_path = tmp_path / "ad" / rio.CONFIG_NAME
    good = cfg_path.read_text()
    cfg_path.write_text("{not json")
    with pytest.raises(FileFormatError, match="not valid JSON"):
        rio.load(tmp_path / "ad")
    doc = json.loads(good)
    doc["version"] = 99
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(FileFormatError, match="version 99"):
        rio.load(tmp_path / "ad")
    with pytest.raises(FileFormatError, match="does not exist"):
        rio.load(tmp_path / "nothing")


def test_save_is_atomic_on_failure(tmp_path):
    class Bad:
        KIND = "road_adapter"

        def to_state(self):
            return {}, {"x": "not a tensor"}

    with pytest.raises(Exception):
        rio.save(Bad(), tmp_path / "ad")
    assert not (tmp_path / "ad").exists()
    assert not [p for p in tmp_path.iterdir()]


def test_pickle_detection_does_not_flag_safetensors(tmp_path):
    # a safetensors header length whose first byte is 0x80 once looked like a pickle
    p = tmp_path / "w"
    p.write_bytes(b"\x80\x00\x00\x00\x00\x00\x00\x00{" + b" " * 127)
    assert not rio._looks_pickled(p)
    p.write_bytes(pickle.dumps([1, 2], protocol=4))
    assert rio._looks_pickled(p)
    torch.save({"a": torch.ones(2)}, tmp_path / "t.pt")
    assert rio._looks_pickled(tmp_path / "t.pt")


def test_group_sizes_survive_round_trip_and_scaling(tmp_path):
    a = _adapter()  # group_size 8 at width 16 (not the constructor's fallback)
    assert a.group_sizes == {k: 8 for k in a.targets}
    rio.save(a, tmp_path / "ad")
    b = rio.load(tmp_path / "ad")
    assert b.group_sizes == a.group_sizes
    assert b.scaled(0.5).group_sizes == a.group_sizes
    rio.save(b.scaled(0.5), tmp_path / "ad2")
    assert rio.load(tmp_path / "ad2").group_sizes == a.group_sizes
