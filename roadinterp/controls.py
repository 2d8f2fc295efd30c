"""Controls that catch interpretability illusions, and the warnings they raise.

A high IIA says a learned subspace *can* move the output the way the causal model
predicts; it does not say the network *uses* that subspace. Makelov, Lange and Nanda
(2023, "Is This the Subspace You Are Looking For?") build the counterexample: at an
MLP hidden layer, a direction that copies the variable but is in the kernel of the
output weights (causally disconnected) plus a *dormant* direction (constant on the
data, but written onto the output by those weights). Patching their sum scores IIA
1.0: the patch switches the dormant pathway on. These controls catch that, per cell:

* ``iia_site_patch``: interchange the *whole* site vector. The counterfactuals are
  the hypothesis's held-out ones with every variable taken from *one* source (so
  patching everything has a well-defined label); ``iia_joint`` is the learned
  subspace on the same counterfactuals and ``iia_joint_null`` their no-op. A subspace
  that beats patching everything is the illusion's signature.
* ``dormant_fraction`` and ``iia_rowspace``: where the site is read by one linear map
  ``W`` (:func:`register_reader`; built in: the hidden layers of pyvene's MLP, GPT-2's
  MLP activation and attention value output, Llama/Qwen2's attention value output),
  the learned subspace splits into its part in ``ker W`` (invisible downstream) and
  its part in the row space of ``W``. ``dormant_fraction`` is the kernel share; the
  row-space part alone is patched (an orthonormal basis of ``P_row U``) for
  ``iia_rowspace``. If that part is near the no-op while the subspace scores high,
  the variable reached the output only through a dormant direction.
* Rivals (run in :mod:`roadinterp.search`): every rival's held-out and train IIA and
  its site-patch IIA, so "false" (the site does not carry it: site patch near its
  no-op) and "does not generalise to unseen entities" (train IIA high, site patch
  high, held-out low) can be told apart.

:func:`cell_warnings` turns one summary row (mean over seeds) into stable codes
(:data:`WARNING_CODES`); it is a pure function of that row. docs/concepts.md
explains each control with the ``illusion-toy`` task as its example.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from roadinterp.errors import ConfigError, ShapeError

# ----------------------------------------------------------------- warnings
WARNING_CODES: tuple[str, ...] = (
    "illusion-suspect", "near-noop", "random-init-comparable", "rival-comparable", "unstable-seeds", "few-seeds",
)
MARGIN = 0.05  # IIA within this of a reference counts as "comparable" / "near"
HIGH = 0.2  # "the subspace scores high": this far above its no-op
UNSTABLE_STD = 0.1  # std of IIA over seeds above this: unstable-seeds
MIN_SEEDS = 3  # fewer seeds than this: few-seeds


def _get(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def rival_names(row: Mapping[str, Any], suffix: str = "_mean") -> list[str]:
    """Names of the rivals with per-rival columns ``iia_rival[NAME]`` in a row."""
    return [k[len("iia_rival["):-len("]" + suffix)] for k in row
            if k.startswith("iia_rival[") and k.endswith("]" + suffix)]


def cell_warnings(row: Mapping[str, Any]) -> list[str]:
    """Warning codes of one summary row (``ri.summarize`` output; ``*_mean`` columns), in fixed order.

    * ``illusion-suspect``: the subspace beats the whole-site patch on the same
      counterfactuals by more than ``MARGIN`` (``iia_joint_mean > iia_site_patch_mean + MARGIN``)
      while doing something (more than ``MARGIN`` above its no-op: a subspace that changes
      nothing "beats" a site patch that breaks the output, e.g. at a late layer, without
      being an illusion), or its row-space part is within ``MARGIN`` of the no-op while the subspace is ``HIGH``
      above it;
    * ``near-noop``: mean IIA within ``MARGIN`` of the no-op baseline;
    * ``random-init-comparable``: the random-init model reaches within ``MARGIN`` of the mean IIA;
    * ``rival-comparable``: a rival reaches within ``MARGIN`` of the mean IIA while being more
      than ``MARGIN`` above its own no-op;
    * ``unstable-seeds``: std over seeds above ``UNSTABLE_STD``;
    * ``few-seeds``: fewer than ``MIN_SEEDS`` seeds.
    Missing controls raise no warning (they were not run).
    """
    out: list[str] = []
    iia, null = _get(row, "iia_mean"), _get(row, "iia_null_mean")
    joint, site = _get(row, "iia_joint_mean"), _get(row, "iia_site_patch_mean")
    jnull, rowspace = _get(row, "iia_joint_null_mean"), _get(row, "iia_rowspace_mean")
    suspect = (joint is not None and site is not None and joint > site + MARGIN
               and (jnull is None or joint - jnull > MARGIN))
    if joint is not None and rowspace is not None and jnull is not None:
        suspect = suspect or (rowspace - jnull < MARGIN and joint - jnull > HIGH)
    if suspect:
        out.append("illusion-suspect")
    if iia is not None and null is not None and iia - null < MARGIN:
        out.append("near-noop")
    rnd = _get(row, "iia_random_model_mean")
    if iia is not None and rnd is not None and rnd >= iia - MARGIN:
        out.append("random-init-comparable")
    if iia is not None:
        names = rival_names(row)
        pairs = [(_get(row, f"iia_rival[{n}]_mean"), _get(row, f"iia_rival_null[{n}]_mean")) for n in names]
        if not names:  # runs stored before per-rival columns: the one rival column
            pairs = [(_get(row, "iia_rival_mean"), _get(row, "iia_rival_null_mean"))]
        for r, rnull in pairs:
            if r is not None and r >= iia - MARGIN and (rnull is None or r - rnull > MARGIN):
                out.append("rival-comparable")
                break
    std, n = _get(row, "iia_std"), _get(row, "n_seeds")
    if std is not None and std > UNSTABLE_STD:
        out.append("unstable-seeds")
    if n is not None and n < MIN_SEEDS:
        out.append("few-seeds")
    return out


def join_codes(codes: list[str]) -> str:
    """``;``-separated, as in results.csv (empty string: no warning)."""
    return ";".join(codes)


def split_codes(text: Any) -> list[str]:
    """Inverse of :func:`join_codes` (NaN or empty: no warning)."""
    return [c for c in str(text).split(";") if c] if isinstance(text, str) else []


WARNING_TEXT = {
    "illusion-suspect": "the subspace beats patching the whole site, or only its dormant part carries the "
                        "variable: possibly an interpretability illusion",
    "near-noop": "IIA is near the no-op baseline",
    "random-init-comparable": "a randomly initialised model aligns about as well",
    "rival-comparable": "a rival hypothesis aligns about as well",
    "unstable-seeds": f"seeds disagree (std > {UNSTABLE_STD})",
    "few-seeds": f"fewer than {MIN_SEEDS} seeds",
}


def describe_warnings(codes: list[str] | str) -> str:
    """One sentence fragment naming each code and what it means ('' when none)."""
    codes = split_codes(codes) if isinstance(codes, str) else list(codes)
    return "; ".join(f"{c} ({WARNING_TEXT.get(c, c)})" for c in codes)


_CONTROL_PREFIXES = ("iia_", "train_iia_rival[", "dormant_fraction")


def is_control_column(name: str) -> bool:
    """Per-seed control columns ``summarize`` averages (``iia_random_model``, ``iia_rival[NAME]``, ...)."""
    return name != "iia" and name.startswith(_CONTROL_PREFIXES)


def rival_columns(name: str, iia: float, train_iia: float, null: float, site_patch: float) -> dict[str, float]:
    """One rival's result columns: held-out and train IIA, its no-op, and its whole-site patch."""
    return {f"iia_rival[{name}]": iia, f"train_iia_rival[{name}]": train_iia,
            f"iia_rival_null[{name}]": null, f"iia_site_patch_rival[{name}]": site_patch}


def strongest_rival(row: Mapping[str, Any]) -> dict[str, Any]:
    """``rival``, ``iia_rival``, ``iia_rival_null`` of the rival furthest above its own no-op (None: no rival)."""
    best = None
    for name in rival_names(row, suffix=""):
        iia, null = _get(row, f"iia_rival[{name}]"), _get(row, f"iia_rival_null[{name}]")
        if iia is not None and (best is None or iia - (null or 0.0) > best[1] - (best[2] or 0.0)):
            best = (name, iia, null)
    if best is None:
        return {"rival": None, "iia_rival": None, "iia_rival_null": None}
    return {"rival": best[0], "iia_rival": best[1], "iia_rival_null": best[2]}


# ----------------------------------------------------------------- readers
Reader = Callable[[torch.nn.Module, int], "torch.Tensor | None"]
_READERS: dict[tuple[str, str], Reader] = {}


def register_reader(model_class: type | str, component: str, reader: Reader, *, overwrite: bool = False) -> None:
    """Declare that ``component`` at layer ``l`` is read by one linear map: ``reader(model, l) -> W [out, d]``.

    Only register a component whose *every* downstream use goes through ``W`` (an MLP
    hidden layer and its down projection, attention values and the output projection):
    the row-space control is only meaningful then. ``reader`` may return ``None`` for a
    layer it cannot serve.
    """
    name = model_class if isinstance(model_class, str) else model_class.__name__
    if (name, component) in _READERS and not overwrite:
        raise ConfigError(f"a reader for {name} {component} is already registered; pass overwrite=True")
    _READERS[(name, component)] = reader


def reader_weight(model: torch.nn.Module, site) -> torch.Tensor | None:
    """``W [out, d]`` of the linear map that reads ``site`` (``None``: not supported here)."""
    fn = _READERS.get((type(model).__name__, site.component))
    w = fn(model, site.layer) if fn is not None else None
    return None if w is None else w.detach().float()


def supported_components() -> dict[str, list[str]]:
    """Model class -> components with a registered reader (for docs and messages)."""
    out: dict[str, list[str]] = {}
    for cls, comp in _READERS:
        out.setdefault(cls, []).append(comp)
    return out


def _mlp_next(model, layer: int):
    blocks = model.mlp.h
    return blocks[layer + 1].ff1.weight if layer + 1 < len(blocks) else model.score.weight


for _comp in ("block_output", "mlp_activation"):  # pyvene MLP: h[l] = act(ff1(h[l-1])), read by the next ff1
    register_reader("MLPForClassification", _comp, _mlp_next)
register_reader("MLPForClassification", "block_input", lambda m, l: m.mlp.h[l].ff1.weight)
# GPT-2's Conv1D stores [in, out]: the map is weight.T
register_reader("GPT2LMHeadModel", "mlp_activation", lambda m, l: m.transformer.h[l].mlp.c_proj.weight.T)
register_reader("GPT2LMHeadModel", "attention_value_output", lambda m, l: m.transformer.h[l].attn.c_proj.weight.T)
for _cls in ("LlamaForCausalLM", "Qwen2ForCausalLM"):  # their mlp_activation is gated by up_proj: not linear-read
    register_reader(_cls, "attention_value_output", lambda m, l: m.model.layers[l].self_attn.o_proj.weight)
del _comp, _cls


# ----------------------------------------------------------------- subspaces
@torch.no_grad()
def patch_matrix(interventions, coords, width: int) -> torch.Tensor:
    """``A`` with ``DII(b, s) = b + A (s - b)`` when every variable takes the same source.  # [d, d]

    Probed, so it works for every family: base 0, source ``e_i``, each variable's
    intervention in turn (as pyvene's hooks apply them). Every built-in family is
    linear in ``s - b`` at evaluation.
    """
    from pyvene.models.modeling_utils import do_intervention

    eye = torch.eye(width).unsqueeze(1)  # [d, 1, d]: d probes, one position

    def run(src):
        b = torch.zeros_like(src)
        for iv, c in zip(interventions, coords):
            b = do_intervention(b.clone(), src.clone(), iv, [list(c)] * width)
        return b[:, 0].float()

    return (run(eye) - run(torch.zeros_like(eye))).T


def orthonormal_basis(A: torch.Tensor, rtol: float = 1e-4, atol: float = 0.0) -> torch.Tensor:
    """An orthonormal basis of the column space of ``A`` (singular values above ``rtol * max`` and ``atol``).  # [d, rank]"""
    U, S, _ = torch.linalg.svd(A.double(), full_matrices=False)
    if S.numel() == 0 or float(S[0]) <= atol:
        return torch.zeros(A.shape[0], 0)
    return U[:, (S > rtol * S[0]) & (S > atol)].float()


def rowspace_split(basis: torch.Tensor, W: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(dormant_fraction, row-space basis)`` of a subspace ``basis [d, k]`` read by ``W [out, d]``.

    ``dormant_fraction = ||(I - P) U||_F^2 / k`` with ``P`` the projector on the row
    space of ``W``: 0 when every direction reaches the output, 1 when none does. The
    row-space basis spans ``P U`` (the part of the subspace ``W`` can see).
    """
    if W.shape[1] != basis.shape[0]:
        raise ShapeError(f"reader weight is {list(W.shape)} but the site is {basis.shape[0]} wide")
    if basis.shape[1] == 0:
        return float("nan"), basis
    V = orthonormal_basis(W.T)  # [d, r] row space of W
    PU = V @ (V.T @ basis)
    dormant = 1.0 - float((PU**2).sum()) / basis.shape[1]
    # basis columns have norm 1: a direction whose row-space part is below 1e-4 has none
    return min(max(dormant, 0.0), 1.0), orthonormal_basis(PU, atol=1e-4)


# ----------------------------------------------------------------- data
def joint_counterfactuals(task, n: int, *, seed: int, hypothesis: str = "main", split: str = "test",
                          variables=None):
    """The site-patch counterfactuals: held-out bases, every variable of ``hypothesis`` (or of
    ``variables``, a subset of them: the ones a search aligns) from *one* source.

    Returns ``(batch, n_vars)``: ``batch.sources`` holds that source once per variable
    (for the learned alignment); ``[batch.sources[0]]`` is the site patch's single source.
    Labels come from the causal model with every variable set to the source's value;
    for a one-variable hypothesis these are the usual counterfactuals.
    """
    from roadinterp.tasks.base import CounterfactualBatch

    batch = task.counterfactuals(n, split=split, seed=seed, hypothesis=hypothesis, variables=variables, mode="all")
    variables = batch.variables
    k = len(variables)
    base_raw, src_raw = batch.raw["base"], batch.raw["sources"][0]
    src_vals = task.causal_model(src_raw, hypothesis=hypothesis)
    labels = task.causal_model(base_raw, hypothesis=hypothesis,
                               interventions={v: src_vals[v] for v in variables})["output"]
    positions = None
    if batch.positions is not None:  # per-row named positions: base, then source 0 for every variable
        positions = {name: torch.cat([p[:, :1], p[:, 1:2].repeat(1, k)], 1) for name, p in batch.positions.items()}
    out = CounterfactualBatch(
        base=batch.base, sources=[batch.sources[0]] * k, intervened=batch.intervened,
        labels=torch.as_tensor(labels.astype("int64")), base_labels=batch.base_labels, variables=variables,
        positions=positions,
    )
    return out, len(variables)


def null_iia(test) -> float:
    """IIA of doing nothing: the share of counterfactuals whose label is the base label."""
    return float((test.labels == test.base_labels).float().mean())


def _iia(model, task, site, interventions, coords, shared: bool, batch, engine: str) -> float:
    from roadinterp.dii.fit import iia
    from roadinterp.dii.runners import make_runner

    runner, (h,) = make_runner(model, site, task, interventions, coords, shared=shared, datasets=[batch],
                               engine=engine)
    return iia(runner, interventions[0], task, [h], [batch.labels], [len(batch)])[0]


def single_source(batch):
    """A :func:`joint_counterfactuals` batch with its one source once: what a projection takes."""
    from dataclasses import replace

    positions = None if batch.positions is None else {k: p[:, :2] for k, p in batch.positions.items()}
    return replace(batch, sources=batch.sources[:1], intervened=batch.intervened[:, :1], variables=("site",),
                   positions=positions)


def site_controls(model, task, site, result, *, n: int, seed: int, hypothesis: str = "main",
                  engine: str = "auto", rowspace: bool = True, data=None,
                  site_patch: float | None = None) -> dict[str, float]:
    """The site-patch and row-space controls of one trained cell (``result``: a TrainResult).

    Returns ``iia_joint``, ``iia_joint_null``, ``iia_site_patch`` and, where the site has a
    registered reader and ``rowspace``, ``dormant_fraction`` and ``iia_rowspace`` (NaN otherwise).
    ``data`` may pass the :func:`joint_counterfactuals` batch to share it across seeds, and
    ``site_patch`` its :func:`site_patch_iia` (it does not depend on ``result``).
    """
    from roadinterp.sites import site_width

    joint = data if data is not None else joint_counterfactuals(task, n, seed=seed, hypothesis=hypothesis)[0]
    single = single_source(joint)
    width = site_width(model, site)
    out = {
        "iia_joint": _iia(model, task, site, result.interventions, result.coords,
                          _shared(result.interventions), joint, engine),
        "iia_joint_null": null_iia(joint),
        "iia_site_patch": (site_patch if site_patch is not None
                           else site_patch_iia(model, task, site, single, engine=engine, width=width)),
        "dormant_fraction": float("nan"), "iia_rowspace": float("nan"),
    }
    W = reader_weight(model, site) if rowspace else None
    if W is not None:
        U = orthonormal_basis(patch_matrix(result.interventions, result.coords, width))
        dormant, Q = rowspace_split(U, W)
        out["dormant_fraction"] = dormant
        out["iia_rowspace"] = (out["iia_joint_null"] if Q.shape[1] == 0 else
                               _projection_iia(model, task, site, Q, single, engine))
    return out


def site_patch_iia(model, task, site, single, *, engine: str = "auto", width: int | None = None) -> float:
    """IIA of interchanging the whole site vector (``single``: a one-source batch)."""
    from roadinterp.interventions.masks import ProjectionInterchange
    from roadinterp.sites import site_width

    width = width or site_width(model, site)
    return _iia(model, task, site, [ProjectionInterchange.whole(width)], [[0]], True, single, engine)


def _projection_iia(model, task, site, Q, single, engine) -> float:
    from roadinterp.interventions.masks import ProjectionInterchange

    return _iia(model, task, site, [ProjectionInterchange(Q)], [[0]], True, single, engine)


def _shared(interventions) -> bool:
    return len({id(iv) for iv in interventions}) == 1
