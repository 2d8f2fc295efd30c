"""Train RoAd adapters on text completions (behaviours from data), compose and generate with them.

:func:`train_from_data` fits a :class:`RoadAdapter` so that the model, given a row's
prompt, produces its completion (cross-entropy on completion tokens only,
:mod:`~roadinterp.adapters.textdata`). Where the adapter acts:

- ``placement="site"``: RoAd on the residual stream at the output of block(s) ``layers``,
  at ``positions``: ``"last-prompt"`` (the last prompt token only, the RoAd paper's
  composition protocol), ``"prompt"`` (every prompt token) or ``"all"`` (every token,
  generated ones too). The first two act on prompt positions only; generated tokens see
  the change through attention (the KV cache), as in pyreft.
- ``placement="linear"``: RoAd on the outputs of the Linear layers of ``layers``
  (``linear_modules``), every position, PEFT-style.

``blocks`` is the adapter's subspace (which 2D blocks it owns; ``"1/2"`` = the first half).
Several behaviours at once (``rows={"upper": [...], "frame": [...]}``) is the paper's
joint training with routing: one shuffled stream, each example moving only its own
behaviour's blocks. ``frozen`` adapters act during training without learning ("train B
with A attached"); ``preserve_rows`` adds ``preserve_weight x KL(base || adapted)`` on the
next-token distribution after each preserve prompt (what the adapter must not change).
Training runs only the layers after the first site, on cached inputs
(:mod:`~roadinterp.adapters.tailcache`). Any bank of such adapters is served
(or compositions, :func:`~roadinterp.adapters.compose.combine`) in one mixed batch, each row with its own:
:func:`roadinterp.adapters.textgen.generate`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from roadinterp.adapters import tailcache as tc
from roadinterp.adapters import textdata as td
from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.compose import combine, split_blocks
from roadinterp.errors import ConfigError, OverlapError

LINEAR_MODULES = ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_WIDTH = {"last-prompt": 0, "prompt": 1, "all": 2}

__all__ = ["DataCache", "LINEAR_MODULES", "Trained", "parse_blocks", "train_from_data"]


@dataclass
class Trained:
    """What :func:`train_from_data` returns: one adapter per behaviour and the training log."""

    adapters: dict[str, RoadAdapter]
    history: dict = field(default_factory=dict)  # loss/ce/kl per step, epoch_loss, seconds, step_seconds, ...

    @property
    def adapter(self) -> RoadAdapter:
        """The adapter (several behaviours: their composition, :func:`combine`)."""
        if len(self.adapters) == 1:
            return next(iter(self.adapters.values()))
        return combine(self.adapters)


def parse_blocks(spec, n_blocks: int) -> list[int] | None:
    """Blocks from ``None``/``"all"`` (every block), ``"k/m"`` (the k-th of m equal shares),
    ``"a-b"`` (inclusive range), ``"1,4,7"`` or a list of ints."""
    if spec is None or spec == "all":
        return None
    if isinstance(spec, str):
        s = spec.strip()
        try:
            if "/" in s:
                k, m = (int(x) for x in s.split("/"))
                if not 1 <= k <= m:
                    raise ValueError
                return split_blocks(n_blocks, [str(i) for i in range(m)])[str(k - 1)]
            out: list[int] = []
            for part in s.split(","):
                a, _, b = part.partition("-")
                out += list(range(int(a), int(b) + 1)) if b else [int(a)]
            spec = out
        except ValueError:
            raise ConfigError(f"blocks must be 'all', 'k/m' (e.g. 1/2), 'a-b' or a comma list, got {spec!r}") from None
    blocks = sorted({int(b) for b in spec})
    if not blocks or blocks[0] < 0 or blocks[-1] >= n_blocks:
        raise ConfigError(f"blocks must lie in 0..{n_blocks - 1}, got {spec!r}")
    return blocks


class DataCache:
    """Reuse prepared tail inputs across training calls (same model, site layer and positions).

    A request for rows that a cached entry holds is served by a subset of it, so preparing
    the union of two behaviours once serves both separate runs and the joint one.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[tuple, dict, tc.TailData]] = []

    def get(self, model, tokenizer, rows: Sequence[td.TextRow], conf: tuple, what: str) -> tc.TailData:
        for c, index, data in self.entries:
            if c == conf and all(r in index for r in rows):
                return data.subset([index[r] for r in rows])
        data = _prepare(model, tokenizer, rows, conf, what)
        index: dict = {}
        for i, r in enumerate(rows):
            index.setdefault(r, i)
        self.entries.append((conf, index, data))
        return data

    def clear(self) -> None:
        self.entries.clear()


def _prepare(model, tokenizer, rows, conf, what) -> tc.TailData:
    start, positions, template, max_completion, need = conf
    batch = td.encode(tokenizer, rows, template=template, max_length=td.context_length(model),
                      max_completion_tokens=max_completion, need_completion=need, what=what)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return tc.prepare(model, batch, start=start, positions=positions, pad_id=pad)


def _as_rows(rows, what: str, need: bool = True) -> list[td.TextRow]:
    if isinstance(rows, (str, os.PathLike)):
        return td.read_jsonl(rows, need_completion=need)
    return td.rows_from(rows, need_completion=need, what=what)


def _targets(model, placement, positions, layers, linear_modules) -> dict[str, int]:
    from roadinterp.adapters.linear import linear_targets
    from roadinterp.adapters.modules import hidden_size

    n = len(tc.decoder_parts(model)[0])
    for layer in layers:
        if not 0 <= layer < n:
            raise ConfigError(f"layers must lie in 0..{n - 1} (the model has {n} blocks), got {layer}")
    if placement == "site":
        return {tc.site_key(layer, positions): hidden_size(model) for layer in layers}
    if placement != "linear":
        raise ConfigError(f"placement must be 'site' or 'linear', got {placement!r}")
    if positions != "all":
        raise ConfigError("placement='linear' rotates Linear outputs at every position: use positions='all'")
    found = linear_targets(model, list(linear_modules))
    out = {p: w for p, w in found.items() if any(f".{layer}." in f".{p}." for layer in layers)}
    if not out:
        raise ConfigError(f"no Linear {list(linear_modules)} in layers {list(layers)}")
    return out


def _first_layer(key: str) -> int:
    if ":" in key:
        return tc.positions_of_key(key)[0]
    nums = [int(x) for x in key.split(".") if x.isdigit()]
    return nums[0]


def _site_apply(active: list[tuple[RoadAdapter, torch.Tensor | None]], data: tc.TailData, idx: torch.Tensor):
    """``after(i, h)`` for the tail: every site adapter acting after layer ``i`` rotates its positions.

    ``active``: ``(adapter, row_of_adapter)`` pairs; ``row_of_adapter`` is a ``[n]`` bool mask
    over the whole data (the rows routed to it), ``None`` = every row.
    """
    cols = {"last-prompt": data.q_cols == data.prompt_width - 1, "prompt": data.prompt_cols(),
            "all": torch.ones_like(data.q_cols, dtype=torch.bool)}
    by_layer: dict[int, list] = {}
    for ad, rows in active:
        if getattr(ad, "placement", "site") != "site":
            continue
        for key, r in ad.items():
            layer, pos = tc.positions_of_key(key)
            by_layer.setdefault(layer, []).append((r, cols[pos], None if rows is None else rows[idx]))

    def after(i: int, h: torch.Tensor) -> torch.Tensor:
        for r, col, rows in by_layer.get(i, ()):
            where = col[None, :, None] if rows is None else (rows[:, None, None] & col[None, :, None])
            h = torch.where(where, r(h), h)
        return h

    return after


def _first_logits(model, data: tc.TailData, idx, after) -> torch.Tensor:
    """Log-probabilities ``[b, V]`` of the first generated token (the last prompt column)."""
    h = tc.tail_hidden(model, data, idx, after)
    col = int((data.q_cols == data.prompt_width - 1).nonzero()[0])
    return torch.log_softmax(tc.decoder_parts(model)[4](h[:, col]).float(), -1)


def train_from_data(
    model, tokenizer, rows, *, placement: str = "site", positions: str = "last-prompt", layers: Sequence[int] = (15,),
    blocks=None, variant: str = "road_1", group_size: int = 64, lr: float = 5e-3, epochs: int = 5,
    batch_size: int = 8, seed: int = 0, template: str = "chat", preserve_rows=None, preserve_weight: float = 1.0,
    frozen: Sequence[RoadAdapter] = (), max_completion_tokens: int | None = None,
    linear_modules: Sequence[str] = LINEAR_MODULES, cache: DataCache | None = None, threads: int | None = None,
    method: str = "road", rank: int = 4, params: Sequence[torch.Tensor] = (), log=None,
    plateau: float | None = None, window: int | None = None, max_seconds: float | None = None,
) -> Trained:
    """Fit RoAd adapter(s) so the model completes each row's prompt with its completion.

    ``rows``: a JSONL path, a list of rows (``{"prompt","completion"}``/``{"messages"}`` dicts,
    ``(prompt, completion)`` pairs or :class:`~roadinterp.adapters.textdata.TextRow`), or
    ``{behaviour: rows}`` for joint training with routing; then ``blocks`` is
    ``{behaviour: blocks}`` (default: equal shares, :func:`split_blocks`). Otherwise ``blocks``
    is any :func:`parse_blocks` spec. ``epochs`` passes over the (shuffled, mixed) rows in
    batches of ``batch_size`` with Adam at ``lr``. ``preserve_rows``: a path or rows whose
    completion may be absent. ``log(step, loss)`` is called every step if given.
    Convergence: ``epochs`` is a cap; with ``plateau`` (e.g. ``0.02``) training stops once the mean
    train loss of a window of ``window`` steps (default: one epoch) improves on the previous window's
    by less than that fraction; ``max_seconds`` stops at a wall-clock budget. ``history`` keeps
    ``window_loss`` (the curve the criterion read) and ``stopped`` (``"plateau"``, ``"time"`` or
    ``"epochs"``).
    ``method="loreft"`` trains LoReFT (rank ``rank``) at the same sites instead (a baseline);
    ``method="params"`` trains ``params`` already installed in the model's layers >= ``min(layers)``
    (e.g. peft LoRA), every position, and returns no adapter.
    Returns :class:`Trained` (``.adapters``, ``.history`` with the per-step loss).
    """
    from roadinterp._scoped import torch_threads
    from roadinterp.finite import check_step

    t0 = time.perf_counter()
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive int, got {v!r}")
    if positions not in tc.POSITIONS:
        raise ConfigError(f"positions must be one of {tc.POSITIONS}, got {positions!r}")
    td._check_tokenizer(tokenizer, template)
    layers = sorted({int(x) for x in ([layers] if isinstance(layers, int) else layers)})
    if not layers:
        raise ConfigError("layers must name at least one layer")
    groups = {k: _as_rows(v, f"rows {k!r}") for k, v in rows.items()} if isinstance(rows, Mapping) \
        else {"default": _as_rows(rows, "rows")}
    if method not in ("road", "loreft", "params"):
        raise ConfigError(f"method must be 'road', 'loreft' or 'params', got {method!r}")
    if method == "params":
        placement, positions = "linear", "all"
        targets = {f"model.layers.{layers[0]}": 0}
    else:
        targets = _targets(model, placement, positions, layers, linear_modules)
    width = next(iter(targets.values())) or 2
    n_blocks = {"road_1": width // 2, "road_2": width, "road_4": width // 2}.get(variant)
    if n_blocks is None:
        raise ConfigError(f"variant must be road_1, road_2 or road_4, got {variant!r}")
    if isinstance(blocks, Mapping):
        owners = {k: parse_blocks(blocks[k], n_blocks) if k in blocks else None for k in groups}
    elif len(groups) > 1:
        owners = split_blocks(n_blocks, list(groups)) if blocks is None else {k: parse_blocks(blocks, n_blocks)
                                                                            for k in groups}
    else:
        owners = {k: parse_blocks(blocks, n_blocks) for k in groups}
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa = set(range(n_blocks)) if owners[a] is None else set(owners[a])
            sb = set(range(n_blocks)) if owners[b] is None else set(owners[b])
            if sa & sb:
                raise OverlapError(f"behaviours {a!r} and {b!r} share {len(sa & sb)} blocks; give each its own")
    frozen = list(frozen)
    if frozen and placement != "site":
        raise ConfigError("frozen adapters are supported for placement='site'")
    for f in frozen:
        if f.placement != "site":
            raise ConfigError(f"a frozen adapter must be a site adapter, got placement {f.placement!r}")
    site_layers = [_first_layer(k) for k in targets] + [tc.positions_of_key(k)[0] for f in frozen for k in f.targets]
    widest = max([positions] + [tc.positions_of_key(k)[1] for f in frozen for k in f.targets], key=_WIDTH.get)
    start = min(site_layers) + (1 if placement == "site" else 0)
    meta = {"positions": positions, "template": template, "seed": seed, "lr": lr, "epochs": epochs,
            "batch_size": batch_size, "joint": len(names) > 1}
    if method == "road":
        ads = {n: RoadAdapter(targets, variant=variant, group_size=group_size, blocks=owners[n], placement=placement,
                              meta={"behaviour": n, **meta}) for n in names}
    elif method == "loreft":
        from roadinterp.interventions.loreft import LoreftAdapter

        if placement != "site" or len(names) > 1:
            raise ConfigError("method='loreft' trains one behaviour at a time at site placement")
        ads = {n: LoreftAdapter(targets, rank=rank, seed=seed, meta={"behaviour": n, **meta}) for n in names}
    else:
        if not params or len(names) > 1:
            raise ConfigError("method='params' needs params=[...] (installed in the model) and one behaviour")
        ads = {}
    all_rows = [r for n in names for r in groups[n]]
    behaviour_of = torch.cat([torch.full((len(groups[n]),), i) for i, n in enumerate(names)])
    cache = cache if cache is not None else DataCache()
    conf = (start, widest, template, max_completion_tokens)
    model_was = model.training
    req = [p.requires_grad for p in model.parameters()]
    history: dict = {"loss": [], "ce": [], "kl": [], "behaviours": names, "rows": {n: len(groups[n]) for n in names}}
    with torch_threads(threads), _frozen_model(model, req):
        model.eval()
        data = cache.get(model, tokenizer, all_rows, conf + (True,), "rows")
        pres = None
        if preserve_rows is not None:
            prow = _as_rows(preserve_rows, "preserve rows", need=False)
            pres = cache.get(model, tokenizer, prow, conf + (False,), "preserve rows")
        history["prepare_seconds"] = time.perf_counter() - t0
        handle = None
        if placement == "linear" and method == "road":
            from roadinterp.adapters.linear import apply_road

            handle = apply_road(model, ads)
        try:
            params, route = _trainables(ads, handle, behaviour_of, params)
            base_first = None
            if pres is not None:
                with torch.no_grad():
                    route(torch.full((len(pres),), -1))
                    fro = [(f, None) for f in frozen]
                    base_first = torch.cat([_first_logits(model, pres, sl, _site_apply(fro, pres, sl))
                                            for sl in torch.arange(len(pres)).split(64)])
            opt = torch.optim.Adam(params, lr=lr)
            gen = torch.Generator().manual_seed(seed)
            pgen = torch.Generator().manual_seed(seed + 1)
            active = [(ads[n], behaviour_of == i) for i, n in enumerate(names) if n in ads] + [(f, None) for f in frozen]
            head = tc.decoder_parts(model)[4]
            t_train = time.perf_counter()
            n_ep = -(-len(data) // batch_size)
            win = n_ep if window is None else int(window)
            if win < 1:
                raise ConfigError(f"window must be a positive number of steps, got {window!r}")
            history["window_loss"], history["window"], stopped = [], win, None
            for epoch in range(epochs):
                order = torch.randperm(len(data), generator=gen)
                for idx in order.split(batch_size):
                    route(behaviour_of[idx])
                    h = tc.tail_hidden(model, data, idx, _site_apply(active, data, idx))
                    tgt = data.targets[idx]
                    sel = tgt != -100
                    ce = torch.nn.functional.cross_entropy(head(h[sel]).float(), tgt[sel])
                    loss, kl = ce, torch.zeros(())
                    if pres is not None:
                        pidx = torch.randint(len(pres), (len(idx),), generator=pgen)
                        route(torch.zeros(len(idx), dtype=torch.long) if placement == "linear" else None)
                        logp = _first_logits(model, pres, pidx, _site_apply(
                            [(a, None) for a in ads.values()] + [(f, None) for f in frozen], pres, pidx))
                        base = base_first[pidx]
                        kl = (base.exp() * (base - logp)).sum(-1).mean()
                        loss = ce + preserve_weight * kl
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    step = len(history["loss"])
                    history["loss"].append(check_step(loss, params, what="behaviour training", step=step))
                    history["ce"].append(float(ce.detach()))
                    history["kl"].append(float(kl.detach()))
                    opt.step()
                    if log is not None:
                        log(step, history["loss"][-1])
                    stopped = _converged(history, win, plateau, max_seconds, time.perf_counter() - t_train)
                    if stopped:
                        break
                history.setdefault("epoch_loss", []).append(sum(history["ce"][-n_ep:]) / min(n_ep, len(history["ce"])))
                if stopped:
                    break
            history["stopped"] = stopped or "epochs"
            history["steps"] = len(history["loss"])
            history["step_seconds"] = (time.perf_counter() - t_train) / max(1, history["steps"])
            if handle is not None:
                _copy_back(ads, handle)
        finally:
            if handle is not None:
                handle.remove()
            model.train(model_was)
    for ad in ads.values():
        for p in ad.parameters():
            p.requires_grad_(False)
    history["seconds"] = time.perf_counter() - t0
    for ad in ads.values():  # saved with the adapter (roadinterp.io): the curve travels with it
        ad.meta["history"] = {k: history[k] for k in ("epoch_loss", "window_loss", "stopped", "steps", "step_seconds",
                                                      "seconds", "loss")}
    return Trained(dict(ads), history)


def _converged(history: dict, win: int, plateau: float | None, max_seconds: float | None, elapsed: float):
    """After a step: ``"plateau"``/``"time"`` when training should stop, else None.

    Every ``win`` steps the window's mean loss is appended to ``history["window_loss"]``; the plateau
    test compares the last two windows (relative improvement below ``plateau``).
    """
    loss = history["loss"]  # CE, plus the preservation term when there is one
    if len(loss) % win == 0:
        history["window_loss"].append(sum(loss[-win:]) / win)
        wl = history["window_loss"]
        if plateau is not None and len(wl) >= 2 and wl[-2] - wl[-1] < plateau * abs(wl[-2]):
            return "plateau"
    if max_seconds is not None and elapsed >= max_seconds:
        return "time"
    return None


class _frozen_model:
    """Freeze the model's own weights for the block; restore each parameter's flag after."""

    def __init__(self, model, req) -> None:
        self.model, self.req = model, req

    def __enter__(self):
        for p in self.model.parameters():
            p.requires_grad_(False)

    def __exit__(self, *exc) -> None:
        for p, r in zip(self.model.parameters(), self.req):
            p.requires_grad_(r)


def _trainables(ads, handle, behaviour_of, external=()):
    """Parameters to fit and ``route(ids)`` (sets per-row adapter ids on Linear banks; sites need none)."""
    if handle is None:
        params = list(external) + [p for ad in ads.values() for p in ad.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params, lambda ids: None
    params = []
    for layer in handle.layers.values():
        layer.theta.requires_grad_(True)
        layer.alpha.requires_grad_(True)
        params += [layer.theta, layer.alpha]

    def route(ids):
        for layer in handle.layers.values():
            layer.set_adapter_ids(ids)

    return params, route


@torch.no_grad()
def _copy_back(ads, handle) -> None:
    for path, layer in handle.layers.items():
        for i, ad in enumerate(ads.values()):
            if path in ad.targets:
                ad.rotation(path).theta.copy_(layer.theta[i])
                ad.rotation(path).alpha.copy_(layer.alpha[i])
