"""The ``roadinterp`` console script's first module: Ctrl-C is clean from the first instant.

``roadinterp.cli`` lives inside the package, and importing the package loads torch,
transformers and pyvene (one to two seconds). A Ctrl-C (or SIGTERM) in that time would
surface as Python's ``KeyboardInterrupt`` traceback from deep inside the import system.
This module lives outside the package, so it loads at once: it installs a handler that
prints one line and exits 130 (143 for SIGTERM), then imports the CLI, whose own
handlers (:func:`roadinterp.cli.main`) take over before any work starts. Nothing is
lost by exiting here: no command has begun.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted(signum, frame) -> None:  # pragma: no cover - exercised by subprocess tests
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(143 if signum == signal.SIGTERM else 130)  # mid-import: no finally block is worth running


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    from roadinterp.cli import main as cli_main

    cli_main()


if __name__ == "__main__":  # python -m _roadinterp_entry ARGS: what the console script runs
    main()
