"""peft interop: move RoAd adapters to and from ``peft.RoadConfig`` models.

roadinterp's parameter layout *is* peft's (``road_theta`` / ``road_alpha`` per Linear,
same variant and pair order), so nothing is permuted: :func:`to_peft` copies each
adapter's theta/alpha into a ``PeftModel`` (identity outside an adapter's subspace),
:func:`from_peft` reads them back as ``placement="linear"`` :class:`RoadAdapter` s.
peft is an optional (dev) dependency, imported only inside these functions; it is
also the numerical oracle of the tests.
"""

from __future__ import annotations

import torch
from torch import nn

from roadinterp.adapters.adapter import RoadAdapter, as_bank
from roadinterp.adapters.linear import road_layers
from roadinterp.errors import ConfigError, DependencyError, ShapeError
from roadinterp.road import rotation as rot

__all__ = ["from_peft", "to_peft"]


def _peft():
    try:
        import peft
    except ImportError:
        raise DependencyError(
            "peft is not installed; it is an optional dependency: pip install 'roadinterp[dev]' (or peft>=0.21.2)"
        ) from None
    if not hasattr(peft, "RoadConfig"):
        raise DependencyError(f"peft {peft.__version__} has no RoadConfig; install peft>=0.21.2")
    return peft


def _peft_params(adapter: RoadAdapter, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """theta/alpha with blocks outside the subspace set to the identity (exact in peft)."""
    r = adapter.rotation(path)
    theta, alpha = r.theta.detach().float().clone(), r.alpha.detach().float().clone()
    if adapter.blocks is not None:
        keep = rot.block_param_mask(torch.tensor(adapter.blocks, dtype=torch.long), r.dim, r.variant, r.group_size)
        theta[~keep], alpha[~keep] = 0.0, 1.0
    return theta, alpha


def to_peft(adapters, base_model: nn.Module):
    """A ``peft.PeftModel`` with one ``RoadConfig`` adapter per roadinterp adapter.

    Like ``peft.get_peft_model`` this wraps ``base_model`` in place. Adapters need
    ``placement="linear"`` and one group size across their targets (peft has one per
    config). Subspaces are written out as identity parameters outside the blocks.
    """
    peft = _peft()
    bank = as_bank(adapters)
    if road_layers(base_model):
        raise ConfigError("base_model has roadinterp RoAd layers; call remove_road(model) first")
    for name, a in bank.items():  # validate everything before peft touches the model
        if a.placement != "linear":
            raise ConfigError(f"adapter {name!r} has placement={a.placement!r}; peft only has Linear RoAd")
        for t in a.targets:
            try:
                m = base_model.get_submodule(t)
            except AttributeError:
                raise ConfigError(f"adapter {name!r} targets {t!r}, which {type(base_model).__name__} does not have") from None
            if not isinstance(m, nn.Linear):
                raise ConfigError(
                    f"peft RoAd supports only nn.Linear, but {t!r} is a {type(m).__name__} "
                    "(e.g. GPT-2's Conv1D); keep such adapters in roadinterp"
                )
        if len({a.rotation(t).group_size for t in a.targets}) != 1:
            raise ConfigError(f"adapter {name!r} uses several group sizes; a peft RoadConfig has one")
    pm = None
    for name, a in bank.items():
        sizes = {a.rotation(t).group_size for t in a.targets}
        cfg = peft.RoadConfig(variant=a.variant, group_size=sizes.pop(), target_modules=list(a.targets))
        if pm is None:
            pm = peft.get_peft_model(base_model, cfg, adapter_name=name)
        else:
            pm.add_adapter(name, cfg)
        model = pm.base_model.model
        for path in a.targets:
            layer = model.get_submodule(path)
            theta, alpha = _peft_params(a, path)
            with torch.no_grad():
                layer.road_theta[name].copy_(theta)
                layer.road_alpha[name].copy_(alpha)
    pm.set_adapter(next(iter(bank)))
    pm.eval()
    return pm


def from_peft(peft_model) -> dict[str, RoadAdapter]:
    """Every RoAd adapter of a ``PeftModel`` as a ``placement="linear"`` :class:`RoadAdapter`."""
    _peft()
    from peft.tuners.road.layer import RoadLayer

    model = peft_model.base_model.model if hasattr(peft_model, "base_model") else peft_model
    layers = [(p, m) for p, m in model.named_modules() if isinstance(m, RoadLayer)]
    names = [n for n, c in getattr(peft_model, "peft_config", {}).items() if str(c.peft_type).endswith("ROAD")]
    if not names:
        names = sorted({n for _, m in layers for n in m.road_theta})
    if not names or not layers:
        raise ConfigError(f"{type(peft_model).__name__} has no RoAd adapters")
    out = {}
    for name in names:
        mine = [(p, m) for p, m in layers if name in m.road_theta]
        variants = {m.variant[name] for _, m in mine}
        if len(variants) != 1:
            raise ConfigError(f"peft adapter {name!r} mixes variants {sorted(variants)}")
        targets = {p: m.out_features for p, m in mine}
        sizes = {m.group_size[name] for _, m in mine}
        if len(sizes) != 1:
            raise ConfigError(f"peft adapter {name!r} mixes group sizes {sorted(sizes)}")
        a = RoadAdapter(targets, variant=variants.pop(), group_size=sizes.pop(), placement="linear",
                        meta={"source": "peft", "peft_adapter": name})
        for p, m in mine:
            r = a.rotation(p)
            if r.group_size != m.group_size[name]:  # cannot happen: peft checks out_features % group_size
                raise ShapeError(f"{p}: group size {m.group_size[name]} does not fit width {m.out_features}")
            with torch.no_grad():
                r.theta.copy_(m.road_theta[name].detach().float())
                r.alpha.copy_(m.road_alpha[name].detach().float())
        out[name] = a
    return out
