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

    try:
        cli_main()
    except SystemExit as e:
        if e.code in (130, 143):  # interrupted: the boundary has printed its line and unwound every finally
            _exit_now(e.code)
        raise


def _exit_now(code: int) -> None:  # pragma: no cover - exercised by subprocess tests
    """Exit with ``code`` itself, not as killed by SIGINT.

    CPython remembers a KeyboardInterrupt that once escaped code run through ``PyRun_*``
    (pybind11's ``eval`` in an extension's import, for one) and, after finalisation, turns
    *any* exit status into death by SIGINT (status -2), even after the boundary caught the
    interrupt and called ``sys.exit(130)``. So the interrupted path finishes by hand: the
    atexit functions (multiprocessing's clean-up among them), the streams, then ``os._exit``.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":  # python -m _roadinterp_entry ARGS: what the console script runs
    main()
