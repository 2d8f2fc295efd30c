"""RoAd as pyvene interventions.

``RoadIntervention`` (sourceless, ReFT-style adaptation): ``h' = R h`` on a site,
where R is a RoAd map restricted to a *subspace* (a set of 2D blocks; other
blocks are the identity). pyvene's per-example ``subspaces`` argument routes each
example to its own block set, vectorised into one ``[batch, d]`` mask.

``RoadInterchange`` (distributed interchange intervention in a rotated basis):

    DII(b, s) = b + R^-1 M R (s - b)

``M`` keeps the rotated coordinates that a causal variable owns. If a variable
owned *both* axes of a 2D block, ``R^-1 M R = M`` there and the angle would have
no effect, so variables are assigned one axis per pair (see
:func:`assign_axes`). Family ``road`` uses one RoAd layer, ``butterfly`` a product
of layers with strides 1, 2, ..., d/2 (widest next to M). With all angles zero
both reduce to pyvene's ``VanillaIntervention`` on the same coordinates.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from roadinterp import io
from roadinterp._pyvene import pv
from roadinterp.errors import ConfigError, FileFormatError, OverlapError, ShapeError
from roadinterp.road import rotation as rot
from roadinterp.road.butterfly import apply_layers, butterfly_strides, layer_coefficients


# ------------------------------------------------------------------ helpers
def subspace_mask(subspaces, batch: int, width: int, device=None) -> torch.Tensor | None:
    """pyvene ``subspaces`` (per example: a list of indices) -> bool ``[batch, width]``.

    One scatter for the whole batch; ragged lists are flattened first. ``None``
    stays ``None`` (meaning "everything").
    """
    if subspaces is None:
        return None
    if isinstance(subspaces, torch.Tensor):
        idx = subspaces.long().to(device)
        if idx.dim() == 1:
            idx = idx.unsqueeze(0).expand(batch, -1)
        mask = torch.zeros(batch, width, dtype=torch.bool, device=device)
        return mask.scatter_(1, idx, True)
    if len(subspaces) != batch:
        raise ConfigError(f"subspaces has {len(subspaces)} rows but the batch has {batch} examples")
    rows, cols = [], []
    for i, s in enumerate(subspaces):
        s = list(s)
        rows.extend([i] * len(s))
        cols.extend(s)
    mask = torch.zeros(batch, width, dtype=torch.bool, device=device)
    if cols:
        c = torch.tensor(cols, device=device)
        if c.min() < 0 or c.max() >= width:
            raise ConfigError(f"subspace index out of range 0..{width - 1}: {c.min().item()}..{c.max().item()}")
        mask[torch.tensor(rows, device=device), c] = True
    return mask


def assign_axes(dim: int, sizes: Sequence[int], group_size: int | None = None) -> list[list[int]]:
    """Rotated coordinates owned by each causal variable (one axis per pair).

    First axes of pairs (j in the first half of each group) are handed out in block
    order, then second axes. With ``group_size == dim`` (the default) this is the
    contiguous assignment ``[0, k1), [k1, k1 + k2), ...``, which is also what the
    butterfly's widest-stride layer pairs up. A single variable never receives both
    axes of a pair unless it asks for more than ``dim/2`` coordinates.
    """
    g = dim if group_size is None else group_size
    rot.check_layout(dim, g)
    sizes = [int(s) for s in sizes]
    if any(s < 1 for s in sizes):
        raise ConfigError(f"every variable needs a size >= 1, got sizes {sizes}")
    if sum(sizes) > dim:
        raise ConfigError(f"sizes {sizes} add up to {sum(sizes)} but the site is only {dim} wide")
    blocks = rot.block_elements(dim, g)  # [d/2, 2]
    order = torch.cat([blocks[:, 0], blocks[:, 1]]).tolist()
    out, start = [], 0
    for s in sizes:
        out.append(sorted(order[start : start + s]))
        start += s
    return out


def check_assignment(dim: int, coords: Sequence[Sequence[int]], group_size: int) -> None:
    """Refuse overlapping variables and variables that own both axes of a block."""
    seen: dict[int, int] = {}
    partner = rot.pair_index(dim, group_size).tolist()
    for v, cs in enumerate(coords):
        cs = list(cs)
        for c in cs:
            if not 0 <= c < dim:
                raise ConfigError(f"variable {v}: coordinate {c} is out of range 0..{dim - 1}")
            if c in seen:
                raise OverlapError(
                    f"variables {seen[c]} and {v} both own rotated coordinate {c}; "
                    "give each variable its own coordinates"
                )
            seen[c] = v
        both = sorted(c for c in cs if partner[c] in set(cs) and c < partner[c])
        if both:
            c = both[0]
            raise ConfigError(
                f"variable {v} owns both axes of the 2D block ({c}, {partner[c]}): there R^-1 M R = M "
                "and the rotation cancels, so nothing is learned; assign one axis per pair "
                "(roadinterp.interventions.assign_axes does this)"
            )


DENSE_MAX_DIM = 128  # widths up to this apply R^-1 M R through small matrices (RoadInterchange.factors)


def uniform_mask(subspaces, n: int, d: int, device=None) -> torch.Tensor | None:
    """Like :func:`subspace_mask`, but ``[1, d]`` when every row lists the same coordinates.

    The DII runners pass one list object repeated for every row (``list.count``
    compares by identity first, in C); converting n copies of it to a tensor costs
    more than the whole interchange at small widths.
    """
    if isinstance(subspaces, list) and subspaces and subspaces.count(subspaces[0]) == len(subspaces):
        if len(subspaces) != n:
            raise ConfigError(f"subspaces has {len(subspaces)} rows but the batch has {n} examples")
        return subspace_mask([subspaces[0]], 1, d, device)
    return subspace_mask(subspaces, n, d, device)


# ------------------------------------------------------------ interventions
class RoadIntervention(pv.SourcelessIntervention, pv.TrainableIntervention, pv.DistributedRepresentationIntervention):
    """Sourceless, trainable ``h' = R h`` on a subspace of 2D blocks.

    ``subspaces`` (per example, block indices) restricts each example to its own
    blocks, e.g. to route examples of task A to A's blocks during joint training.
    """

    def __init__(
        self, embed_dim: int, *, variant: str = "road_1", group_size: int | None = None,
        blocks: Sequence[int] | None = None, init: str = "identity", seed: int | None = None, **kwargs,
    ) -> None:
        kwargs.setdefault("keep_last_dim", True)  # [batch, units, d], not units flattened into d
        super().__init__(embed_dim=embed_dim, **kwargs)
        g = group_size or rot.largest_group_size(embed_dim)
        from roadinterp.road.module import RoadRotation

        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.rotation = RoadRotation(embed_dim, variant, g, blocks=blocks, init=init, generator=gen)

    @property
    def spec(self):
        return self.rotation.spec

    def forward(self, base, source=None, subspaces=None, **kwargs):
        d = self.rotation.dim
        if base.shape[-1] != d:
            raise ShapeError(f"RoadIntervention is {d} wide but the site is {base.shape[-1]} wide")
        block_mask = subspace_mask(subspaces, base.shape[0], d // 2, base.device)
        element_mask = None
        if block_mask is not None:
            eb = rot.element_block(d, self.rotation.group_size, base.device)
            element_mask = block_mask[:, eb]  # [batch, d]
        return self.rotation(base, element_mask)

    def __str__(self) -> str:
        return f"RoadIntervention({self.rotation.extra_repr()})"


@io.register_kind
class RoadInterchange(pv.TrainableIntervention, pv.DistributedRepresentationIntervention):
    """DII in a RoAd (``road``) or RoAd-butterfly (``butterfly``) rotated basis, for K candidates.

    ``subspaces`` per example are the *rotated coordinates* to take from the
    source (use :func:`assign_axes`). Alpha is frozen at 1 by default: for DII
    only the basis matters, and road_1's alpha cancels in ``R^-1 M R`` anyway.

    **Candidates.** ``n_candidates=K > 1`` holds K independent bases in one module
    (``theta`` ``[K, L, n_params]`` instead of ``[L, n_params]``): the seeds of a search
    cell trained in one shared step (:mod:`roadinterp.dii.batched`). Row ``r`` of a batch
    uses candidate ``rows[r]``, set with ``with iv.rows(ids):`` (or :meth:`blocks` for the
    trainer's equal contiguous blocks) around the forward; the maths is the same per
    candidate. :meth:`stack` builds one from K single interchanges, :meth:`candidate`
    gets one back. ``strides`` sets the layer strides directly (what :meth:`stack`,
    :meth:`candidate` and loading need; ``family``/``depth``/``n_layers`` derive them otherwise).
    """

    def __init__(
        self, embed_dim: int, *, family: str = "road", variant: str = "road_1",
        group_size: int | None = None, n_layers: int | None = None, depth: int = 1,
        strides: Sequence[int] | None = None, n_candidates: int = 1,
        init: str = "random", seed: int | None = None, train_alpha: bool = False, **kwargs,
    ) -> None:
        kwargs.setdefault("keep_last_dim", True)
        super().__init__(embed_dim=embed_dim, **kwargs)
        if family not in ("road", "butterfly"):
            raise ConfigError(f"RoadInterchange family must be 'road' or 'butterfly', got {family!r}")
        if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 1:
            raise ConfigError(f"n_candidates must be >= 1, got {n_candidates!r}")
        self.family, self.variant, self.dim, self.n_candidates = family, variant, embed_dim, n_candidates
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        if strides is not None:
            self.strides = [int(s) for s in strides]
        elif family == "road":
            self.strides = [(group_size or embed_dim) // 2]
        else:
            if group_size is not None:
                raise ConfigError("butterfly sets its own group sizes (strides); do not pass group_size")
            self.strides = butterfly_strides(embed_dim, n_layers, depth)
        if not self.strides:
            raise ConfigError("RoadInterchange needs at least one layer stride")
        for s in self.strides:
            rot.check_layout(embed_dim, 2 * s, variant)
        draws = [rot.init_params(embed_dim, variant, init=init, generator=gen)
                 for _ in range(n_candidates) for _ in self.strides]
        lead = (n_candidates, len(self.strides)) if n_candidates > 1 else (len(self.strides),)
        thetas, alphas = (torch.stack(t).reshape(*lead, -1) for t in zip(*draws))
        self.theta = nn.Parameter(thetas)  # [L, n_params] or [K, L, n_params] fp32
        self.alpha = nn.Parameter(alphas, requires_grad=train_alpha)  # like theta
        self._rows: torch.Tensor | None = None  # candidate of every row (K > 1)
        self._blocks: tuple[int, int] | None = None  # (K, B) when rows are equal contiguous blocks
        self._block_rows: torch.Tensor | None = None  # cached arange(K).repeat_interleave(B)

    @property
    def group_size(self) -> int:
        """Pair layout of the layer next to the mask (the one axes are assigned in)."""
        return 2 * self.strides[-1]

    @property
    def _lead(self) -> tuple[int, ...]:
        """The candidate axis: ``()`` for one candidate, ``(K,)`` for several."""
        return (self.n_candidates,) if self.n_candidates > 1 else ()

    # ---------------------------------------------------------------- candidates
    @classmethod
    def stack(cls, ivs: Sequence[RoadInterchange]) -> RoadInterchange:
        """K single interchanges as one with K candidates (copies of their angles)."""
        ivs = list(ivs)
        if not ivs:
            raise ConfigError("stack needs at least one RoadInterchange")
        first = ivs[0]
        for iv in ivs:
            if iv.n_candidates != 1 or (iv.dim, iv.strides, iv.variant) != (first.dim, first.strides, first.variant):
                raise ConfigError(
                    f"candidates must be single interchanges that share width, strides and variant to be "
                    f"batched: {iv} vs {first}"
                )
        out = cls(first.dim, family=first.family, variant=first.variant, strides=first.strides,
                  n_candidates=len(ivs), init="identity", train_alpha=first.alpha.requires_grad)
        with torch.no_grad():
            out.theta.copy_(torch.stack([iv.theta.detach() for iv in ivs]).reshape(out.theta.shape))
            out.alpha.copy_(torch.stack([iv.alpha.detach() for iv in ivs]).reshape(out.alpha.shape))
        return out

    def candidate(self, k: int) -> RoadInterchange:
        """Candidate ``k`` as a single interchange (a copy of its angles)."""
        one = RoadInterchange(self.dim, family=self.family, variant=self.variant, strides=self.strides,
                              init="identity", train_alpha=self.alpha.requires_grad)
        theta, alpha = (self.theta[k], self.alpha[k]) if self._lead else (self.theta, self.alpha)
        with torch.no_grad():
            one.theta = nn.Parameter(theta.detach().clone())
            one.alpha = nn.Parameter(alpha.detach().clone(), requires_grad=self.alpha.requires_grad)
        return one

    def set_rows(self, rows: torch.Tensor | Sequence[int] | None) -> None:
        """Candidate index of every row of the next forwards (``None`` clears).

        When the rows come in equal contiguous blocks (``0,0,..,1,1,..``: what the
        trainer builds) the forward broadcasts ``[K, 1, d]`` coefficients over a
        ``[K, B, ...]`` view instead of gathering ``[K*B, d]``: same numbers, no copy.
        """
        self._rows, self._blocks = None, None
        if rows is None:
            return
        r = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        K = self.n_candidates
        if r.numel() and (r.min() < 0 or r.max() >= K):
            raise ConfigError(f"candidate ids must be in 0..{K - 1}, got {r.min()}..{r.max()}")
        self._rows = r
        if r.numel() and r.numel() % K == 0:
            B = r.numel() // K
            if torch.equal(r, torch.arange(K).repeat_interleave(B)):
                self._blocks = (K, B)

    @contextlib.contextmanager
    def rows(self, rows) -> Iterator[RoadInterchange]:
        """``with iv.rows(ids): pvm(...)`` -- routing is cleared afterwards, even on error."""
        self.set_rows(rows)
        try:
            yield self
        finally:
            self._rows, self._blocks = None, None

    @contextlib.contextmanager
    def blocks(self, per_candidate: int) -> Iterator[RoadInterchange]:
        """Like :meth:`rows` for ``per_candidate`` rows of candidate 0, then of 1, ... (no checks needed)."""
        K = self.n_candidates
        if self._block_rows is None or self._block_rows.numel() != K * per_candidate:
            self._block_rows = torch.arange(K).repeat_interleave(per_candidate)
        self._rows, self._blocks = self._block_rows, (K, per_candidate)
        try:
            yield self
        finally:
            self._rows, self._blocks = None, None

    # ---------------------------------------------------------------- maths
    def _table(self, inverse: bool = False) -> tuple[torch.Tensor, ...]:
        """Every layer's coefficients (and the inverse's): :func:`layer_coefficients`.  # [*K, L, d] each"""
        return layer_coefficients(self.theta, self.alpha, self.strides, self.variant, inverse=inverse)

    def _layers(self, x: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, *, reverse: bool = False):
        """Every layer's ``x * c1 + rotate_half(x) * c2`` in stride order; layers sit after the K axis.  # like x"""
        return apply_layers(x, c1, c2, self.strides, reverse=reverse, layer_dim=len(self._lead))

    def rotate(self, h: torch.Tensor) -> torch.Tensor:
        """``R h`` (fp32; one candidate)."""
        if self._lead:
            raise ConfigError(f"rotate needs one candidate; this interchange holds {self.n_candidates}: "
                              "use candidate(k)")
        return self._layers(h.float(), *self._table())

    def _routing(self, n: int) -> torch.Tensor | None:
        """The candidate of each of ``n`` rows (``None``: one candidate, no routing needed)."""
        rows = self._rows
        if rows is None and self._lead:
            raise ConfigError(
                f"RoadInterchange holds {self.n_candidates} candidates: wrap the forward in "
                "`with iv.rows(candidate_ids):` to say which candidate each row uses"
            )
        if rows is not None and rows.shape[0] != n:
            raise ShapeError(f"{rows.shape[0]} candidate ids were set but the batch has {n} rows")
        return rows

    def _dense(self, mask: torch.Tensor | None) -> bool:
        """Narrow site, the same coordinates on every row, rows in candidate blocks: the low-rank maps."""
        return (self._rows is None or self._blocks is not None) and mask is not None and mask.shape[0] == 1 \
            and self.dim <= DENSE_MAX_DIM

    def forward(self, base, source, subspaces=None, **kwargs):
        n, d = base.shape[0], self.dim
        if base.shape[-1] != d:
            raise ShapeError(f"RoadInterchange is {d} wide but the site is {base.shape[-1]} wide")
        rows = self._routing(n)
        mask = uniform_mask(subspaces, n, d, base.device)
        if mask is None:
            raise ConfigError("RoadInterchange needs subspaces: the rotated coordinates of each variable")
        if self._dense(mask):
            return self.mix(torch.cat([base, source], -1), [subspaces])
        L = len(self.strides)
        table = torch.stack(self._table(inverse=True), -3).reshape(-1, 4, L, d)  # [K, 4, L, d]
        mid = [1] * (base.dim() - 2)  # unit/position dims between rows and d
        if rows is None or self._blocks is not None:
            # one candidate, or rows in equal contiguous blocks: view the batch as [K, B, ...]
            K, B = self._blocks or (1, n)
            lead = (K, B)
            table = table.reshape(K, 4, L, 1, *mid, d)
        else:
            lead = (n,)
            table = table[rows.to(base.device)].reshape(n, 4, L, *mid, d)  # the one gather
        diff = (source - base).float().reshape(*lead, *base.shape[1:])  # [K, B, units, d] or [n, units, d]
        m = mask.to(diff.dtype)
        m = m.reshape(1, 1, *mid, d) if m.shape[0] == 1 else m.reshape(*lead, *mid, d)
        c1, c2, i1, i2 = table.unbind(1)  # each [K or n, L, (1,) ..., d]
        layers = functools.partial(apply_layers, strides=self.strides, layer_dim=1)
        delta = layers(layers(diff, c1, c2) * m, i1, i2, reverse=True)  # R^-1 M R (s - b)
        return (base.float() + delta.reshape(base.shape)).to(base.dtype)

    def interchange(self, base, sources, subspaces):
        """Every variable's DII in one call: ``b + R^-1 sum_v M_v R (s_v - b)``.  # like base

        Equal to applying :meth:`forward` once per variable in turn (what pyvene's
        hooks do) because variables own disjoint rotated coordinates
        (``M_w R R^-1 M_v = M_w M_v = 0``). ``subspaces`` holds each variable's pyvene subspaces.
        """
        return self.mix(torch.cat([base, *sources], -1), subspaces)

    def mix(self, stacked, subspaces):
        """:meth:`interchange` from ``[b | s_1 | ... | s_V]`` stacked on the last dim.  # [..., d]

        Narrow sites (``d <= DENSE_MAX_DIM``) with the same coordinates on every row use
        the low-rank form of each variable's map, ``R^-1 M_v R = U_v W_v`` (``U_v`` the
        columns of R^-1 and ``W_v`` the rows of R that ``M_v`` keeps, see :meth:`factors`):
        ``b + sum_v ((s_v - b) U_v) W_v``, two thin matmuls per call (per candidate: bmms)
        instead of rotating every example forth and back once per variable. Other sites
        apply :meth:`forward` once per variable.
        """
        n, d, V = stacked.shape[0], self.dim, len(subspaces)
        if stacked.shape[-1] != (1 + V) * d:
            raise ShapeError(f"stacked states are {stacked.shape[-1]} wide; {1 + V} x {d} expected")
        masks = [uniform_mask(sp, n, d, stacked.device) for sp in subspaces]
        if not all(self._dense(m) for m in masks):
            base, *sources = stacked.split(d, -1)
            for s, sp in zip(sources, subspaces):
                base = self.forward(base, s, sp)
            return base
        self._routing(n)
        x = stacked.float()
        if self._lead:
            x = x.reshape(self.n_candidates, -1, (1 + V) * d)  # [K, B * units, (1 + V) d]
        base, *sources = x.split(d, -1)
        Us, W = self.factors([m[0] for m in masks])
        z = torch.cat([(s - base) @ U for s, U in zip(sources, Us)], -1)  # rotated changes  [*K, ..., k]
        return (base + z @ W).reshape(*stacked.shape[:-1], d).to(stacked.dtype)

    def factors(self, masks: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``R^-1 M_v R`` in low-rank row-vector form: ``x @ U_v @ W_v``.  # [*K, d, k_v] each, [*K, sum k_v, d]

        ``U_v = Rt[:, s_v]`` (``x @ U_v`` are the kept rotated coordinates of x) and
        ``W`` stacks every variable's ``Rit[s_v]``. For a pure rotation these are the rows
        ``A_v`` of R that ``M_v`` keeps (``U_v = A_v^T``, ``W_v = A_v``), and since they are
        ``R^-1 e_s`` (``R^-1 = R^T``), R is applied to only as many basis vectors as there are
        rotated coordinates, not to all d.
        """
        sels = [m.nonzero().flatten() for m in masks]
        if not self.orthogonal():
            Rt, Rit = self.dense_maps()
            return [Rt[..., s] for s in sels], Rit[..., torch.cat(sels), :]
        lead, L, d = self._lead, len(self.strides), self.dim
        c1, c2 = (c.reshape(*lead, L, *([1] if lead else []), d) for c in self._table())
        A = torch.eye(d, device=self.theta.device)[torch.cat(sels)].expand(*lead, -1, d)  # e_s rows  [*K, k, d]
        A = self._layers(A, c1, -c2, reverse=True)  # a rotation's inverse: the same angles negated (R^T)
        return [a.transpose(-1, -2) for a in A.split([len(x) for x in sels], -2)], A

    def projectors(self, masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Row-vector form of ``R^-1 M_v R`` for each mask (``x @ P_v``), from :meth:`factors`.  # [*K, d, d] each"""
        Us, W = self.factors(masks)
        return [U @ w for U, w in zip(Us, W.split([U.shape[-1] for U in Us], -2))]

    def orthogonal(self) -> bool:
        """True when R is a pure rotation (road_1, every scale exactly 1): then R^-1 = R^T."""
        return self.variant == "road_1" and not self.alpha.requires_grad and bool((self.alpha == 1).all())

    def dense_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Rt, Rit)`` with ``x @ Rt = R x`` and ``x @ Rit = R^-1 x`` for row vectors.  # [*K, d, d] each

        Built by running the element-wise maps on the identity's rows. :meth:`factors`
        slices them when R is not a pure rotation (for a rotation it needs only the kept
        rows of R); also the reference for tests and figures.
        """
        orthogonal = self.orthogonal()
        lead, L, d = self._lead, len(self.strides), self.dim
        c1, c2, *inv = (c.reshape(*lead, L, *([1] if lead else []), d) for c in self._table(inverse=not orthogonal))
        eye = torch.eye(d, device=self.theta.device).expand(*lead, d, d)
        Rt = self._layers(eye, c1, c2)
        Rit = Rt.transpose(-1, -2) if orthogonal else self._layers(eye, *inv, reverse=True)
        return Rt, Rit

    def matrix(self) -> torch.Tensor:
        """Dense ``[d, d]`` R (for tests and figures)."""
        return self.rotate(torch.eye(self.dim)).T

    # ---------------------------------------------------------------- io
    KIND = "road_interchange"

    def to_state(self):
        if self._lead:
            raise ConfigError(f"save one candidate at a time (candidate(k)); this interchange holds "
                              f"{self.n_candidates}")
        config = {"dim": self.dim, "family": self.family, "variant": self.variant, "strides": self.strides}
        return config, {"theta": self.theta.detach(), "alpha": self.alpha.detach()}

    @classmethod
    def from_state(cls, config, tensors):
        where = "road_interchange config"
        dim = io.expect_width(config, "dim", where)
        strides = io.expect(config, "strides", list, where)
        if not strides or not all(isinstance(s, int) and s > 0 and dim % (2 * s) == 0 for s in strides):
            raise FileFormatError(f"{where}: 'strides' must be positive ints s with 2s dividing {dim}, got {strides}")
        variant = io.expect(config, "variant", str, where)
        if variant in rot.VARIANTS:  # sizes against the file's tensors before anything is allocated
            for name in ("theta", "alpha"):
                io.expect_shape(tensors, name, (len(strides), rot.n_params(dim, variant)), where)
        new = cls(dim, family=io.expect(config, "family", str, where), variant=variant, strides=strides,
                  init="identity")
        for name in ("theta", "alpha"):
            t = tensors.get(name)
            if t is None:
                raise FileFormatError(f"weights have no tensor {name!r}")
            want = (len(strides), rot.n_params(dim, new.variant))
            if tuple(t.shape) != want:
                raise ShapeError(f"{name} has shape {tuple(t.shape)} but this interchange needs {want}")
            setattr(new, name, nn.Parameter(t.clone(), requires_grad=name == "theta"))
        return new

    def __str__(self) -> str:
        k = f", candidates={self.n_candidates}" if self._lead else ""
        return f"RoadInterchange(family={self.family}, dim={self.dim}{k}, strides={self.strides})"
