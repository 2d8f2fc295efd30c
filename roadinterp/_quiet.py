"""Silence known third-party chatter before anything heavy is imported.

roadinterp's users read its own messages: one ``error:`` line, a progress bar, a table.
Libraries it depends on print things that say nothing about the user's run, and each new
release can add more. The known ones are muted here, once, on ``import roadinterp``
(this module sorts first in ``roadinterp/__init__.py``), by name: a logger's level or a
warning filter on one message and module. Nothing else is filtered, so a real warning
about the user's run (a bad config, a dtype cast, a non-finite loss) still shows.

``tests/test_quiet.py`` runs the installed commands under ``HF_HUB_OFFLINE=1`` and
asserts exactly what they print on stderr, so the next such change fails a test instead
of a user's terminal.
"""

from __future__ import annotations

import logging
import warnings

# logger name -> why it is muted (each is a library's own logger, set before it logs)
QUIET_LOGGERS = {
    # transformers 5.x imports `kernels`, which warns three times per import under
    # HF_HUB_OFFLINE=1: "Skipping publisher trust check for 'kernels-community/...'"
    "kernels": "hub-offline notices on every import",
    # pyvene logs on every IntervenableModel that uses_fast / is loaded
    "pyvene": "per-model notices",
}

# (message regex, category, module regex): deprecation notices from pinned libraries
QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # peft 0.21 reads transformers 5.25's deprecated property on every get_peft_model (bench
    # batching's peft arms, the peft interop): a notice to peft's authors, not to the user
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
)


def quiet() -> None:
    """Mute the known third-party chatter (idempotent)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message, category, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


quiet()
