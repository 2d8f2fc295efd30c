"""LoReFT-style low-rank interventions (pyreft's baseline for composition).

LoReFT (Wu et al., 2024) edits a hidden state ``h`` of width ``d`` inside a rank-``r``
subspace spanned by the rows of ``R`` (``[r, d]``, orthonormal rows):

    h' = h + R^T (W h + b - R h)

i.e. it replaces the subspace coordinates ``R h`` by learned ones ``W h + b``. As in
pyreft, ``R`` is kept orthonormal with ``torch.nn.utils.parametrizations.orthogonal``.

*Composition, the pyreft way*: give each task its own rows (the rank is split between
the tasks) and stack them, ``R = [R_A; R_B]``, ``W = [W_A; W_B]``, ``b = [b_A; b_B]``
(:func:`concat_loreft`). When A and B were trained *separately*, their rows are not
orthogonal to each other, so the stacked edit is not the sum of the two edits; the
RoAd paper reports that this baseline fails to compose, unlike RoAd on disjoint blocks.
Per-example ``subspaces`` (row indices) route an example to a subset of the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from roadinterp._pyvene import pv
from roadinterp._scoped import seeded
from roadinterp.errors import ConfigError, ShapeError
from roadinterp.sites import module_key


class LoreftIntervention(pv.SourcelessIntervention, pv.TrainableIntervention, pv.DistributedRepresentationIntervention):
    """Sourceless ``h + R^T (W h + b - R h)`` with ``R: [rank, d]``.

    ``orthogonal=True`` (training) parametrises ``R`` with orthonormal rows; a composed
    intervention (:func:`concat_loreft`) holds the stacked rows as a plain tensor.
    """

    def __init__(
        self, embed_dim: int, *, rank: int = 4, orthogonal: bool = True, seed: int | None = None, **kwargs,
    ) -> None:
        kwargs.setdefault("keep_last_dim", True)  # [batch, units, d]
        super().__init__(embed_dim=embed_dim, **kwargs)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= embed_dim:
            raise ConfigError(f"LoReFT rank must be an int in 1..{embed_dim}, got {rank!r}")
        self.dim, self.rank, self.orthogonal = embed_dim, rank, orthogonal
        with seeded(seed):  # nn.Linear / orthogonal init draw from the global generator
            rotate = nn.Linear(embed_dim, rank, bias=False)  # weight [r, d]
            if orthogonal:
                rotate = nn.utils.parametrizations.orthogonal(rotate)
            else:
                rotate.weight.requires_grad_(False)
            self.rotate_layer = rotate
            self.learned_source = nn.Linear(embed_dim, rank)  # W [r, d], b [r]

    @property
    def R(self) -> torch.Tensor:  # [r, d]
        return self.rotate_layer.weight

    def forward(self, base, source=None, subspaces=None, **kwargs):
        if base.shape[-1] != self.dim:
            raise ShapeError(f"LoreftIntervention is {self.dim} wide but the site is {base.shape[-1]} wide")
        R = self.R.to(base.dtype)  # [r, d]
        x = base.to(R.dtype)
        delta = self.learned_source(x) - x @ R.T  # [batch, units, r]
        if subspaces is not None:  # per-example rows
            from roadinterp.interventions.road import subspace_mask

            m = subspace_mask(subspaces, base.shape[0], self.rank, base.device).to(delta.dtype)
            delta = delta * m.reshape(base.shape[0], *([1] * (base.dim() - 2)), self.rank)
        return (x + delta @ R).to(base.dtype)

    def __str__(self) -> str:
        return f"LoreftIntervention(dim={self.dim}, rank={self.rank}, orthogonal={self.orthogonal})"


class LoreftAdapter(nn.Module):
    """One :class:`LoreftIntervention` per hidden-state site (key ``Site.key()``)."""

    def __init__(self, targets: Mapping[str, int], *, rank: int = 4, seed: int | None = None,
                 meta: Mapping | None = None, _orthogonal: bool = True) -> None:
        super().__init__()
        if not targets:
            raise ConfigError("a LoReFT adapter needs at least one target")
        self.targets, self.rank, self.meta = dict(targets), rank, dict(meta or {})
        with seeded(seed):  # one stream for every target's init, in order
            self.ivs = nn.ModuleDict({
                module_key(k): LoreftIntervention(d, rank=rank, orthogonal=_orthogonal) for k, d in self.targets.items()
            })

    def intervention(self, target: str) -> LoreftIntervention:
        if target not in self.targets:
            raise ConfigError(f"adapter has no target {target!r}; targets: {', '.join(self.targets)}")
        return self.ivs[module_key(target)]

    def items(self):
        return [(k, self.intervention(k)) for k in self.targets]


@torch.no_grad()
def concat_interventions(ivs: Sequence[LoreftIntervention]) -> LoreftIntervention:
    """Stack the rows of several LoReFT interventions: rank = sum of ranks."""
    dims = {iv.dim for iv in ivs}
    if len(dims) != 1:
        raise ShapeError(f"LoReFT interventions to stack must share a width, got widths {sorted(dims)}")
    out = LoreftIntervention(dims.pop(), rank=sum(iv.rank for iv in ivs), orthogonal=False)
    out.rotate_layer.weight.copy_(torch.cat([iv.R for iv in ivs]))
    out.learned_source.weight.copy_(torch.cat([iv.learned_source.weight for iv in ivs]))
    out.learned_source.bias.copy_(torch.cat([iv.learned_source.bias for iv in ivs]))
    return out.eval()


def concat_loreft(adapters: Mapping[str, LoreftAdapter]) -> LoreftAdapter:
    """Compose LoReFT adapters the pyreft way: per site, stack the tasks' rows.

    ``meta["owners"]`` maps each adapter name to its row indices in the result.
    """
    names = list(adapters)
    if not names:
        raise ConfigError("concat_loreft needs at least one adapter")
    targets = adapters[names[0]].targets
    for n in names[1:]:
        if adapters[n].targets != targets:
            raise ShapeError(f"LoReFT adapters {names[0]!r} and {n!r} act on different sites/widths: "
                             f"{targets} vs {adapters[n].targets}")
    owners, start = {}, 0
    for n in names:
        owners[n] = list(range(start, start + adapters[n].rank))
        start += adapters[n].rank
    out = LoreftAdapter(targets, rank=start, meta={"owners": owners}, _orthogonal=False)
    for key in targets:
        out.ivs[module_key(key)] = concat_interventions([adapters[n].intervention(key) for n in names])
    return out
