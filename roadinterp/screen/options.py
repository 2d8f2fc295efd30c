"""``roadinterp screen``'s options (one per ScreenConfig field, help from its metadata) and its body.

cli.py registers the command with :func:`with_options` and calls :func:`run`; nothing here
imports torch until the command runs, so ``roadinterp --help`` stays light.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields

import typer

from roadinterp import bounds
from roadinterp.screen.config import ScreenConfig

_LISTS = {"variables": "strs", "layers": "ints"}
_OWN = {  # the command's own options (not config fields)
    "out": (str, typer.Option(None, "--out", "-o", help="Directory for screen.json, .csv, .html, .png "
                                                        "(default runs/screen-<task>).", callback=bounds.text_option())),
    "resume": (bool, typer.Option(False, "--resume", help="Show the screen already in --out (same config) "
                                                          "instead of computing it again.")),
    "overwrite": (bool, typer.Option(False, "--overwrite", help="Replace what --out holds.")),
    "as_json": (bool, typer.Option(False, "--json", help="Print screen.json's content (no table, no progress).")),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def with_options(fn):
    """``fn(**values)`` with one Typer option per ScreenConfig field, then the command's own."""
    params, hints = [], {}
    for f in fields(ScreenConfig):
        help_text, default = f.metadata["help"], f.default if f.default is not MISSING else None
        if f.name in _LISTS:
            typ, opt = str, typer.Option(None, _flag(f.name), help=f"Comma-separated. {help_text}")
        elif f.name == "atp":
            typ, opt = bool, typer.Option(True, "--atp/--no-atp", help=help_text)
        elif isinstance(default, int) or f.name == "threads":
            typ = int
            opt = typer.Option(None, _flag(f.name), help=help_text, show_default=str(default).lower(),
                               callback=bounds.int_option(minimum=0 if f.name == "seed" else 1,
                                                          maximum=bounds.MAX_SEED if f.name == "seed" else None))
        else:
            typ = str
            opt = typer.Option(None, _flag(f.name), *(["-t"] if f.name == "task" else ["-m"] if f.name == "model"
                                                      else []), help=help_text, show_default=str(default),
                               callback=bounds.text_option())
        hints[f.name] = typ
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ))
    for name, (typ, opt) in _OWN.items():
        hints[name] = typ
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ))
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = hints
    return fn


def build(values: dict) -> ScreenConfig:
    """The ScreenConfig of the given option values (unset ones keep the field defaults)."""
    kw = {}
    for name, value in values.items():
        if value is None:
            continue
        if name in _LISTS:
            parse = bounds.parse_ints if _LISTS[name] == "ints" else bounds.parse_strs
            value = parse(_flag(name), value)
        kw[name] = value
    return ScreenConfig(**kw)


def run(values: dict, console) -> None:
    """The command: build the config, check --out, screen (or reuse), write, print."""
    import json

    from roadinterp._boundary import state
    from roadinterp.screen import output

    own = {k: values.pop(k) for k in _OWN}
    config = build(values)
    out = own["out"] or f"runs/screen-{config.task.replace('/', '_').replace(':', '_')}"
    result = output.prepare(out, config, resume=own["resume"], overwrite=own["overwrite"])
    if result is None:
        from roadinterp.screen.run import screen

        state["interrupted"] = f"interrupted: nothing was written to {out}"
        progress = None if own["as_json"] else _progress(console)
        bar = {}

        def tick(done, total, what):
            if "id" not in bar:
                progress.start()
                bar["id"] = progress.add_task("", total=total)
            progress.update(bar["id"], completed=done, description=what)

        try:
            result = screen(config, progress=tick if progress is not None else None)
        finally:
            if "id" in bar:
                progress.stop()
        output.save(result, out)
    if own["as_json"]:
        typer.echo(json.dumps({"out": out, **result.to_json()}, default=str))
        return
    output.print_table(console, result, out)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]screen[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=console, transient=True)
