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

    run_process(cli_main)


def run_process(fn) -> None:
    """Run ``fn`` (a CLI main) as the whole process; an interrupted exit (130/143) keeps its status.

    The suite saw, rarely, a run interrupted early in start-up print the boundary's one line and
    then end with status -2 (killed by SIGINT) instead of ``sys.exit(130)``'s 130: 2 of 27 SIGINT
    delays between 0.1 and 5 s, none at the same delays after this change (0 of 40). Which part of
    interpreter finalisation turns the exit into SIGINT was not pinned down (a KeyboardInterrupt
    left behind by ``PyRun_String`` was tried and is not it). So an interrupted run does not
    enter finalisation: the boundary has printed its line and unwound every ``finally`` by now;
    the atexit functions run (multiprocessing's clean-up among them), the streams are flushed,
    and ``os._exit`` ends the process with the status. Every other exit is Python's own.
    """
    try:
        fn()
    except SystemExit as e:
        if e.code in (130, 143):
            _exit_now(e.code)
        raise


def _exit_now(code: int) -> None:
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
