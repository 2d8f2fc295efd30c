"""Scoped changes to torch's process-wide state: thread count and the global generator.

Every loop that needs one of these (DII, adapters, the zoo, interventions whose init
draws from torch's global generator) goes through these two context managers, so the
caller finds its thread count and its random stream as it left them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (``None``/0: leave as is); restore the old count after."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's global generator seeded by ``seed`` (``None``: untouched), then
    give the caller its own stream back (``torch.random.fork_rng``). For inits we do not control
    (``nn.Linear``, pyvene's rotations) that draw from the global generator."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
