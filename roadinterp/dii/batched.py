"""Train many DII candidates in one batched forward (seeds of a search cell).

An alignment search trains the same cell several times with different seeds. For
small models almost all of a DII step is fixed cost (pyvene's hook machinery,
Python, optimizer bookkeeping), not arithmetic, so K seeds trained one after the
other cost ~K times one seed. Here the K candidates share one frozen model and one
forward: the minibatch is the concatenation of each candidate's *own* minibatch
(exactly the rows ``train_dii`` would draw for that seed), and a
:class:`BatchedRoadInterchange` holds every candidate's angles ``[K, L, n_params]``
and picks each row's candidate from a per-row index (one gather, no loop over
candidates). The loss is the sum of the candidates' mean cross-entropies, so each
candidate's gradient only sees its own rows, and because Adam is element-wise the
updates stay independent: every candidate ends where ``train_dii`` would have
(up to float summation order). Families: ``road``, ``butterfly`` (angles batched)
and ``neuron-fixed`` (no parameters, only the evaluation is batched); other families fall
back to one ``train_dii`` per config.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict

import torch
from torch import nn

from roadinterp._pyvene import pv
from roadinterp.dii.replay import make_runner
from roadinterp.dii.train import DIIConfig, TrainResult, cell_variables, check_cell, make_data, train_dii
from roadinterp.errors import ConfigError, ShapeError
from roadinterp.finite import check_step
from roadinterp.interventions import get_family
from roadinterp.interventions.road import DENSE_MAX_DIM, RoadInterchange, uniform_mask
from roadinterp.road import rotation as rot
from roadinterp.road.butterfly import apply_layers, layer_coefficients
from roadinterp.sites import Site

BATCHED_FAMILIES: tuple[str, ...] = ("neuron-fixed", "road", "butterfly")
# fields that may differ between candidates of one batch (family only among road-like
# families whose interventions have the same strides, see _check_batchable)
_FREE_FIELDS = {"seed", "family", "depth"}


# ------------------------------------------------------------------ intervention
class BatchedRoadInterchange(pv.TrainableIntervention, pv.DistributedRepresentationIntervention):
    """K ``RoadInterchange`` candidates in one intervention: ``theta`` is ``[K, L, n_params]``.

    Row ``r`` of the batch uses candidate ``rows[r]`` (set with :meth:`rows` around
    the forward): ``DII(b, s) = b + R_k^-1 M R_k (s - b)``, the same maths as
    ``RoadInterchange``. Build it from existing candidates with
    :meth:`from_interchanges`; get candidate ``k`` back with :meth:`candidate`.
    """

    def __init__(
        self, embed_dim: int, n_candidates: int, *, strides: Sequence[int], variant: str = "road_1",
        family: str = "butterfly", train_alpha: bool = False, **kwargs,
    ) -> None:
        kwargs.setdefault("keep_last_dim", True)
        super().__init__(embed_dim=embed_dim, **kwargs)
        if n_candidates < 1:
            raise ConfigError(f"n_candidates must be >= 1, got {n_candidates}")
        self.dim, self.n_candidates, self.variant, self.family = embed_dim, n_candidates, variant, family
        self.strides = list(strides)
        for s in self.strides:
            rot.check_layout(embed_dim, 2 * s, variant)
        n = rot.n_params(embed_dim, variant)
        L = len(self.strides)
        self.theta = nn.Parameter(torch.zeros(n_candidates, L, n))  # [K, L, n_params] fp32
        self.alpha = nn.Parameter(torch.ones(n_candidates, L, n), requires_grad=train_alpha)
        self._rows: torch.Tensor | None = None
        self._blocks: tuple[int, int] | None = None  # (K, B) when rows are equal contiguous blocks
        self._block_rows: torch.Tensor | None = None  # cached arange(K).repeat_interleave(B)

    @classmethod
    def from_interchanges(cls, ivs: Sequence[RoadInterchange]) -> BatchedRoadInterchange:
        """Stack candidates (copies of their angles; the originals are not touched)."""
        ivs = list(ivs)
        if not ivs:
            raise ConfigError("from_interchanges needs at least one RoadInterchange")
        first = ivs[0]
        for iv in ivs[1:]:
            if (iv.dim, iv.strides, iv.variant) != (first.dim, first.strides, first.variant):
                raise ConfigError(
                    f"candidates must share width, strides and variant to be batched: "
                    f"{iv} vs {first}"
                )
        out = cls(first.dim, len(ivs), strides=first.strides, variant=first.variant, family=first.family,
                  train_alpha=first.alpha.requires_grad)
        with torch.no_grad():
            out.theta.copy_(torch.stack([iv.theta.detach() for iv in ivs]))
            out.alpha.copy_(torch.stack([iv.alpha.detach() for iv in ivs]))
        return out

    def candidate(self, k: int) -> RoadInterchange:
        """Candidate ``k`` as a standalone ``RoadInterchange`` (a copy of its angles)."""
        iv = RoadInterchange(self.dim, family=self.family, variant=self.variant, init="identity",
                             train_alpha=self.alpha.requires_grad, depth=1)
        # butterfly_strides cannot express every stride list (depth, n_layers): set them directly
        iv.strides = list(self.strides)
        with torch.no_grad():
            iv.theta = nn.Parameter(self.theta[k].detach().clone())
            iv.alpha = nn.Parameter(self.alpha[k].detach().clone(), requires_grad=self.alpha.requires_grad)
        return iv

    # ----- per-row routing
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
        if r.numel() and (r.min() < 0 or r.max() >= self.n_candidates):
            raise ConfigError(f"candidate ids must be in 0..{self.n_candidates - 1}, got {r.min()}..{r.max()}")
        self._rows = r
        K = self.n_candidates
        if r.numel() and r.numel() % K == 0:
            B = r.numel() // K
            if torch.equal(r, torch.arange(K).repeat_interleave(B)):
                self._blocks = (K, B)

    @contextlib.contextmanager
    def blocks(self, per_candidate: int) -> Iterator[BatchedRoadInterchange]:
        """Like :meth:`rows` for ``per_candidate`` rows of candidate 0, then of 1, ... (no checks needed)."""
        K = self.n_candidates
        if self._block_rows is None or self._block_rows.numel() != K * per_candidate:
            self._block_rows = torch.arange(K).repeat_interleave(per_candidate)
        self._rows, self._blocks = self._block_rows, (K, per_candidate)
        try:
            yield self
        finally:
            self._rows, self._blocks = None, None

    @contextlib.contextmanager
    def rows(self, rows) -> Iterator[BatchedRoadInterchange]:
        """``with iv.rows(ids): pvm(...)`` -- routing is cleared afterwards, even on error."""
        self.set_rows(rows)
        try:
            yield self
        finally:
            self._rows, self._blocks = None, None

    # ----- maths
    def _coef_table(self, inverse: bool = True) -> torch.Tensor:
        """Forward (and inverse) coefficients of every candidate and layer.  # [K, 4 or 2, L, d]"""
        return torch.stack(layer_coefficients(self.theta, self.alpha, self.strides, self.variant, inverse=inverse), 1)

    def forward(self, base, source, subspaces=None, **kwargs):
        n, d = base.shape[0], self.dim
        if base.shape[-1] != d:
            raise ConfigError(f"BatchedRoadInterchange is {d} wide but the site is {base.shape[-1]} wide")
        rows = self._rows
        if rows is None and self.n_candidates != 1:
            raise ConfigError(
                f"BatchedRoadInterchange holds {self.n_candidates} candidates: wrap the forward in "
                "`with iv.rows(candidate_ids):` to say which candidate each row uses"
            )
        if rows is not None and rows.shape[0] != n:
            raise ShapeError(f"{rows.shape[0]} candidate ids were set but the batch has {n} rows")
        mask = uniform_mask(subspaces, n, d, base.device)
        if mask is None:
            raise ConfigError("BatchedRoadInterchange needs subspaces: the rotated coordinates of each variable")
        if self._dense(rows, mask):
            return self.mix(torch.cat([base, source], -1), [subspaces])
        table = self._coef_table()  # [K, 4, L, d]
        mid = [1] * (base.dim() - 2)  # unit/position dims between rows and d
        if rows is None or self._blocks is not None:
            # rows in equal contiguous blocks: view the batch as [K, B, ...], broadcast [K, 1, ..., d]
            K, B = self._blocks or (1, n)
            lead = (K, B)
            table = table.reshape(K, 4, len(self.strides), 1, *mid, d)
        else:
            lead = (n,)
            table = table[rows.to(base.device)].reshape(n, 4, len(self.strides), *mid, d)  # the one gather
        diff = (source - base).float().reshape(*lead, *base.shape[1:])  # [K, B, units, d] or [n, units, d]
        m = mask.to(diff.dtype)
        m = m.reshape(1, 1, *mid, d) if m.shape[0] == 1 else m.reshape(*lead, *mid, d)
        delta = self._apply(diff, table, m)  # R^-1 M R (s - b)
        return (base.float() + delta.reshape(base.shape)).to(base.dtype)

    def _dense(self, rows, mask) -> bool:
        """Narrow site, same coordinates on every row, rows in candidate blocks: use dense maps."""
        return (rows is None or self._blocks is not None) and mask is not None and mask.shape[0] == 1 \
            and self.dim <= DENSE_MAX_DIM

    def orthogonal(self) -> bool:
        """True when every candidate's R is a pure rotation (road_1, scales exactly 1)."""
        return self.variant == "road_1" and not self.alpha.requires_grad and bool((self.alpha == 1).all())

    def dense_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per candidate ``(Rt, Rit)``: ``x @ Rt[k] = R_k x``, ``x @ Rit[k] = R_k^-1 x``.  # [K, d, d] each"""
        K, d, L = self.n_candidates, self.dim, len(self.strides)
        orthogonal = self.orthogonal()
        table = self._coef_table(inverse=not orthogonal)
        c1, c2, *inv = table.reshape(K, table.shape[1], L, 1, d).unbind(1)  # each [K, L, 1, d]
        eye = torch.eye(d, device=self.theta.device).expand(K, d, d)  # rows e_j per candidate
        Rt = self._layers(eye, c1, c2)
        if orthogonal:
            return Rt, Rt.transpose(1, 2)
        return Rt, self._layers(eye, *inv, reverse=True)

    def interchange(self, base, sources, subspaces):
        """Every variable's DII in one call (see ``RoadInterchange.interchange``).  # like base"""
        return self.mix(torch.cat([base, *sources], -1), subspaces)

    def mix(self, stacked, subspaces):
        """``RoadInterchange.mix`` per candidate: thin bmms with each candidate's low-rank factors.  # [..., d]"""
        n, d, V = stacked.shape[0], self.dim, len(subspaces)
        if stacked.shape[-1] != (1 + V) * d:
            raise ShapeError(f"stacked states are {stacked.shape[-1]} wide; {1 + V} x {d} expected")
        masks = [uniform_mask(sp, n, d, stacked.device) for sp in subspaces]
        if not all(self._dense(self._rows, m) for m in masks):
            base, *sources = stacked.split(d, -1)
            for s, sp in zip(sources, subspaces):
                base = self.forward(base, s, sp)
            return base
        if self._rows is None and self.n_candidates != 1:
            self.forward(*stacked.split(d, -1)[:2], subspaces[0])  # raises the routing error
        K = self.n_candidates if self._rows is not None else 1
        base, *sources = stacked.float().reshape(K, -1, (1 + V) * d).split(d, -1)  # [K, B * units, d] each
        Us, W = self.factors([m[0] for m in masks])
        z = torch.cat([torch.bmm(s - base, U) for s, U in zip(sources, Us)], -1)  # [K, B * units, k]
        out = base + torch.bmm(z, W)
        return out.reshape(*stacked.shape[:-1], d).to(stacked.dtype)

    def factors(self, masks: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per candidate ``RoadInterchange.factors``: ``x @ U_v[k] @ W_v[k]``.  # [K, d, k_v] each, [K, sum k_v, d]"""
        sels = [m.nonzero().flatten() for m in masks]
        if not self.orthogonal():
            Rt, Rit = self.dense_maps()
            return [Rt[:, :, s] for s in sels], Rit[:, torch.cat(sels)]
        K, d, L = self.n_candidates, self.dim, len(self.strides)
        c1, c2 = self._coef_table(inverse=False).reshape(K, 2, L, 1, d).unbind(1)  # each [K, L, 1, d]
        A = torch.eye(d, device=self.theta.device)[torch.cat(sels)].expand(K, -1, d)  # e_s rows  [K, k, d]
        A = self._layers(A, c1, -c2, reverse=True)  # R^-1 (angles negated) = R^T: rows of R
        return [a.transpose(1, 2) for a in A.split([len(x) for x in sels], 1)], A

    def projectors(self, masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per candidate ``P_v`` with ``x @ P_v[k] = R_k^-1 M_v R_k x`` (from :meth:`factors`).  # [K, d, d]"""
        Us, W = self.factors(masks)
        return [torch.bmm(U, w) for U, w in zip(Us, W.split([U.shape[2] for U in Us], 1))]

    def _apply(self, x: torch.Tensor, table: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``R^-1 M R x`` per candidate: ``table`` ``[K or n, 4, L, ..., d]`` broadcasts against x.  # like x"""
        c1, c2, i1, i2 = table.unbind(1)  # each [K or n, L, (1,) ..., d]
        return self._layers(self._layers(x, c1, c2) * m, i1, i2, reverse=True)

    def _layers(self, x: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, *, reverse: bool = False) -> torch.Tensor:
        """Every layer's ``x * c1 + rotate_half(x) * c2`` in stride order (``reverse``: last first).  # like x"""
        return apply_layers(x, c1, c2, self.strides, reverse=reverse, layer_dim=1)

    def __str__(self) -> str:
        return (f"BatchedRoadInterchange(family={self.family}, dim={self.dim}, candidates={self.n_candidates}, "
                f"strides={self.strides})")


def _route(iv, rows):
    return iv.rows(rows) if isinstance(iv, BatchedRoadInterchange) else contextlib.nullcontext()


@torch.no_grad()
def evaluate_iia_batched(runner, iv, task, handles: Sequence, labels: Sequence[torch.Tensor], sizes: Sequence[int], *,
                         batch_size: int = 1024, max_rows: int = 8192) -> list[float]:
    """IIA of candidate ``k`` on the first ``sizes[k]`` rows of ``handles[k]``, all candidates in the same forwards.

    ``runner``/``handles`` come from :func:`roadinterp.dii.replay.make_runner`. Each forward
    takes up to ``batch_size`` rows of every dataset (fewer when that would exceed
    ``max_rows`` in total).
    """
    K = len(handles)
    chunk = max(1, min(batch_size, max_rows // K))
    correct = [0] * K
    for start in range(0, max(sizes), chunk):
        idx = [torch.arange(start, min(start + chunk, n)) for n in sizes]
        keep = [k for k in range(K) if len(idx[k])]
        rows = torch.repeat_interleave(torch.tensor(keep), torch.tensor([len(idx[k]) for k in keep]))
        with _route(iv, rows):
            out = runner([(handles[k], idx[k]) for k in keep])
        y = torch.cat([labels[k][idx[k]] for k in keep])
        hit = (task.logits(out).argmax(-1) == y).long()
        per = torch.zeros(K, dtype=torch.long).index_add_(0, rows, hit)
        for k in keep:
            correct[k] += int(per[k])
    return [correct[k] / max(sizes[k], 1) for k in range(K)]


# ------------------------------------------------------------------ grouping
def supports_batched(family: str) -> bool:
    return family in BATCHED_FAMILIES


def _structure(config: DIIConfig, width: int, n_vars: int):
    """What must be equal for two configs to share one batch (None: not batchable)."""
    if not supports_batched(config.family):
        return None
    rest = {k: v for k, v in asdict(config).items() if k not in _FREE_FIELDS}
    if config.family == "neuron-fixed":
        return ("neuron-fixed", tuple(sorted(rest.items())))
    rest["lr"] = config.learning_rate
    return ("road", _strides(config.family, width, config.size, n_vars, config.variant, config.depth),
            tuple(sorted(rest.items())))


@functools.lru_cache(maxsize=256)
def _strides(family: str, width: int, size: int, n_vars: int, variant: str, depth: int) -> tuple[int, ...]:
    """The layer strides a family builds at this width (built once per distinct config)."""
    iv = get_family(family).build(width, [size] * n_vars, seed=0, variant=variant, depth=depth).interventions[0]
    return tuple(iv.strides)


def batch_groups(configs: Sequence[DIIConfig], width: int, n_vars: int) -> list[list[int]]:
    """Indices of ``configs`` grouped into batches ``train_dii_batched`` accepts, in order.

    Unbatchable configs (families other than neuron-fixed/road/butterfly) form groups of one.
    """
    groups: dict = {}
    out: list[list[int]] = []
    for i, c in enumerate(configs):
        key = _structure(c, width, n_vars)
        if key is None:
            out.append([i])
        elif key in groups:
            groups[key].append(i)
        else:
            groups[key] = [i]
            out.append(groups[key])
    return out


def _check_batchable(configs: Sequence[DIIConfig], width: int, n_vars: int) -> None:
    keys = {_structure(c, width, n_vars) for c in configs}
    if None in keys or len(keys) != 1:
        fams = sorted({c.family for c in configs})
        raise ConfigError(
            f"configs cannot share one batch (families {fams}): they may differ only in seed (and road/butterfly "
            f"with the same strides); families {', '.join(BATCHED_FAMILIES)} only. "
            "Use roadinterp.dii.batched.batch_groups to split them"
        )


# ------------------------------------------------------------------ training
def train_dii_batched(
    model, task, site: Site, configs: Sequence[DIIConfig], *, data: Sequence | None = None,
    fallback: bool = True,
) -> list[TrainResult]:
    """Train every config of ``configs`` in shared forwards; one TrainResult per config, in order.

    Equivalent to ``[train_dii(model, task, site, config=c) for c in configs]`` (same
    data, data order and initialisation per seed; IIA equal up to float summation
    order), but K candidates cost about one forward/backward per step. ``data``
    optionally gives ``(train, test)`` per config. Configs that cannot be batched
    together are grouped with :func:`batch_groups`; with ``fallback`` unbatchable
    families (das, lowrank, boundless, ...) run one ``train_dii`` each, otherwise
    they raise ConfigError. ``TrainResult.seconds`` is the group's wall time / K.
    """
    configs = [c if isinstance(c, DIIConfig) else DIIConfig(**c) for c in configs]
    if not configs:
        return []
    if data is not None and len(data) != len(configs):
        raise ConfigError(f"data has {len(data)} entries but there are {len(configs)} configs")
    width = check_cell(model, task, site, configs[0])
    n_vars = len(cell_variables(task, configs[0]))
    results: list[TrainResult | None] = [None] * len(configs)
    for group in batch_groups(configs, width, n_vars):
        cs = [configs[i] for i in group]
        ds = [data[i] for i in group] if data is not None else None
        if not supports_batched(cs[0].family):
            if not fallback:
                _check_batchable(cs, width, n_vars)
            out = [train_dii(model, task, site, config=cs[0], data=ds[0] if ds else None)]
        else:
            out = _train_group(model, task, site, cs, ds, width)
        for i, r in zip(group, out):
            results[i] = r
    return results  # type: ignore[return-value]


def _train_group(model, task, site: Site, configs: list[DIIConfig], data, width: int) -> list[TrainResult]:
    for c in configs:
        check_cell(model, task, site, c)
    first = configs[0]
    _check_batchable(configs, width, len(cell_variables(task, first)))
    variables = cell_variables(task, first)
    K = len(configs)
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if first.threads:
        torch.set_num_threads(first.threads)
    try:
        if data is None:
            data = [make_data(task, c) for c in configs]
        trains = [d[0] for d in data]
        test = data[0][1]  # every config scores on the same held-out set (fixed test_seed)
        builds = []
        for c in configs:
            torch.manual_seed(c.seed)  # as train_dii does before building
            builds.append(get_family(c.family).build(width, [c.size] * len(variables), seed=c.seed,
                                                     variant=c.variant, depth=c.depth))
        coords = builds[0].coords
        if first.family == "neuron-fixed":
            iv = builds[0].interventions[0]
        else:
            iv = BatchedRoadInterchange.from_interchanges([b.interventions[0] for b in builds])
        # one runner for all candidates: with replay, inputs the candidates share run once
        runner, handles = make_runner(model, site, task, [iv] * len(variables), coords, shared=True,
                                      datasets=[*trains, test], engine=first.engine)
        h_trains, h_test = handles[:K], handles[K]
        params = [p for p in iv.parameters() if p.requires_grad]
        losses: list[list[float]] = [[] for _ in range(K)]
        lr = first.learning_rate
        if params and lr > 0:
            opt = torch.optim.Adam(params, lr=lr)
            gens = [torch.Generator().manual_seed(c.seed) for c in configs]
            n = len(trains[0])
            # every candidate's training rows in one handle: candidate k's row i is k * n + i, so a
            # step takes one slice of the epoch's orders and one gather, not one per candidate
            h_all = runner.concat(h_trains)
            y_all = torch.cat([tr.labels for tr in trains])
            offsets = (torch.arange(K) * n)[:, None]  # [K, 1]
            for _ in range(first.epochs):
                orders = torch.stack([torch.randperm(n, generator=g) for g in gens]) + offsets  # [K, n]
                for start in range(0, n, first.batch_size):
                    idx = orders[:, start : start + first.batch_size]  # [K, B]: candidate k's rows, as train_dii
                    B = idx.shape[1]
                    idx = idx.reshape(-1)
                    with iv.blocks(B):  # only BatchedRoadInterchange has parameters to train
                        out = runner([(h_all, idx)])
                    y = y_all.index_select(0, idx)
                    ce = torch.nn.functional.cross_entropy(task.logits(out).float(), y, reduction="none")
                    per = ce.view(K, B).mean(1)  # [K]: each candidate's own mean loss
                    opt.zero_grad(set_to_none=True)
                    total = per.sum()
                    total.backward()  # candidates' gradients do not mix
                    check_step(total, params, what=f"batched DII training ({first.family}, {K} seeds)",
                               step=len(losses[0]))
                    opt.step()
                    for k, v in enumerate(per.detach().tolist()):
                        losses[k].append(v)
        iv.eval()
        iias = evaluate_iia_batched(runner, iv, task, [h_test] * K, [test.labels] * K, [len(test)] * K)
        n_tr = min(len(trains[0]), first.n_test)
        train_iias = evaluate_iia_batched(runner, iv, task, h_trains, [tr.labels for tr in trains], [n_tr] * K)
    finally:
        torch.set_num_threads(old_threads)
    seconds = (time.perf_counter() - t0) / K
    out = []
    for k, c in enumerate(configs):
        cand = iv.candidate(k) if isinstance(iv, BatchedRoadInterchange) else builds[k].interventions[0]
        out.append(TrainResult(
            iia=iias[k], train_iia=train_iias[k], site=site, config=c, variables=variables, coords=coords,
            seconds=seconds, losses=losses[k], interventions=[cand] * len(variables), engine=runner.engine,
        ))
    return out
