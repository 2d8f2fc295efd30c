"""to_peft / from_peft: peft 0.21's RoadConfig is the numerical oracle for Linear placement."""

from __future__ import annotations

import builtins
import copy

import pytest
import torch

from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.linear import apply_road, linear_targets
from roadinterp.adapters.peft_interop import from_peft, to_peft
from roadinterp.adapters.serve import forward as serve_forward
from roadinterp.errors import ConfigError, DependencyError

pytest.importorskip("peft")

from test_linear import tiny_gpt2, tiny_llama  # noqa: E402


@pytest.mark.parametrize("make", [tiny_llama])
@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_to_peft_forward_equals_roadinterp_and_from_peft_is_exact(make, variant):
    model = make()
    targets = linear_targets(model, "all-linear")
    bank = {f"t{i}": RoadAdapter(targets, variant=variant, group_size=32, placement="linear",
                                 init="random", seed=i) for i in range(3)}
    x = torch.randint(1, 100, (3, 7))
    ids = [2, 0, 1]
    with torch.no_grad():
        ours = serve_forward(model, x, ids, adapters=bank).logits
        pm = to_peft(bank, copy.deepcopy(model))
        for b, i in enumerate(ids):
            pm.set_adapter(f"t{i}")
            torch.testing.assert_close(pm(x[b:b + 1]).logits[0], ours[b], atol=1e-5, rtol=0)
        mixed = pm(x, adapter_names=[f"t{i}" for i in ids]).logits
        torch.testing.assert_close(mixed, ours, atol=1e-5, rtol=0)
    back = from_peft(pm)
    assert list(back) == list(bank)
    for name, a in bank.items():
        b = back[name]
        assert b.placement == "linear" and b.variant == variant and b.targets == a.targets
        for t, r in a.items():
            r2 = b.rotation(t)
            assert r2.group_size == r.group_size
            assert torch.equal(r2.theta, r.theta) and torch.equal(r2.alpha, r.alpha)


def test_subspace_adapter_exports_as_identity_outside_blocks():
    model = tiny_llama()
    targets = linear_targets(model, ["q_proj", "down_proj"])
    a = RoadAdapter(targets, group_size=32, placement="linear", init="random", seed=0, blocks=[1, 5, 20])
    x = torch.randint(1, 100, (2, 5))
    with torch.no_grad():
        with apply_road(model, a):
            ours = model(x).logits
        pm = to_peft(a, copy.deepcopy(model))
        torch.testing.assert_close(pm(x).logits, ours, atol=1e-5, rtol=0)
    back = from_peft(pm)["default"]
    with torch.no_grad(), apply_road(model, back):
        torch.testing.assert_close(model(x).logits, ours, atol=1e-5, rtol=0)


def test_to_peft_refuses_site_adapters_and_missing_peft(monkeypatch):
    model = tiny_llama()
    with pytest.raises(ConfigError, match="placement"):
        to_peft(RoadAdapter({"0:block_output:last": 64}, group_size=32), model)
    gpt2 = tiny_gpt2()
    with pytest.raises(ConfigError, match="Conv1D"):
        to_peft(RoadAdapter(linear_targets(gpt2), group_size=32, placement="linear"), gpt2)
    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(DependencyError, match="pip install"):
        from_peft(model)
