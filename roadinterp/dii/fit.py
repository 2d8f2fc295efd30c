"""The one DII fit loop: K candidates of one cell (K = 1 for ``train_dii``), fitted and scored.

A *candidate* is one config's intervention: one seed of a cell. ``fit_cell`` builds
each candidate's intervention (stacking road-like ones into one
:class:`~roadinterp.interventions.RoadInterchange` with a candidate axis), asks
:func:`~roadinterp.dii.runners.make_runner` for a runner over all their data, then
runs the steps: every candidate draws exactly the minibatch it would draw alone
(its own seeded order), the rows of all candidates go through one forward, and the
loss is the sum of the candidates' own mean cross-entropies, so each candidate's
gradient sees only its rows and Adam (element-wise) keeps their updates apart.
:func:`iia_scores` scores every candidate on its held-out rows in shared forwards, over the
task's answers (``iia``) and over the full vocabulary (``iia_vocab``, token tasks).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch

from roadinterp._scoped import seeded, torch_threads
from roadinterp.dii._tables import answer_columns
from roadinterp.dii.config import DIIConfig, TrainResult, cell_variables, make_data
from roadinterp.dii.runners import make_runner
from roadinterp.finite import check_step
from roadinterp.interventions import RoadInterchange, get_family
from roadinterp.sites import Site


def _route(iv, rows):
    """Say which candidate each row uses (only a RoadInterchange holds candidates)."""
    return iv.rows(rows) if isinstance(iv, RoadInterchange) else contextlib.nullcontext()


VOCAB_MAX_ROWS = 1024  # rows per forward when scoring over the vocabulary: 1024 x 49152 fp32 logits = 200 MB


@torch.no_grad()
def iia_scores(runner, iv, task, handles: Sequence, labels: Sequence[torch.Tensor], sizes: Sequence[int], *,
               vocab: bool = False, batch_size: int = 1024, max_rows: int = 8192
               ) -> tuple[list[float], list[float] | None]:
    """Candidate ``k``'s IIA on the first ``sizes[k]`` rows of ``handles[k]``: over the task's
    answers and, with ``vocab``, over the whole vocabulary; all candidates in the same forwards.

    Answer-set IIA: the argmax of ``task.logits`` (the answer tokens' logits of a token task)
    is the counterfactual label. Full-vocabulary IIA (MIB's reading): the top-1 token of the
    whole vocabulary at the last position is the label's answer token, so it is never above
    the answer-set IIA. It needs a task with answer ids (:func:`answer_columns`); for a task
    without (vector tasks), and without ``vocab``, the second list is ``None``.
    ``runner``/``handles`` come from :func:`roadinterp.dii.runners.make_runner`; ``iv`` is
    the (stacked) intervention the rows are routed through. Each forward takes up to
    ``batch_size`` rows of every dataset (fewer when that would exceed ``max_rows`` in total,
    or :data:`VOCAB_MAX_ROWS` with ``vocab``).
    """
    columns = answer_columns(task) if vocab else None
    if columns is not None:
        max_rows = min(max_rows, VOCAB_MAX_ROWS)
    K = len(handles)
    chunk = max(1, min(batch_size, max_rows // K))
    correct = torch.zeros(2, K, dtype=torch.long)  # [answers / vocabulary, K]
    for start in range(0, max(sizes), chunk):
        idx = [torch.arange(start, min(start + chunk, n)) for n in sizes]
        keep = [k for k in range(K) if len(idx[k])]
        rows = torch.repeat_interleave(torch.tensor(keep), torch.tensor([len(idx[k]) for k in keep]))
        with _route(iv, rows):
            out = runner([(handles[k], idx[k]) for k in keep], vocab=columns is not None)
        y = torch.cat([labels[k][idx[k]] for k in keep])
        correct[0].index_add_(0, rows, (task.logits(out).argmax(-1).cpu() == y).long())
        if columns is not None:  # the last position's logits over the vocabulary, where TokenTask.logits reads
            full = out.logits if hasattr(out, "logits") else out[0]  # [n, seq, vocab]
            correct[1].index_add_(0, rows, (full[:, -1].argmax(-1).cpu() == columns[y]).long())
    scores = [[int(c) / max(n, 1) for c, n in zip(row, sizes)] for row in correct.tolist()]
    return scores[0], (scores[1] if columns is not None else None)


def iia(runner, iv, task, handles: Sequence, labels: Sequence[torch.Tensor], sizes: Sequence[int], *,
        batch_size: int = 1024, max_rows: int = 8192) -> list[float]:
    """The answer-set IIA of :func:`iia_scores` (training sets and controls: no full unembedding)."""
    return iia_scores(runner, iv, task, handles, labels, sizes, batch_size=batch_size, max_rows=max_rows)[0]


def _anneal(family, interventions, step: int, total: int) -> None:
    """The family's temperature schedule (neuron masks, pyvene boundless), if it has one."""
    if family.anneal is not None:
        frac = step / max(total - 1, 1)
        for iv in {id(i): i for i in interventions}.values():
            family.anneal(iv, frac)


def _penalty(family, interventions) -> torch.Tensor | float:
    """The family's sparsity term (neuron masks, boundless's boundary width), if it has one."""
    pen = 0.0
    if family.penalty is not None:
        for iv in {id(i): i for i in interventions}.values():
            pen = pen + family.penalty(iv)
    return pen


def _build(configs: Sequence[DIIConfig], width: int, n_vars: int):
    """Every candidate's family build (seeded as a lone run would be), and the interventions to run."""
    builds = []
    for c in configs:
        with seeded(c.seed):  # families that draw from torch's global generator (pyvene's)
            fam = get_family(c.family)
            builds.append(fam.build(width, [c.size] * n_vars, seed=c.seed, variant=c.variant,
                                    depth=fam.default_depth(c.depth)))
    if len(builds) == 1:
        return builds, builds[0].interventions, builds[0].shared
    first = builds[0].interventions[0]
    iv = RoadInterchange.stack([b.interventions[0] for b in builds]) if isinstance(first, RoadInterchange) else first
    return builds, [iv] * n_vars, True


def fit_cell(model, task, site: Site, configs: Sequence[DIIConfig], data: Sequence | None, width: int
             ) -> list[TrainResult]:
    """Train and score the K candidates ``configs`` of one cell; one TrainResult each, in order.

    The configs must agree on everything but the seed (and, for road-like families, the
    family name among equal strides): see :func:`roadinterp.dii.batched.batch_groups`.
    ``TrainResult.seconds`` is the wall time / K.
    """
    first, K = configs[0], len(configs)
    variables = cell_variables(task, first)
    t0 = time.perf_counter()
    with torch_threads(first.threads):
        if data is None:
            data = [make_data(task, c) for c in configs]
        trains = [d[0] for d in data]
        test = data[0][1]  # every config scores on the same held-out set (fixed test_seed)
        builds, ivs, shared = _build(configs, width, len(variables))
        iv = ivs[0]
        # one runner for all candidates: with replay, inputs the candidates share run once
        runner, handles = make_runner(model, site, task, ivs, builds[0].coords, shared=shared,
                                      datasets=[*trains, test], engine=first.engine)
        h_trains, h_test = handles[:K], handles[K]
        losses = _fit(runner, task, ivs, h_trains, [tr.labels for tr in trains], configs)
        for v in ivs:
            v.eval()
        iias, vocab_iias = iia_scores(runner, iv, task, [h_test] * K, [test.labels] * K, [len(test)] * K,
                                      vocab=True)
        n_tr = min(len(trains[0]), first.n_test)
        train_iias = iia(runner, iv, task, h_trains, [tr.labels for tr in trains], [n_tr] * K)
    seconds = (time.perf_counter() - t0) / K
    out = []
    for k, c in enumerate(configs):
        result_ivs = ivs if K == 1 else ([iv.candidate(k)] * len(variables) if isinstance(iv, RoadInterchange)
                                         else builds[k].interventions)
        out.append(TrainResult(
            iia=iias[k], train_iia=train_iias[k], site=site, config=c, variables=variables,
            coords=builds[k].coords, seconds=seconds, losses=losses[k], interventions=result_ivs,
            engine=runner.engine, iia_vocab=None if vocab_iias is None else vocab_iias[k], engine_reason=runner.reason,
        ))
    return out


def _fit(runner, task, ivs, h_trains, labels, configs) -> list[list[float]]:
    """Adam over every candidate's own minibatches; each candidate's losses, step by step."""
    first, K = configs[0], len(configs)
    params = [p for v in {id(i): i for i in ivs}.values() for p in v.parameters() if p.requires_grad]
    losses: list[list[float]] = [[] for _ in range(K)]
    lr = first.learning_rate
    if not params or lr <= 0:
        return losses
    opt = torch.optim.Adam(params, lr=lr)
    gens = [torch.Generator().manual_seed(c.seed) for c in configs]
    n, bs = len(labels[0]), first.steps_batch
    total, step = -(-n // bs) * first.epochs, 0
    # every candidate's training rows in one handle: candidate k's row i is k * n + i, so a step
    # takes one slice of the epoch's orders and one gather, not one per candidate
    h_all = h_trains[0] if K == 1 else runner.concat(h_trains)
    y_all = labels[0] if K == 1 else torch.cat(list(labels))
    offsets = (torch.arange(K) * n)[:, None]  # [K, 1]
    iv, family = ivs[0], get_family(first.family)
    what = f"DII training ({first.family})" if K == 1 else f"batched DII training ({first.family}, {K} seeds)"
    for _ in range(first.epochs):
        orders = torch.stack([torch.randperm(n, generator=g) for g in gens]) + offsets  # [K, n]
        for start in range(0, n, bs):
            idx = orders[:, start : start + bs]  # [K, B]: candidate k's rows, as it would draw alone
            B = idx.shape[1]
            idx = idx.reshape(-1)
            _anneal(family, ivs, step, total)
            with iv.blocks(B) if K > 1 else contextlib.nullcontext():
                out = runner([(h_all, idx)])
            logits, y = task.logits(out).float(), y_all.index_select(0, idx)
            if K == 1:
                per = torch.nn.functional.cross_entropy(logits, y).reshape(1)
            else:
                per = torch.nn.functional.cross_entropy(logits, y, reduction="none").view(K, B).mean(1)  # [K]
            loss = per.sum() + _penalty(family, ivs)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # candidates' gradients do not mix
            value = check_step(loss, params, what=what, step=step)  # before Adam sees a NaN/inf
            opt.step()
            for k, v in enumerate([value] if K == 1 else per.detach().tolist()):
                losses[k].append(v)
            step += 1
    return losses
