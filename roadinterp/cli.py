"""The ``roadinterp`` command line: thin Typer wrappers over the library.

Every command validates through the library's own dataclasses and functions;
a :class:`~roadinterp.errors.RoadinterpError` becomes one ``error: ...`` line on
stderr with exit status 2 (``--debug`` shows the traceback). Commands are grouped
by the module they wrap; each group lives in its own section below.
"""

from __future__ import annotations

import os
import sys

import typer

from roadinterp.errors import RoadinterpError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="roadinterp",
    help="RoAd rotations as pyvene interventions: alignment search, composition, batching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    state["debug"] = debug


def fail(message: str) -> "typer.Exit":
    """Print one error line and return an Exit(2) to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


# ----------------------------------------------------------------- commands
# (each section imports its module lazily so `roadinterp --help` stays fast)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: RoadinterpError -> one line, exit 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except RoadinterpError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished work is saved; rerun with --resume to continue", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
