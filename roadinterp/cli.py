"""The ``roadinterp`` command line: thin Typer wrappers over the library.

Every command validates through the library's own dataclasses and functions;
a :class:`~roadinterp.errors.RoadinterpError` becomes one ``error: ...`` line on
stderr with exit status 2 (``--debug`` shows the traceback). Commands are grouped
by the module they wrap; each group lives in its own section below.
"""

from __future__ import annotations

import inspect
import os
import sys

import typer

from roadinterp import bounds
from roadinterp._boundary import state
from roadinterp.errors import ConfigError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="roadinterp",
    help="RoAd rotations as pyvene interventions: alignment search, composition, batching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    state["debug"] = debug


# ----------------------------------------------------------------- commands
# (each command imports its modules lazily: `roadinterp --help` and usage errors load no torch)


# Option callbacks (roadinterp.bounds): every numeric and path option is checked at parse time
_TEXT = bounds.text_option()
_COUNT = bounds.int_option(maximum=bounds.MAX_EXAMPLES)
_SEED = bounds.int_option(minimum=0, maximum=bounds.MAX_SEED)


def _console(width: int | None = None):
    from rich.console import Console

    console = Console(stderr=False)
    if not console.is_terminal or width:  # pipes and logs: a fixed width, so the table is not cut to 80
        console = Console(stderr=False, width=width or 120)  # the results table fits 120 columns
    return console


# ----------------------------------------------------------- tasks & zoo
@app.command("tasks")
def tasks_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in and registered tasks."""
    from roadinterp.tasks import list_tasks

    rows = [{"name": t.name, "kind": t.kind, "variables": list(t.variables), "rivals": list(t.rivals),
             "description": t.description} for t in list_tasks()]
    if as_json:
        import json

        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="roadinterp tasks")
    for col in ("name", "kind", "variables", "rivals", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["kind"], ", ".join(r["variables"]) or "-", ", ".join(r["rivals"]) or "-",
                      r["description"])
    _console().print(table)


zoo_app = typer.Typer(help="Small models trained offline from the tasks (cached).", invoke_without_command=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.callback()
def zoo_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List zoo models: cached or not, held-out accuracy, size."""
    if ctx.invoked_subcommand is not None:
        return
    from roadinterp import _pyvene  # noqa: F401  (first: pretrained.py imports pyvene's MLP, whose import prints)
    from roadinterp import zoo

    rows = zoo.list_zoo()
    if as_json:
        import json

        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=f"roadinterp zoo (cache: {zoo.cache_dir()})")
    for col in ("name", "task", "arch", "params", "cached", "accuracy", "train s"):
        table.add_column(col, no_wrap=col == "name")  # a name is what a user copies: never split
    for r in rows:
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
        secs = "-" if r.get("train_seconds") is None else f"{r['train_seconds']:.1f}"
        params = "-" if r.get("n_params") is None else f"{r['n_params']:,}"
        table.add_row(r["name"], r["task"] or "-", r["arch"], params, "yes" if r["cached"] else "no", acc, secs)
    _console().print(table)


@zoo_app.command("train")
def zoo_train(name: str = typer.Argument(..., help="Zoo model name (see `roadinterp zoo`)."),
              seed: int = typer.Option(None, help="Override the entry's seed.", callback=_SEED),
              force: bool = typer.Option(False, "--force", help="Retrain even if cached.")) -> None:
    """Train (or retrain) one zoo model and cache it."""
    from roadinterp import zoo

    zoo.get_zoo_entry(name)
    if zoo.is_cached(name) and not force and seed is None:
        meta = zoo.zoo_meta(name)
        typer.echo(f"{name} is cached (accuracy {meta.get('accuracy')}); pass --force to retrain")
        return
    zoo.train_zoo_model(name, seed=seed, progress=True)
    meta = zoo.zoo_meta(name)
    typer.echo(f"{name}: held-out accuracy {meta.get('accuracy'):.4f}, trained in {meta.get('train_seconds'):.1f}s")


# ------------------------------------------------------------------ align
def _shown(default) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, tuple)):
        return ",".join(map(str, default))
    return str(default)


def _option(fl) -> typer.models.OptionInfo:
    """The Typer option of one config field (roadinterp.search.options.Flag): help, default, bounds."""
    if fl.kind == "int":
        check = bounds.int_option(minimum=int(fl.minimum if fl.minimum is not None else 1),
                                  maximum=int(fl.maximum) if fl.maximum is not None else bounds.MAX_EXAMPLES)
    elif fl.kind == "float":
        check = bounds.float_option(minimum=fl.minimum, maximum=fl.maximum)
    elif fl.kind == "str":
        check = _TEXT
    else:
        check = None
    text = f"Comma-separated. {fl.help}" if fl.kind in ("ints", "strs") else fl.help
    names = [fl.flag] + ([fl.short] if fl.short else [])
    return typer.Option(None, *names, help=text, show_default=_shown(fl.default), callback=check)


_ALIGN_OWN = {  # align's own options (not config fields): where the run goes and what is printed
    "config_file": (str, typer.Option(None, "--config", help="JSON file with SearchConfig fields (flags override it).",
                                      callback=_TEXT)),
    "out": (str, typer.Option(None, "--out", "-o", help="Run directory (default runs/<task>).", callback=_TEXT)),
    "resume": (bool, typer.Option(False, "--resume", help="Skip cells already finished in --out.")),
    "overwrite": (bool, typer.Option(False, "--overwrite", help="Discard an existing run in --out (refused while "
                                                              "another process holds the run's lock).")),
    "as_json": (bool, typer.Option(False, "--json", help="Print the results as JSON (no table, no progress).")),
    "report": (bool, typer.Option(True, "--report/--no-report", help="Write report.html into the run directory.")),
    "wide": (bool, typer.Option(False, "--wide", help="Every control column in the table (wider than 120 columns).")),
}


def _with_config_options(fn):
    """``fn(**values)`` with one option per SearchConfig / DIIConfig / RunOptions field, then its own."""
    from roadinterp.search.options import config_flags

    kinds = {"int": int, "float": float, "bool": bool}
    params, hints = [], {}
    for fl in config_flags():
        hints[fl.name] = kinds.get(fl.kind, str)
        params.append(inspect.Parameter(fl.name, inspect.Parameter.KEYWORD_ONLY, default=_option(fl),
                                        annotation=hints[fl.name]))
    for name, (typ, opt) in _ALIGN_OWN.items():
        hints[name] = typ
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ))
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = hints
    return fn


@app.command("align")
@_with_config_options
def align_cmd(**values) -> None:
    """Causal alignment search: train a DII per cell, score held-out IIA with controls."""
    import json
    from pathlib import Path

    from roadinterp import io
    from roadinterp.search.options import build
    from roadinterp.search.pipeline import search
    from roadinterp.store import is_run_dir, lock_run
    from roadinterp.summary import best_alignment, summarize

    own = {k: values.pop(k) for k in _ALIGN_OWN}
    if own["resume"] and own["overwrite"]:
        raise ConfigError("--resume and --overwrite contradict each other (continue the run, or discard it); "
                          "pass one of them")
    base: dict = {}
    if own["config_file"]:
        base = io.load_json(own["config_file"], "config file")
        if not isinstance(base, dict):
            raise ConfigError(f"config file {own['config_file']} must hold a JSON object")
    cfg, options = build(values, base)  # the config, built (and validated) once
    out = own["out"] or f"runs/{cfg.task}"
    io.prepare_output(out, overwrite=own["overwrite"], ours=is_run_dir)
    state["interrupted"] = (f"interrupted: finished cells are saved in {out}; "
                            f"rerun the same command with --resume to continue")
    console = _console()
    progress = None if own["as_json"] else _progress(console)
    bar = {}

    def on_cell(cell, row, done, total):
        if progress is not None:
            if "id" not in bar:  # started at the first cell: a run refused before any prints nothing
                progress.start()
                bar["id"] = progress.add_task("", total=total, completed=done - 1)
            progress.update(bar["id"], completed=done,
                            description=f"{cell.label}: IIA {row['iia']:.3f}")

    # one writer per run directory: the lock is held from before the store opens until the report is written
    with lock_run(out):
        try:
            table = search(cfg, options=options, out=out, resume=own["resume"], overwrite=own["overwrite"],
                           on_cell=on_cell)
        finally:
            if "id" in bar:
                progress.stop()
        summary = summarize(table)
        best = best_alignment(table)
        if own["report"]:
            from roadinterp.viz.report import write_report

            write_report(out, Path(out) / "report.html")
    if own["as_json"]:
        typer.echo(json.dumps({"out": out, "cells": table.to_dict(orient="records"),
                               "summary": summary.to_dict(orient="records"), "best": best}, default=str))
        return
    from roadinterp.viz.terminal import print_summary

    print_summary(_console(240) if own["wide"] else console, summary, best, out, wide=own["wide"])


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]align[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=console, transient=False)


# ------------------------------------------------------------------ screen
from roadinterp.screen.options import with_options as _screen_options  # noqa: E402  (no torch: options only)


@app.command("screen")
@_screen_options
def screen_cmd(**values) -> None:
    """Screen every layer x every prompt position: exact whole-vector patch IIA and AtP (docs/screen.md)."""
    from roadinterp.screen.options import run

    run(values, _console())


# ------------------------------------------------------------ train & compose
@app.command("train")
def train_cmd(
    out: str = typer.Option(..., "--out", "-o", help="Directory to save the adapter (safetensors + JSON).", callback=_TEXT),
    data: str = typer.Option(None, "--data", help="JSONL of {prompt, completion} or {messages} rows: fit the "
                             "adapter to the completions (a behaviour).", callback=_TEXT),
    task: str = typer.Option(None, "--task", "-t", help="Or: a task whose labels the adapter is fitted to.",
                             callback=_TEXT),
    model: str = typer.Option(None, "--model", "-m", help="zoo:NAME, .gguf file, local HF dir or hub id "
                              "(--task: default the task's zoo model).", callback=_TEXT),
    layers: str = typer.Option(None, "--layers", help="Comma-separated layers [--data: 15; --task: 0]."),
    positions: str = typer.Option(None, "--positions", help="--data: last-prompt | prompt | all [last-prompt]; "
                                  "--task: last | all | index | task-named position [all].", callback=_TEXT),
    placement: str = typer.Option("site", "--placement", help="--data: site (the residual stream at the output "
                                  "of --layers) or linear (the Linears' outputs in --layers)."),
    template: str = typer.Option("chat", "--template", help="--data: chat (the tokenizer's own chat template) or "
                                 "raw (base models)."),
    variant: str = typer.Option(None, "--variant", help="road_1, road_2 or road_4 [--data: road_1; --task: road_2].",
                                callback=_TEXT),
    blocks: str = typer.Option(None, "--blocks", help="The adapter's 2D blocks: a-b ranges, or (--data) k/m, e.g. "
                               "1/2 = the first half [all]."),
    lr: float = typer.Option(None, "--lr", help="Learning rate [--data: 5e-3; --task: 0.05].",
                             callback=bounds.float_option(minimum=0.0, open_minimum=True)),
    epochs: int = typer.Option(5, "--epochs", help="--data: passes over the rows.", callback=bounds.int_option()),
    batch_size: int = typer.Option(8, "--batch-size", help="--data: rows per step.", callback=bounds.int_option()),
    preserve: str = typer.Option(None, "--preserve", help="--data: JSONL of prompts whose base next-token "
                                 "distribution the adapter must keep (a KL-to-base term).", callback=_TEXT),
    preserve_weight: float = typer.Option(1.0, "--preserve-weight", help="--data: weight of the KL term.",
                                          callback=bounds.float_option(minimum=0.0)),
    component: str = typer.Option("block_output", "--component", help="--task: pyvene component.", callback=_TEXT),
    steps: int = typer.Option(300, "--steps", help="--task: optimiser steps.",
                              callback=bounds.int_option(maximum=bounds.MAX_STEPS)),
    n_train: int = typer.Option(4096, "--n-train", help="--task: training examples.", callback=_COUNT),
    seed: int = typer.Option(0, "--seed", help="Seed (init, data, order).", callback=_SEED),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if it is not a roadinterp save."),
) -> None:
    """Fit a RoAd adapter and save it: to text completions (--data) or to a task's labels (--task)."""
    from roadinterp.adapters import recipes

    if (data is None) == (task is None):
        raise ConfigError("pass exactly one of --data FILE.jsonl (text completions) and --task NAME (a task's labels)")
    if data is not None:
        if model is None:
            raise ConfigError("--data needs --model (a text model: zoo:smollm2-135m, a .gguf file or an HF directory)")
        layer_list = bounds.parse_ints("--layers", layers or "15")
        adapter, h = recipes.train_data(
            data, out, model=model, template=template, placement=placement, positions=positions or "last-prompt",
            layers=layer_list, blocks=blocks, variant=variant or "road_1", lr=lr or 5e-3, epochs=epochs,
            batch_size=batch_size, seed=seed, preserve=preserve, preserve_weight=preserve_weight, overwrite=overwrite)
        epoch_loss = h.get("epoch_loss") or []
        curve = " -> ".join(f"{x:.3f}" for x in epoch_loss)
        typer.echo(f"saved {out}: {adapter.n_trainable():,} trainable parameters; loss per epoch {curve}")
        return
    adapter, meta = recipes.train_task(
        task, out, model=model, layers=bounds.parse_ints("--layers", layers or "0"), component=component,
        positions=positions or "all", variant=variant or "road_2", blocks=bounds.parse_blocks("--blocks", blocks),
        steps=steps, lr=lr or 0.05, n_train=n_train, seed=seed, overwrite=overwrite)
    typer.echo(f"saved {out}: held-out accuracy {meta['test_accuracy']:.3f} (base model {meta['base_accuracy']:.3f}), "
               f"{adapter.n_trainable():,} trainable parameters")


@app.command("compose")
def compose_cmd(
    adapters: list[str] = typer.Argument(..., help="Saved adapter directories (names = directory names)."),
    out: str = typer.Option(..., "--out", "-o", help="Directory for the composed adapter.", callback=_TEXT),
    weights: str = typer.Option(None, "--weights", help="Per-adapter lambda, e.g. op=1,format=0.5."),
    resolve: str = typer.Option("error", "--resolve", help="Overlapping blocks: error, first or mean."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if it is not a roadinterp save."),
) -> None:
    """Compose adapters trained on disjoint 2D blocks into one (exact)."""
    from roadinterp import io
    from roadinterp.adapters.compose import compose

    io.prepare_output(out, overwrite=overwrite, ours=io.is_saved)
    loaded, w = io.load_adapters(adapters, weights)
    composed = compose(loaded, weights=w, resolve=resolve)
    io.save(composed, out, overwrite=overwrite)
    owners = composed.meta.get("owners", {})
    typer.echo(f"saved {out}: " + ", ".join(f"{k} owns {len(v)} blocks" for k, v in owners.items()))


@app.command("generate")
def generate_cmd(
    model: str = typer.Option(..., "--model", "-m", help="zoo:NAME, a .gguf file or a local HF directory with a "
                              "tokenizer.", callback=_TEXT),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A prompt (repeat for a batch)."),
    adapter: list[str] = typer.Option(None, "--adapter", "-a",
                                      help="Saved RoAd adapter directory (repeat; names = directory names)."),
    weights: str = typer.Option(None, "--weights", help="Per-adapter lambda in the composition, e.g. upper=1,frame=0.5."),
    compare: bool = typer.Option(False, "--compare",
                                 help="Also generate with the base model and each adapter alone (one mixed batch)."),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", help="Greedy tokens to generate.",
                                       callback=bounds.int_option()),
    template: str = typer.Option("chat", "--template", help="chat (the tokenizer's own chat template) or raw."),
) -> None:
    """Generate with adapters composed (weights = lambda per adapter); --compare adds base and each alone.

    Every (prompt, condition) pair is one row of a single mixed batch: each row is routed to its own
    adapter; site adapters at prompt positions act in the prefill, and generated tokens see them
    through the KV cache.
    """
    from roadinterp.adapters.recipes import generate_texts

    for c, p, text in generate_texts(model, prompt, adapters=adapter or (), weights=weights, compare=compare,
                                     max_new_tokens=max_new_tokens, template=template):
        typer.echo(f"[{c}] {p!r} -> {text!r}")


# --------------------------------------------------------------------- bench
@app.command("bench")
def bench_cmd(
    name: str = typer.Argument(..., help="batching, dii, lm or search."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (seconds; for smoke tests)."),
    model: str = typer.Option(None, "--model", help="batching only: a real LM (e.g. zoo:smollm2-135m)."),
    reps: int = typer.Option(None, "--reps", help="batching --model only: repetitions (default 3).",
                             callback=bounds.int_option()),
) -> None:
    """Benchmarks measured as ratios against a baseline in the same run (see docs/performance.md)."""
    import json

    from roadinterp import bench
    from roadinterp.errors import unknown

    if name not in bench.BENCHES:
        raise unknown("benchmark", name, list(bench.BENCHES))
    if (model is not None or reps is not None) and name != "batching":
        raise ConfigError(f"--model/--reps are options of 'bench batching', not of 'bench {name}'")
    if reps is not None and model is None:
        raise ConfigError("--reps sets the repetitions of the real-LM setting; pass --model too")
    result = bench.run(name, quick=quick, **({} if model is None else {"model": model, "reps": reps}))
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    from rich.table import Table

    t = Table(title=f"roadinterp bench {name}")
    t.add_column("ratio")
    t.add_column("value")
    for k, v in result.get("ratios", {}).items():
        t.add_row(k, "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
    _console().print(t)


# ------------------------------------------------------------ plot & report
plot_app = typer.Typer(help="Figures of learned angles (plotly .html or matplotlib .png/.pdf).")
app.add_typer(plot_app, name="plot")


@plot_app.command("angles")
def plot_angles_cmd(
    path: str = typer.Argument(..., help="A saved adapter directory or a run directory.", callback=_TEXT),
    out: str = typer.Option(..., "--out", "-o", help="Output file: .html (interactive), .png or .pdf (static).",
                            callback=_TEXT),
    kind: str = typer.Option("histogram", "--kind", help="histogram or polar."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Plot the distribution of learned angles."""
    from roadinterp import io
    from roadinterp.viz import plot_angles

    io.prepare_output(out, overwrite=overwrite)
    typer.echo(str(plot_angles(path, out, kind=kind)))


@app.command("report")
def report_cmd(
    run: str = typer.Argument(..., help="Run directory written by `roadinterp align`.", callback=_TEXT),
    out: str = typer.Option(None, "--out", "-o", help="Output .html (default RUN/report.html).", callback=_TEXT),
    cell: list[str] = typer.Option(None, "--cell", help="Also show this cell's learned angles and subspaces "
                                   "(family|layer|component|position|size, as in results.csv's key); repeatable."),
    figures: str = typer.Option(None, "--figures", help="Also write the key figures as PNG and PDF into this directory.",
                                callback=_TEXT),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Write one self-contained HTML page (no network requests) for an align run."""
    from pathlib import Path

    from roadinterp import io
    from roadinterp.viz.report import write_figures, write_report

    if out:  # RUN/report.html (the default) is the run's own file; anything else is checked
        io.prepare_output(out, overwrite=overwrite or Path(out).resolve() == (Path(run) / "report.html").resolve())
    cells = list(cell or [])
    typer.echo(str(write_report(run, Path(out) if out else Path(run) / "report.html", cells)))
    if figures:
        for p in write_figures(run, figures, cells):
            typer.echo(str(p))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the commands inside the one error boundary (roadinterp._boundary)."""
    from roadinterp._boundary import run

    run(app, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":  # python -m roadinterp.cli: the same process exit as the console script
    from _roadinterp_entry import run_process

    run_process(main)
