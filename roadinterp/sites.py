"""Sites: *where* in a model an intervention acts.

A :class:`Site` is ``(layer, component, positions)``: ``component`` is one of
pyvene's abstract names (``block_output``, ``mlp_output``, ``attention_output``,
``mlp_activation``, ...) which pyvene maps to a concrete module per architecture;
``positions`` picks the token positions (``"last"``, ``"all"``, an int, a tuple of
ints, or a name the task defines, such as ``"carry"``).

Prompts of different lengths are **left-padded** (with ``attention_mask`` and
``position_ids``, so every real token computes exactly what it computes unpadded):
``"last"`` is then every row's last real token, and a named position that differs per
example (the indirect object's name in IOI) comes from the batch's per-row positions.

We always hand pyvene *full per-example* ``unit_locations``: its shortcuts switch
on ``use_fast`` for good, after which per-example positions silently reuse
example 0's. New architectures are added with :func:`register_architecture`
(explicit, no editing of pyvene's tables by hand). A decoder LM pyvene has no card for
(Gemma-3, for one) gets its sites from its own structure (:func:`infer_architecture`): the
block list (``model.layers``, ``transformer.h``, ...) and, in each block, the ``mlp``, the
attention module and its ``q/k/v/o`` projections; :func:`ensure_sites` does this once per
class, the first time a model of it is loaded or asked for its sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

import torch

from roadinterp._pyvene import get_dimension_by_component, modelcard
from roadinterp.errors import ConfigError, SiteError, unknown

Positions = Union[str, int, tuple]



def module_key(key: str) -> str:
    """A target key (module path or ``Site.key()``) as an ``nn.ModuleDict`` key (no dots).

    Every adapter that stores one module per target (RoAd, PEDRO, LoReFT) names it this way.
    """
    return key.replace(".", "__").replace(":", "--").replace("@", "_at_").replace(",", "_")

@dataclass(frozen=True)
class Site:
    """Where to intervene: a layer, a pyvene component and token positions."""

    layer: int  # block index, 0-based
    component: str = "block_output"  # pyvene component name
    positions: Positions = "last"  # "last" | "all" | int | tuple[int, ...] | task-named position

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ConfigError(f"layer must be a non-negative int, got {self.layer!r}")
        if not isinstance(self.component, str) or not self.component:
            raise ConfigError(f"component must be a pyvene component name, got {self.component!r}")
        if isinstance(self.positions, list):
            object.__setattr__(self, "positions", tuple(self.positions))

    def label(self) -> str:
        """The site as messages print it, ``L22 block_output@last`` (CellId.label's form); ``key()`` is
        the saved form adapters are keyed by."""
        from roadinterp.cellid import CellId

        return CellId("", self.layer, self.component, self.positions, 0).site

    def key(self) -> str:
        """Stable string form ``layer:component:positions`` (round-trips via from_key)."""
        p = self.positions
        ptxt = ",".join(map(str, p)) if isinstance(p, tuple) else str(p)
        return f"{self.layer}:{self.component}:{ptxt}"

    @classmethod
    def from_key(cls, key: str) -> Site:
        try:
            layer, component, ptxt = key.split(":")
            return cls(int(layer), component, parse_positions(ptxt))
        except ValueError:
            raise ConfigError(f"site key must look like 'layer:component:positions', got {key!r}") from None

    def position_indices(self, seq_len: int, named: Mapping[str, int] | None = None) -> list[int]:
        """Resolve ``positions`` to a list of indices into a sequence of ``seq_len``."""
        p = self.positions
        if p == "last":
            idx = [seq_len - 1]
        elif p == "all":
            idx = list(range(seq_len))
        elif isinstance(p, str):
            if not named or p not in named:
                known = dict.fromkeys(["last", "all", *(named or {})])
                raise SiteError(f"unknown position {p!r}; known positions: {', '.join(known)}")
            if named[p] is None:
                raise SiteError(f"position {p!r} differs per example: it resolves from a batch's per-row "
                                "positions (CounterfactualBatch.positions), not from the task alone")
            idx = [named[p]]
        elif isinstance(p, int):
            idx = [p]
        else:
            idx = list(p)
        out = []
        for i in idx:
            j = i + seq_len if i < 0 else i
            if not 0 <= j < seq_len:
                raise SiteError(f"position {i} is out of range for sequence length {seq_len}")
            out.append(j)
        return out

    def unit_locations(self, batch_size: int, seq_len: int, named=None, rows=None) -> list[list[int]]:
        """Full per-example locations ``[batch][n_positions]`` for pyvene.

        ``rows`` (name -> int tensor ``[batch]``) gives the per-row named positions of this
        batch; a site at such a name gets each row's own index.
        """
        p = self.positions
        if rows is not None and isinstance(p, str) and p in rows:
            col = [int(j) for j in torch.as_tensor(rows[p]).tolist()]
            if len(col) != batch_size or any(not 0 <= j < seq_len for j in col):
                raise SiteError(f"per-row position {p!r} has {len(col)} rows for a batch of {batch_size} "
                                f"or an index outside 0..{seq_len - 1}")
            return [[j] for j in col]
        idx = self.position_indices(seq_len, named)
        return [list(idx) for _ in range(batch_size)]


# ------------------------------------------------------------ architectures
def register_architecture(
    model_class: type, module_mapping: Mapping[str, tuple], dimension_mapping: Mapping[str, tuple],
    *, overwrite: bool = False,
) -> None:
    """Teach pyvene the sites of a new HF architecture.

    ``module_mapping``: component -> (module path template with ``%s`` for the
    layer, hook type ``"register_forward_hook"`` or ``"register_forward_pre_hook"``),
    e.g. ``{"block_output": ("bert.encoder.layer[%s]", "register_forward_hook")}``.
    ``dimension_mapping``: component -> tuple of config attribute names giving the width.
    """
    if model_class in modelcard.type_to_module_mapping and not overwrite:
        raise ConfigError(
            f"{model_class.__name__} is already registered; pass overwrite=True to replace it"
        )
    if set(module_mapping) != set(dimension_mapping):
        raise ConfigError("module_mapping and dimension_mapping must name the same components")
    modelcard.type_to_module_mapping[model_class] = dict(module_mapping)
    modelcard.type_to_dimension_mapping[model_class] = dict(dimension_mapping)


_BLOCKS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "transformer.layers",
           "model.language_model.layers", "layers")  # where decoder LMs keep their blocks
_MLP = ("mlp", "feed_forward", "ffn")
_ATTN = ("self_attn", "attn", "attention", "self_attention")
_OUT = ("o_proj", "out_proj", "c_proj", "dense")
_ACT = ("act_fn", "act", "activation_fn")
INFERRED: dict[type, dict[str, str]] = {}  # class -> component -> module path, for what was inferred


def _child(module: torch.nn.Module, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if isinstance(getattr(module, n, None), torch.nn.Module)), None)


def _out_width(module: torch.nn.Module) -> int | None:
    w = getattr(module, "weight", None)
    if isinstance(module, torch.nn.Linear):
        return module.out_features
    return int(w.shape[-1]) if isinstance(w, torch.Tensor) and w.dim() == 2 else None  # Conv1D: [in, out]


def _in_width(module: torch.nn.Module) -> int | None:
    w = getattr(module, "weight", None)
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 2 else None


def infer_architecture(model: torch.nn.Module) -> tuple[dict[str, tuple], dict[str, tuple]] | str:
    """A pyvene site map read from ``model``'s own modules, or why there is none (a string).

    Blocks: the first of ``model.layers``, ``transformer.h``, ... that is a ``ModuleList`` with
    one entry per layer. Per block: ``block_input``/``block_output``; ``mlp_input``/``mlp_output``
    and ``mlp_activation`` when the block has an ``mlp`` (with ``act_fn``); ``attention_input``/
    ``attention_output`` for its attention module; ``attention_value_output`` (the input of
    ``o_proj``) and ``query/key/value_output`` for separate ``q/k/v_proj`` Linears. Widths come
    from the modules' weights, kept on the model's config as ``roadinterp_width_<component>``
    (pyvene reads widths from config attributes), so two sizes of one class coexist.
    """
    try:
        n = n_layers(model)
    except SiteError as err:
        return str(err)
    blocks = None
    for path in _BLOCKS:
        owner = model
        for name in path.split("."):
            owner = getattr(owner, name, None)
        if isinstance(owner, torch.nn.ModuleList) and len(owner) == n:
            blocks = path
            break
    if blocks is None:
        return f"no list of {n} blocks at any of {', '.join(_BLOCKS)}"
    block = eval_path(model, blocks)[0]
    d = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", None)
    paths: dict[str, tuple[str, str]] = {"block_input": ("", "register_forward_pre_hook"),
                                         "block_output": ("", "register_forward_hook")}
    widths: dict[str, int | None] = {"block_input": d, "block_output": d}
    mlp = _child(block, _MLP)
    if mlp:
        paths |= {"mlp_input": (mlp, "register_forward_pre_hook"), "mlp_output": (mlp, "register_forward_hook")}
        widths |= {"mlp_input": d, "mlp_output": d}
        act = _child(getattr(block, mlp), _ACT)
        up = _child(getattr(block, mlp), ("up_proj", "c_fc", "fc1", "dense_h_to_4h"))
        if act and up:
            paths["mlp_activation"] = (f"{mlp}.{act}", "register_forward_hook")
            widths["mlp_activation"] = _out_width(getattr(getattr(block, mlp), up))
    attn = _child(block, _ATTN)
    if attn:
        module = getattr(block, attn)
        paths |= {"attention_input": (attn, "register_forward_pre_hook"),
                  "attention_output": (attn, "register_forward_hook")}
        widths |= {"attention_input": d, "attention_output": d}
        out = _child(module, _OUT)
        if out:
            paths["attention_value_output"] = (f"{attn}.{out}", "register_forward_pre_hook")
            widths["attention_value_output"] = _in_width(getattr(module, out))
        for short, comp in (("q_proj", "query_output"), ("k_proj", "key_output"), ("v_proj", "value_output")):
            if isinstance(getattr(module, short, None), torch.nn.Linear):
                paths[comp] = (f"{attn}.{short}", "register_forward_hook")
                widths[comp] = getattr(module, short).out_features
    if d is None:
        return f"the config of {type(model).__name__} names no hidden_size"
    module_mapping, dimension_mapping = {}, {}
    for comp, (sub, hook) in paths.items():
        if widths[comp] is None:
            continue
        module_mapping[comp] = (f"{blocks}[%s]" + (f".{sub}" if sub else ""), hook)
        dimension_mapping[comp] = (_width_attr(model.config, comp, int(widths[comp])),)
    return module_mapping, dimension_mapping


def _width_attr(config, component: str, width: int) -> str:
    attr = f"roadinterp_width_{component}"  # one name per component: the class's map fits every size
    setattr(config, attr, width)
    return attr


def eval_path(model: torch.nn.Module, path: str) -> torch.nn.ModuleList:
    owner = model
    for name in path.split("."):
        owner = getattr(owner, name)
    return owner


def ensure_sites(model: torch.nn.Module) -> None:
    """Give pyvene a site map for ``model``'s class if it has none, read from its structure
    (:func:`infer_architecture`); a class it cannot read stays unmapped (``components`` says why)."""
    cls = type(model)
    if cls in INFERRED:  # mapped already; this model's config may still lack its width attributes
        if any(getattr(model.config, f"roadinterp_width_{c}", None) is None for c in INFERRED[cls]):
            infer_architecture(model)
        return
    if cls in modelcard.type_to_module_mapping or not hasattr(model, "config"):
        return
    inferred = infer_architecture(model)
    if isinstance(inferred, str):
        return
    register_architecture(cls, *inferred)
    INFERRED[cls] = {c: p for c, (p, _) in inferred[0].items()}


def components(model: torch.nn.Module) -> list[str]:
    """Component names pyvene knows for this model's class (read from the model when pyvene has no card)."""
    ensure_sites(model)
    mapping = modelcard.type_to_module_mapping.get(type(model))
    if mapping is None:
        why = infer_architecture(model) if hasattr(model, "config") else "it has no config"
        raise SiteError(
            f"pyvene has no site map for {type(model).__name__} and none can be read from its modules "
            f"({why if isinstance(why, str) else 'unknown'}); add one with roadinterp.register_architecture(...)"
        )
    return sorted(mapping)


def n_layers(model: torch.nn.Module) -> int:
    cfg = model.config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(cfg, attr, None) is not None:
            return int(getattr(cfg, attr))
    raise SiteError(f"cannot tell how many layers {type(model).__name__} has")


def validate_site(model: torch.nn.Module, site: Site) -> int:
    """Check the site exists on the model; return its width."""
    comps = components(model)
    if site.component not in comps:
        raise unknown("component", site.component, comps)
    n = n_layers(model)
    if site.layer >= n:
        raise SiteError(f"layer {site.layer} is out of range: the model has layers 0..{n - 1}")
    return site_width(model, site)


def site_width(model: torch.nn.Module, site: Site | str) -> int:
    component = site.component if isinstance(site, Site) else site
    ensure_sites(model)
    dim = get_dimension_by_component(type(model), model.config, component)
    if dim is None:
        raise SiteError(f"pyvene cannot tell the width of {component!r} on {type(model).__name__}")
    return int(dim)


def sequence_length(inputs: Mapping[str, torch.Tensor]) -> int:
    for key in ("input_ids", "inputs_embeds"):
        if key in inputs:
            return int(inputs[key].shape[1])
    raise ConfigError(f"model inputs need input_ids or inputs_embeds, got keys {sorted(inputs)}")


def check_left_padded(inputs: Mapping[str, torch.Tensor]) -> None:
    """Refuse right-padded inputs: ``"last"`` and the answer are read at the last column."""
    mask = inputs.get("attention_mask")
    if mask is not None and not bool((mask[:, -1] != 0).all()):
        raise SiteError("inputs are right-padded (attention_mask is 0 in the last column); roadinterp reads "
                        "'last' and the answer at the last column: pad on the left and pass position_ids "
                        "(roadinterp.tasks.PromptTask does both)")


def parse_positions(text: str) -> Positions:
    """CLI helper: "last" | "all" | "3" | "1,2" | a named position."""
    text = text.strip()
    if "," in text:
        try:
            return tuple(int(t) for t in text.split(","))
        except ValueError:
            raise ConfigError(f"positions must be ints separated by commas, got {text!r}") from None
    try:
        return int(text)
    except ValueError:
        return text
