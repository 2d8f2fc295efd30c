"""Replaying a frozen model from a site: the fast path of DII training.

A DII run calls the same frozen network thousands of times, and through pyvene
every step runs the *whole* model on the base input plus once more on a source
input per causal variable. But nothing upstream of the site depends on the
intervention: the state at the site is a fixed function of each input. So
:class:`SiteReplay` runs the model once per *distinct* input, only up to the site
(no gradients, large chunks, stopping there), and keeps the hidden state at the
site for every position (what comes after needs the whole sequence). A step then
only runs what comes after the site: the model is called on one placeholder row
and a hook at the site swaps that row's state for the ``[N, seq, d]`` states of
the real batch, with the intervention already applied at the site's positions.
Downstream modules see N rows; upstream ran on one.

What this saves: the source forwards entirely (their states are looked up), the
prefix on every step and epoch, and duplicated work across inputs that recur -- the
candidates of ``train_dii_batched`` draw counterfactuals from one finite input space,
so most of their inputs are shared and computed once.

When it is valid: the site's state must be all that downstream depends on, so the
component is ``block_output`` or ``block_input`` (the residual stream between
blocks; an ``mlp_output`` is later added to a residual the placeholder computed),
and the model inputs must be content only (``input_ids``/``inputs_embeds``, an
all-ones ``attention_mask``): a padding mask or explicit positions differ per row
and would be taken from the placeholder. :meth:`SiteReplay.verify` checks the
replayed outputs against plain forwards before a run relies on them;
:func:`roadinterp.dii.runners.make_runner` falls back to pyvene (the reference path)
whenever replay is unsupported or the check fails (:class:`ReplayUnavailable`, its private
signal), and says why in ``runner.reason``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from roadinterp._pyvene import pv  # first: imports pyvene quietly
from roadinterp.dii._tables import InputIndex, ReplayUnavailable, Stop, first, forward_kwargs
from roadinterp.errors import ConfigError
from roadinterp.sites import Site, n_layers, sequence_length

get_module_hook = pv.models.modeling_utils.get_module_hook  # through roadinterp._pyvene: its import prints

REPLAY_COMPONENTS: tuple[str, ...] = ("block_output", "block_input")
CONTENT_KEYS: tuple[str, ...] = ("input_ids", "inputs_embeds")
DEFAULT_MAX_BYTES = 1 << 30  # state table budget (1 GiB); larger runs use pyvene


def _with_first(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _content(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | str:
    """The inputs replay may use, or the reason it may not."""
    out = {}
    for k, v in inputs.items():
        if k in CONTENT_KEYS:
            out[k] = v
        elif k == "attention_mask" and bool((v == 1).all()):
            continue  # no padding: the same as no mask
        else:
            return f"input {k!r} may differ per row (replay takes it from one placeholder row)"
    if not out:
        return f"inputs need one of {', '.join(CONTENT_KEYS)}"
    return out


def unsupported_reason(model, site: Site, inputs: Mapping[str, torch.Tensor] | None = None) -> str | None:
    """Why ``SiteReplay`` cannot serve this model/site/inputs (``None``: it can)."""
    if model.training:
        return "the model is in training mode (dropout would differ between cached and fresh forwards); call .eval()"
    if site.component not in REPLAY_COMPONENTS:
        return (f"component {site.component!r}: replay needs the full state between blocks "
                f"({', '.join(REPLAY_COMPONENTS)})")
    if inputs is not None:
        c = _content(inputs)
        if isinstance(c, str):
            return c
    return None


class SiteReplay:
    """State table of a frozen model at a site, and the suffix runner.

    ``add(inputs)`` computes (once per distinct row, ``chunk`` rows per forward; by
    default about 64 MiB of site states) the site state of every row and returns row ids
    into the table; :meth:`run` runs the rest of the model on
    ``[N, seq, d]`` states. The model must be frozen and in eval mode for the table
    to stay valid; the table lives as long as this object.
    """

    def __init__(self, model, site: Site, *, chunk: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        reason = unsupported_reason(model, site)
        if reason:
            raise ReplayUnavailable(f"replay is not available at {site.label()}: {reason}")
        self.model, self.site, self.chunk, self.max_bytes = model, site, chunk, max_bytes
        for p in model.parameters():  # frozen, as pyvene's disable_model_gradients leaves it: no weight grads
            p.requires_grad_(False)
        rep = pv.RepresentationConfig(layer=site.layer, component=site.component, unit="pos",
                                      max_number_of_units=1)
        self._register = get_module_hook(model, rep)  # bound register_forward(_pre)_hook
        self._pre = self._register.__name__ == "register_forward_pre_hook"
        self._kwargs = forward_kwargs(model)
        self._index = InputIndex("replay")  # table row id of every distinct input
        self._chunks: list[torch.Tensor] = []  # [c, seq, d] each
        self._table: torch.Tensor | None = None
        self.placeholder: dict[str, torch.Tensor] | None = None
        # after the last block only the final norm and unembedding run, position by position, so
        # the tail may run on just the positions the task reads (see prune)
        self.final = site.component == "block_output" and site.layer == n_layers(model) - 1
        self.keep: list[int] | None = None  # positions the tail runs on (None: all)
        self.n_forward_rows = 0  # rows actually run through the prefix (after deduplication)

    # ----- hooks
    def _hook(self, fn):
        """Register ``fn(state) -> state or None`` at the site; returns the handle."""
        if self._pre:
            def pre(module, args, kwargs):
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                if "hidden_states" in kwargs:
                    new = fn(kwargs["hidden_states"])
                    return None if new is None else (args, {**kwargs, "hidden_states": new})
                raise ReplayUnavailable(f"cannot find the hidden state entering {self.site.label()}")
            return self._register(pre, with_kwargs=True)

        def post(module, args, kwargs, output):
            new = fn(first(output))
            return None if new is None else _with_first(output, new)
        return self._register(post, with_kwargs=True)

    @torch.no_grad()
    def _prefix(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Site states of ``inputs``, running the model only up to the site.  # [c, seq, d]"""
        got: list[torch.Tensor] = []

        def grab(state):
            got.append(state.detach())
            raise Stop

        handle = self._hook(grab)
        try:
            self.model(**inputs, **self._kwargs)
        except Stop:
            pass
        finally:
            handle.remove()
        if not got:
            raise ReplayUnavailable(f"the model never reached {self.site.label()}")
        return got[0]

    # ----- table
    def add(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Row ids of ``inputs`` in the state table, computing states of unseen rows.  # [n]"""
        content = _content(inputs)
        if isinstance(content, str):
            raise ReplayUnavailable(f"replay cannot run these inputs: {content}")
        keys = sorted(content)
        if self.placeholder is None:
            self.placeholder = {k: content[k][:1] for k in keys}
        ids, new_rows = self._index.add(content, keys)
        ids = torch.from_numpy(ids)
        if len(new_rows):
            self._table = None
            sel = torch.from_numpy(new_rows)
            start = 0
            while start < len(new_rows):
                size = self.chunk or (1024 if not self._chunks else self._auto_chunk)
                part = {k: content[k][sel[start : start + size]] for k in keys}
                start += size
                states = self._prefix(part)
                self.n_forward_rows += states.shape[0]
                self._chunks.append(states)
                used = sum(c.numel() * c.element_size() for c in self._chunks)
                if used > self.max_bytes:
                    raise ReplayUnavailable(
                        f"replay state table exceeds {self.max_bytes / 2**20:.0f} MiB at {self.site.label()}; "
                        "use engine='pyvene' or fewer/shorter inputs"
                    )
        return ids

    @property
    def _auto_chunk(self) -> int:
        """Rows per prefix forward when none was given: ~64 MiB of site states, 64..16384 rows."""
        c = self._chunks[0]
        per_row = c[0].numel() * c.element_size()
        return int(min(16384, max(64, (64 << 20) // max(per_row, 1))))

    @property
    def table(self) -> torch.Tensor:
        """Every distinct input's state at the site.  # [m, seq, d]"""
        if self._table is None:
            if not self._chunks:
                raise ConfigError("the replay table is empty: add inputs first")
            self._table = torch.cat(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks = [self._table]
        return self._table

    # ----- suffix
    def run(self, states: torch.Tensor):
        """Model output when the site holds ``states`` (``[N, seq, d]``); upstream runs on one row."""
        if self.placeholder is None:
            raise ConfigError("add inputs before running the replay")
        seq = sequence_length(self.placeholder) if self.keep is None else len(self.keep)
        if states.dim() != 3 or states.shape[1] != seq:
            raise ConfigError(f"replay states must be [N, {seq}, d], got {list(states.shape)}")

        def swap(state):
            return states.to(state.dtype)

        handle = self._hook(swap)
        try:
            return self.model(**self.placeholder, **self._kwargs)
        finally:
            handle.remove()

    @torch.no_grad()
    def verify(self, inputs: Mapping[str, torch.Tensor], *, read=None, rows: int = 4, atol: float = 1e-4) -> float:
        """Max |replayed - plain| output over the first ``rows`` inputs; raises if > ``atol``.

        ``read`` (e.g. ``task.logits``) compares what the task reads instead of the raw
        output; required once :meth:`prune` has cut the tail's positions.
        """
        content = _content(inputs)
        if isinstance(content, str):
            raise ReplayUnavailable(f"replay cannot run these inputs: {content}")
        if self.keep is not None and read is None:
            raise ConfigError("a pruned replay must be verified on what the task reads: pass read=task.logits")
        part = {k: v[:rows] for k, v in content.items()}
        ids = self.add(part)
        states = self.table[ids] if self.keep is None else self.table[ids][:, self.keep]
        try:
            ref = self.model(**part, **self._kwargs)
            got = self.run(states)
            ref, got = (read(ref), read(got)) if read is not None else (_first_tensor(ref), _first_tensor(got))
        except (IndexError, RuntimeError) as err:
            raise ReplayUnavailable(f"replayed forward failed: {err}") from err
        if ref.shape != got.shape:
            raise ReplayUnavailable(f"replayed output has shape {list(got.shape)}, the model's {list(ref.shape)}")
        err = float((ref.float() - got.float()).abs().max())
        if not err <= atol:
            raise ReplayUnavailable(f"replayed outputs differ from plain forwards by {err:.2e} (> {atol:g})")
        return err

    def prune(self, inputs: Mapping[str, torch.Tensor], positions: Sequence[int], read) -> bool:
        """Run the tail on ``positions`` and the last position only, if that is exact here.

        Only for the last block's output (nothing after it mixes positions) and only
        if :meth:`verify` agrees on what ``read`` takes from the output; returns
        whether the replay is now pruned.
        """
        seq = sequence_length(inputs)
        keep = sorted({*positions, seq - 1})
        if not self.final or len(keep) == seq:
            return False
        self.keep = keep
        try:
            self.verify(inputs, read=read)
        except ReplayUnavailable:
            self.keep = None
            return False
        return True


def _first_tensor(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else first(output)
