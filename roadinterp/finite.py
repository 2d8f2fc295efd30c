"""The non-finite guard every training loop calls once per step.

A NaN or infinite loss or gradient (too high a learning rate, an inf in a composed
weight, a hostile input) would otherwise flow into the parameters and end up saved:
a NaN adapter, a NaN IIA in a results table. :func:`check_step` runs after
``backward()`` and before ``optimizer.step()``, so the parameters are never updated
with the bad gradient, and raises :class:`~roadinterp.errors.NonFiniteError` naming
the loop, the step and what went non-finite; callers save only after their loop
returns, so nothing from the run is written.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from roadinterp.errors import NonFiniteError


def check_step(loss: torch.Tensor, params: Iterable[torch.nn.Parameter], *, what: str, step: int,
               hint: str = "lower the learning rate (--lr) or check the inputs") -> float:
    """``float(loss)``, or NonFiniteError if the loss or any gradient of ``params`` is NaN/inf."""
    value = float(loss.detach())
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteError(f"{what}: the loss became {value} at step {step}; stopped, nothing from this run "
                             f"was saved; {hint}")
    grads = [p.grad for p in params if p.grad is not None]
    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
        raise NonFiniteError(f"{what}: a gradient became NaN or infinite at step {step} (loss {value:.4g}); "
                             f"stopped, nothing from this run was saved; {hint}")
    return value
