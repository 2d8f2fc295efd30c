"""The CLI's one error boundary and its signal handling (what ``roadinterp.cli.main`` runs in).

Every user mistake -- a :class:`~roadinterp.errors.RoadinterpError`, a Typer/Click usage
error, an OS refusal (permission, disk full) or memory exhaustion -- is one ``error: ...``
line on stderr with exit status 2. Anything else is a bug or a library failing: one
``error: <Type>: <message>`` line and the hint to rerun with ``--debug`` (exit 1).
``--debug`` re-raises with the traceback. Ctrl-C exits 130 and SIGTERM 143, each with one
line (``state["interrupted"]``, which ``align`` sets to its ``--resume`` hint). Imports no
torch: usage errors and ``--help`` return at once.
"""

from __future__ import annotations

import sys

import typer

from roadinterp.errors import RoadinterpError

state = {"debug": False, "interrupted": "interrupted", "signal": None}


def click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage-error, exit, abort) classes of click *and* of the copy of click that Typer bundles.

    typer >= 0.16 vendors click as ``typer._click`` (its own ClickException, Exit and Abort),
    older typer uses the real ``click``; match both so the boundary does not depend on the version.
    """
    usage, exits, aborts = [], [typer.Exit], [typer.Abort]
    modules = []
    for name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            modules.append(__import__(name, fromlist=["_"]))
        except ImportError:
            pass
    for m in modules:
        usage += [c for c in (getattr(m, "ClickException", None),) if isinstance(c, type)]
        exits += [c for c in (getattr(m, "Exit", None),) if isinstance(c, type)]
        aborts += [c for c in (getattr(m, "Abort", None),) if isinstance(c, type)]
    return tuple(usage), tuple(exits), tuple(aborts)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so cleanup runs as for Ctrl-C (exit 143)."""


def _on_signal(signum, frame):  # pragma: no cover - exercised by subprocess tests
    import signal

    # remembered because Typer turns a KeyboardInterrupt into a plain return code of 130
    state["signal"] = signum
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM stop the run through Python (finally blocks, stores closed, one line).

    Installed unconditionally: a process started with SIGINT ignored (``nohup roadinterp align ... &``,
    background jobs of non-interactive shells) inherits SIG_IGN and could otherwise not be interrupted.
    """
    import signal

    state["signal"] = None
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    if hasattr(signal, "pthread_sigmask"):  # a blocked mask is inherited too
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _exit_interrupted(terminated: bool = False) -> None:
    typer.echo(state["interrupted"], err=True)
    sys.exit(143 if terminated else 130)


def error_line(message: str) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message held
    typer.echo(f"error: {text}", err=True)


def _if_interrupted() -> None:
    """Exit as interrupted when a signal arrived, whatever exception it surfaced as.

    A Ctrl-C that lands inside a library's lazy import comes back wrapped (transformers turns the
    KeyboardInterrupt into "ModuleNotFoundError: Could not import module 'PreTrainedModel'"):
    the signal, not the exception, says what happened.
    """
    import signal

    if state.get("signal") is not None:
        _exit_interrupted(state["signal"] == signal.SIGTERM)


def run(app, args: list[str]) -> None:
    """Run the Typer ``app`` on ``args`` inside the boundary (see the module docstring)."""
    debug = "--debug" in args
    state["interrupted"] = "interrupted"
    usage_errors, exits, aborts = click_exceptions()
    try:
        install_signal_handlers()
        rc = app(args=args, standalone_mode=False, prog_name="roadinterp")
        if state.get("signal") is not None:  # Typer returned 130 for the KeyboardInterrupt
            _exit_interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except (KeyboardInterrupt, Terminated) as e:
        _exit_interrupted(isinstance(e, Terminated))
    except exits as e:
        if state.get("signal") is not None or isinstance(e.__cause__, KeyboardInterrupt):
            _exit_interrupted()
        sys.exit(getattr(e, "exit_code", 0))
    except aborts:  # click turns a Ctrl-C during a prompt into Abort
        _exit_interrupted()
    except RoadinterpError as e:
        _if_interrupted()
        if debug:
            raise
        error_line(str(e))
        sys.exit(2)
    except usage_errors as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `roadinterp` / group: the help is the answer
            typer.echo(e.format_message())
            sys.exit(0)
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        error_line(f"{e.format_message()}{where}")
        sys.exit(2)
    except MemoryError:
        if debug:
            raise
        error_line("out of memory; use smaller counts (--n-train, --n-test, --seeds, --workers)")
        sys.exit(2)
    except OSError as e:  # the environment refused (permissions, disk full, a path that is a file): not a bug
        _if_interrupted()
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        error_line(f"{e.strerror or e}{where} (rerun with --debug for the traceback)")
        sys.exit(2)
    except Exception as e:  # a bug or a library failing: one line, the traceback only under --debug
        _if_interrupted()
        if debug:
            raise
        error_line(f"{type(e).__name__}: {e} (run with --debug for the traceback)")
        sys.exit(1)
