"""PEDRO adapters: generators on named keys, the unit you train, save and serve.

The maths (pooling, the bottleneck generator, the scaling) and the pyvene
intervention live in :mod:`roadinterp.interventions.pedro`. A :class:`PedroAdapter`
holds one :class:`~roadinterp.interventions.pedro.PedroGenerator` per key, in one of
two placements:

- ``site`` (pyvene): key = ``Site.key()``; attach it with
  :func:`roadinterp.adapters.attach.interventions` (a ``PedroIntervention`` per site,
  sharing the adapter's generators) and pyvene pools and scales the site's positions.
- ``linear`` (PEFT-style, the paper's): key = decoder block path; the generator pools
  the block's *input* hidden states at prefill and scales the outputs of the targeted
  Linear (or GPT-2 ``Conv1D``) modules of that block, by default query, value and
  FFN-up (:func:`resolve_targets` maps those names to module slices;
  :func:`~roadinterp.adapters.pedro_linear.apply_pedro` installs them, and serves
  several adapters in mixed batches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from roadinterp import io
from roadinterp.adapters.modules import (
    PLACEMENTS,
    Wrapper,
    find_blocks,
    hidden_size,
    is_projection,
    out_features,
    unwrap,
)
from roadinterp.errors import ConfigError, FileFormatError, ShapeError
from roadinterp.interventions.pedro import PedroConfig, PedroGenerator
from roadinterp.sites import module_key

DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "v_proj", "up_proj")


# ----------------------------------------------------------------------- layout
@dataclass(frozen=True)
class PedroTarget:
    """One scaled representation: columns ``[start, end)`` of a module's output.

    ``name`` is what the user asked for (``"q_proj"``); ``module`` the module path
    (``"transformer.h.0.attn.c_attn"``; for placement "site" the site key).
    """

    name: str
    module: str
    start: int
    end: int

    @property
    def width(self) -> int:
        return self.end - self.start


# Logical target names -> (module path inside a block, part, n_parts) for architectures
# whose projections are fused. GPT-2's c_attn is one Conv1D producing [q | k | v].
_ALIASES: dict[str, dict[str, tuple[str, int, int]]] = {
    "gpt2": {
        "q_proj": ("attn.c_attn", 0, 3), "k_proj": ("attn.c_attn", 1, 3), "v_proj": ("attn.c_attn", 2, 3),
        "o_proj": ("attn.c_proj", 0, 1), "up_proj": ("mlp.c_fc", 0, 1), "down_proj": ("mlp.c_proj", 0, 1),
    },
}


def register_target_aliases(model_type: str, aliases: Mapping[str, tuple[str, int, int]], *, overwrite: bool = False) -> None:
    """Map logical target names to (module path inside a block, part, n_parts) for ``model_type``."""
    if model_type in _ALIASES and not overwrite:
        raise ConfigError(f"target aliases for {model_type!r} exist; pass overwrite=True to replace them")
    _ALIASES[model_type] = dict(aliases)


def _parent(root: nn.Module, path: str) -> nn.Module:
    parent = path.rpartition(".")[0]
    return root.get_submodule(parent) if parent else root


def resolve_targets(model: nn.Module, target_modules: Sequence[str] | None = None) -> dict[str, list[PedroTarget]]:
    """Block path -> targets in that block, for logical names or module-name suffixes.

    A name matches an architecture alias (GPT-2: ``q_proj`` is the first third of
    ``attn.c_attn``) or every Linear/Conv1D whose path inside the block equals it or
    ends with ``.name``. A name that matches nothing in a block is a ConfigError.
    """
    if isinstance(target_modules, str):
        raise ConfigError(f"target_modules must be a sequence of names, got the string {target_modules!r}")
    names = tuple(DEFAULT_TARGETS if target_modules is None else target_modules)
    if not names:
        raise ConfigError("target_modules is empty; name at least one module (e.g. q_proj)")
    aliases = _ALIASES.get(getattr(model.config, "model_type", ""), {})
    prefix, blocks = find_blocks(model)
    layout: dict[str, list[PedroTarget]] = {}
    for i, block in enumerate(blocks):
        bpath = f"{prefix}.{i}"
        projections = {
            n: unwrap(m) for n, m in block.named_modules()
            if n and is_projection(unwrap(m)) and not isinstance(_parent(block, n), Wrapper)
        }
        targets: list[PedroTarget] = []
        for name in names:
            if name in aliases:
                rel, part, n_parts = aliases[name]
                if rel not in projections:
                    raise ConfigError(f"target module {name!r} maps to {bpath}.{rel}, which is not a Linear/Conv1D")
                width = out_features(projections[rel]) // n_parts
                targets.append(PedroTarget(name, f"{bpath}.{rel}", part * width, (part + 1) * width))
                continue
            hits = [rel for rel in projections if rel == name or rel.endswith("." + name)]
            if not hits:
                known = sorted({*projections, *aliases})
                raise ConfigError(
                    f"target module {name!r} does not exist in block {bpath} of {type(model).__name__}; "
                    f"Linear/Conv1D modules there: {', '.join(known)}"
                )
            for rel in hits:
                targets.append(PedroTarget(name, f"{bpath}.{rel}", 0, out_features(projections[rel])))
        seen = set()
        for t in targets:
            key = (t.module, t.start, t.end)
            if key in seen:
                raise ConfigError(f"target {t.name!r} scales {t.module}[{t.start}:{t.end}] twice; list it once")
            seen.add(key)
        layout[bpath] = targets
    return layout


# ---------------------------------------------------------------------- adapter
@io.register_kind
class PedroAdapter(nn.Module):
    """PEDRO generators on named keys: the unit you train, save and serve.

    ``layout`` maps a key to the targets its generator scales. Placement
    ``"linear"``: key = decoder block path, targets = Linear output slices (build it
    with :meth:`for_model`). Placement ``"site"``: key = ``Site.key()``, one target of
    the site's width (build it with :meth:`for_sites`).
    """

    KIND = "pedro_adapter"

    def __init__(
        self, config: PedroConfig, layout: Mapping[str, Sequence[PedroTarget]], *, placement: str = "linear",
        seed: int | None = None, meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")
        if not layout:
            raise ConfigError("a PEDRO adapter needs at least one generator (an empty layout was given)")
        self.config, self.placement, self.meta = config, placement, dict(meta or {})
        self.layout = {k: [PedroTarget(*t) if not isinstance(t, PedroTarget) else t for t in v] for k, v in layout.items()}
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.generators = nn.ModuleDict()
        for key, targets in self.layout.items():
            if not targets:
                raise ConfigError(f"generator {key!r} has no targets")
            for t in targets:
                if not 0 <= t.start < t.end:
                    raise ConfigError(f"target {t.name!r} of {key!r} has an empty or negative slice [{t.start}:{t.end}]")
            self.generators[module_key(key)] = PedroGenerator(config, sum(t.width for t in targets), generator=gen)

    @classmethod
    def for_model(
        cls, model: nn.Module, config: PedroConfig, *, target_modules: Sequence[str] | None = None,
        seed: int | None = None, meta: Mapping[str, Any] | None = None,
    ) -> PedroAdapter:
        """One generator per decoder block of ``model`` scaling ``target_modules`` (identity at init)."""
        d = hidden_size(model)
        if config.dim != d:
            raise ConfigError(f"PedroConfig.dim is {config.dim} but {type(model).__name__} has hidden size {d}")
        return cls(config, resolve_targets(model, target_modules), placement="linear", seed=seed, meta=meta)

    @classmethod
    def for_sites(
        cls, sites: Mapping[str, int], config: PedroConfig, *, seed: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> PedroAdapter:
        """Site placement: ``sites`` maps ``Site.key()`` -> width (must equal ``config.dim``)."""
        for key, width in sites.items():
            if width != config.dim:
                raise ConfigError(f"site {key!r} is {width} wide but PedroConfig.dim is {config.dim}")
        layout = {k: [PedroTarget("site", k, 0, w)] for k, w in sites.items()}
        return cls(config, layout, placement="site", seed=seed, meta=meta)

    def generator(self, key: str) -> PedroGenerator:
        if key not in self.layout:
            raise ConfigError(f"adapter has no generator {key!r}; keys: {', '.join(self.layout)}")
        return self.generators[module_key(key)]

    def items(self) -> list[tuple[str, PedroGenerator]]:
        return [(k, self.generator(k)) for k in self.layout]

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- io
    def to_state(self):
        config = {
            "pedro": asdict(self.config), "placement": self.placement, "meta": self.meta,
            "layout": {k: [asdict(t) for t in ts] for k, ts in self.layout.items()},
        }
        tensors = {f"{k}.{n}": t.detach() for k, g in self.items() for n, t in g.tensors().items()}
        return config, tensors

    @classmethod
    def from_state(cls, config, tensors):
        where = "pedro_adapter config"
        pc = io.expect(config, "pedro", dict, where)
        layout_raw = io.expect(config, "layout", dict, where)
        layout = {}
        for key, ts in layout_raw.items():
            if not isinstance(ts, list):
                raise FileFormatError(f"{where}: layout[{key!r}] must be a list of targets, got {ts!r}")
            layout[key] = [
                PedroTarget(
                    io.expect(t, "name", str, where), io.expect(t, "module", str, where),
                    io.expect(t, "start", int, where), io.expect(t, "end", int, where),
                ) if isinstance(t, dict) else _bad(where, t)
                for t in ts
            ]
        for k in ("dim", "bottleneck"):
            if k in pc:
                io.check_width(pc[k], f"{where}: pedro.{k}")
        pcfg = PedroConfig(**pc)
        for key, ts in layout.items():  # sizes against the file's tensors before anything is allocated
            for t in ts:
                io.check_width(t.end, f"{where}: end of target {t.name!r}")
            out_dim = sum(max(t.end - t.start, 0) for t in ts)
            io.expect_shape(tensors, f"{key}.w_down", (pcfg.dim, pcfg.bottleneck), where)
            io.expect_shape(tensors, f"{key}.w_up", (pcfg.bottleneck, out_dim), where)
        new = cls(
            pcfg, layout, placement=io.expect(config, "placement", str, where),
            meta=config.get("meta") or {},
        )
        for key, g in new.items():
            for name, p in g.tensors().items():
                t = tensors.get(f"{key}.{name}")
                if t is None:
                    raise FileFormatError(f"weights have no tensor {key}.{name}")
                if tuple(t.shape) != tuple(p.shape):
                    raise ShapeError(f"{key}.{name} has shape {tuple(t.shape)} but the config needs {tuple(p.shape)}")
                with torch.no_grad():
                    p.copy_(t)
        return new

    def extra_repr(self) -> str:
        c = self.config
        return (f"placement={self.placement}, generators={len(self.layout)}, bottleneck={c.bottleneck}, "
                f"pooling={c.pooling}, activation={c.activation}")


def _bad(where: str, t: Any):
    raise FileFormatError(f"{where}: a target must be an object with name/module/start/end, got {t!r}")
