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

from roadinterp import bounds
from roadinterp.errors import ConfigError, RoadinterpError
from roadinterp.options import align_help as _help

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="roadinterp",
    help="RoAd rotations as pyvene interventions: alignment search, composition, batching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
state = {"debug": False, "interrupted": "interrupted"}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    state["debug"] = debug


# ----------------------------------------------------------------- commands
# (each section imports its module lazily so `roadinterp --help` stays fast)


# Option callbacks (roadinterp.bounds): every numeric and path option is checked at parse time
_TEXT = bounds.text_option()
_COUNT = bounds.int_option(maximum=bounds.MAX_EXAMPLES)
_SEED = bounds.int_option(minimum=0, maximum=bounds.MAX_SEED)


def _console():
    from rich.console import Console

    console = Console(stderr=False)
    if not console.is_terminal:  # pipes and logs: wide enough that the result table is not truncated
        console = Console(stderr=False, width=240)
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
    from roadinterp import zoo

    rows = zoo.list_zoo()
    if as_json:
        import json

        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=f"roadinterp zoo (cache: {zoo.cache_dir()})")
    for col in ("name", "task", "arch", "params", "cached", "accuracy", "train s"):
        table.add_column(col)
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
@app.command("align")
def align_cmd(
    # help of the config flags: the SearchConfig / DIIConfig field metadata (roadinterp.options)
    task: str = typer.Option(None, "--task", "-t", help=_help("task"), callback=_TEXT),
    model: str = typer.Option(None, "--model", "-m", help=_help("model"), callback=_TEXT),
    layers: str = typer.Option(None, "--layers", help=_help("layers")),
    component: str = typer.Option(None, "--component", help=_help("components")),
    positions: str = typer.Option(None, "--positions", help=_help("positions")),
    family: str = typer.Option(None, "--family", help=_help("families")),
    size: str = typer.Option(None, "--size", help=_help("sizes")),
    variables: str = typer.Option(None, "--variables", help=_help("variables")),
    seeds: int = typer.Option(None, "--seeds", help=_help("seeds"), callback=bounds.int_option(maximum=bounds.MAX_SEEDS)),
    controls: bool = typer.Option(None, "--controls/--no-controls", help=_help("controls")),
    epochs: int = typer.Option(None, "--epochs", help=_help("dii.epochs"),
                               callback=bounds.int_option(maximum=bounds.MAX_EPOCHS)),
    n_train: int = typer.Option(None, "--n-train", help=_help("dii.n_train"), callback=_COUNT),
    n_test: int = typer.Option(None, "--n-test", help=_help("dii.n_test"), callback=_COUNT),
    batch_size: int = typer.Option(None, "--batch-size", help=_help("dii.batch_size"), callback=_COUNT),
    lr: float = typer.Option(None, "--lr", help=_help("dii.lr"), callback=bounds.float_option(minimum=0.0)),
    mode: str = typer.Option(None, "--mode", help=_help("dii.mode"), callback=_TEXT),
    variant: str = typer.Option(None, "--variant", help=_help("dii.variant"), callback=_TEXT),
    depth: int = typer.Option(None, "--depth", help=_help("dii.depth"), callback=bounds.int_option(maximum=64)),
    threads: int = typer.Option(None, "--threads", help=_help("dii.threads"),
                                callback=bounds.int_option(minimum=0, maximum=1024)),
    config_file: str = typer.Option(None, "--config", help="JSON file with SearchConfig fields (flags override it).",
                                    callback=_TEXT),
    out: str = typer.Option(None, "--out", "-o", help="Run directory (default runs/<task>).", callback=_TEXT),
    resume: bool = typer.Option(False, "--resume", help="Skip cells already finished in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard an existing run in --out (refused while another process holds the run's lock)."),
    executor: str = typer.Option("local", "--executor", help="local or ray."),
    workers: int = typer.Option(2, "--workers", help="Local executor: cells trained in parallel processes.",
                                callback=bounds.int_option(maximum=bounds.MAX_WORKERS)),
    batched: bool = typer.Option(True, "--batched/--sequential", help="Train the seeds of a RoAd-family cell in one batched forward."),
    engine: str = typer.Option(None, "--engine", help=_help("dii.engine"), callback=_TEXT),
    device: str = typer.Option("auto", "--device", help="Where the frozen model runs: auto (a GPU if there is one), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("float32", "--dtype", help="The frozen model's dtype: float32, bfloat16 or float16 (interventions train in fp32)."),
    ray_address: str = typer.Option(None, "--ray-address", help="Address of an existing Ray cluster.", callback=_TEXT),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (no table, no progress)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html into the run directory."),
) -> None:
    """Causal alignment search: train a DII per cell, score held-out IIA with controls."""
    import json
    from pathlib import Path

    from roadinterp import io
    from roadinterp.search import SearchConfig, search
    from roadinterp.store import is_run_dir, lock_run
    from roadinterp.summary import best_alignment, summarize

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other (continue the run, or discard it); "
                          "pass one of them")
    base: dict = {}
    if config_file:
        base = io.load_json(config_file, "config file")
        if not isinstance(base, dict):
            raise ConfigError(f"config file {config_file} must hold a JSON object")
    flags = {
        "task": task, "model": model, "layers": bounds.parse_ints("--layers", layers),
        "components": bounds.parse_strs("--component", component),
        "positions": bounds.parse_strs("--positions", positions), "families": bounds.parse_strs("--family", family),
        "sizes": bounds.parse_ints("--size", size), "variables": bounds.parse_strs("--variables", variables),
        "seeds": seeds, "controls": controls,
    }
    dii_flags = {"epochs": epochs, "n_train": n_train, "n_test": n_test, "batch_size": batch_size, "lr": lr,
                 "mode": mode, "variant": variant, "depth": depth, "threads": threads}
    merged = {**base, **{k: v for k, v in flags.items() if v is not None}}
    cfg = SearchConfig.from_json(merged).with_dii(**{k: v for k, v in dii_flags.items() if v is not None})
    out = out or f"runs/{cfg.task}"
    io.prepare_output(out, overwrite=overwrite, ours=is_run_dir)
    state["interrupted"] = (f"interrupted: finished cells are saved in {out}; "
                            f"rerun the same command with --resume to continue")

    console = _console()
    progress = None
    if not as_json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("[bold]align[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=console, transient=False)
    bar = {}

    def on_cell(cell, row, done, total):
        if progress is not None:
            if "id" not in bar:  # started at the first cell: a run refused before any prints nothing
                progress.start()
                bar["id"] = progress.add_task("", total=total, completed=done - 1)
            progress.update(bar["id"], completed=done,
                            description=f"{cell.family} L{cell.layer} size {cell.size} seed {cell.seed}: IIA {row['iia']:.3f}")

    # one writer per run directory: the lock is held from before the store opens until the report is written
    with lock_run(out):
        try:
            table = search(cfg, out=out, resume=resume, overwrite=overwrite, executor=executor,
                           ray_address=ray_address, workers=workers, batched=batched, engine=engine,
                           device=device, dtype=dtype, on_cell=on_cell)
        finally:
            if "id" in bar:
                progress.stop()
        summary = summarize(table)
        best = best_alignment(table)
        if report:
            from roadinterp.viz.report import write_report

            write_report(out, Path(out) / "report.html")
    if as_json:
        typer.echo(json.dumps({"out": out, "cells": table.to_dict(orient="records"),
                               "summary": summary.to_dict(orient="records"), "best": best}, default=str))
        return
    _print_summary(console, summary, best, out)


# ------------------------------------------------------------ train & compose
@app.command("train")
def train_cmd(
    task: str = typer.Option(..., "--task", "-t", help="Task whose labels the adapter is fitted to.", callback=_TEXT),
    out: str = typer.Option(..., "--out", "-o", help="Directory to save the adapter (safetensors + JSON).", callback=_TEXT),
    model: str = typer.Option(None, "--model", "-m", help="zoo:NAME, local HF dir or hub id (default: the task's zoo model).",
                              callback=_TEXT),
    layers: str = typer.Option("0", "--layers", help="Comma-separated layers."),
    component: str = typer.Option("block_output", "--component", help="pyvene component.", callback=_TEXT),
    positions: str = typer.Option("all", "--positions", help="last | all | index | task-named position.", callback=_TEXT),
    variant: str = typer.Option("road_2", "--variant", help="road_1, road_2 or road_4.", callback=_TEXT),
    blocks: str = typer.Option(None, "--blocks", help="Subspace as block ranges, e.g. 0-15 (default: all)."),
    steps: int = typer.Option(300, "--steps", help="Optimiser steps.", callback=bounds.int_option(maximum=bounds.MAX_STEPS)),
    lr: float = typer.Option(0.05, "--lr", help="Learning rate (finite, > 0).",
                             callback=bounds.float_option(minimum=0.0, open_minimum=True)),
    n_train: int = typer.Option(4096, "--n-train", help="Training examples.", callback=_COUNT),
    seed: int = typer.Option(0, "--seed", help="Seed (init, data, order).", callback=_SEED),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if it is not a roadinterp save."),
) -> None:
    """Fit a RoAd adapter (sourceless intervention) to a task's labels and save it."""
    from roadinterp import io, zoo
    from roadinterp.adapters.adapter import RoadAdapter
    from roadinterp.adapters.attach import adapter_interventions, evaluate
    from roadinterp.search import get_model
    from roadinterp.sites import Site, parse_positions, validate_site
    from roadinterp.tasks import get_task
    from roadinterp.training import train_adapter

    io.prepare_output(out, overwrite=overwrite, ours=io.is_saved)  # before any training
    t = get_task(task)
    block_list = bounds.parse_blocks("--blocks", blocks)
    spec = model or zoo.default_model(t.name if t.variables else "behaviour-base")
    m = get_model(spec)
    pos = parse_positions(positions)
    sites = [Site(layer, component, pos) for layer in bounds.parse_ints("--layers", layers)]
    targets = {s.key(): validate_site(m, s) for s in sites}
    adapter = RoadAdapter(targets, variant=variant, group_size=64, blocks=block_list,
                          meta={"task": t.name, "model": spec, "seed": seed})
    ivs = adapter_interventions(adapter)
    bounds.check_rows_memory("--n-train", n_train, lambda k: t.factual(k, split="train", seed=seed), what="examples")
    x, y = t.factual(n_train, split="train", seed=seed)
    losses = train_adapter(m, sites, [ivs[s.key()] for s in sites], x, y, task=t, steps=steps, lr=lr, seed=seed)
    xt, yt = t.factual(1024, split="test", seed=seed + 1)
    acc = evaluate(m, adapter, xt, yt, t, sites)
    base = evaluate(m, None, xt, yt, t)
    adapter.meta.update({"test_accuracy": acc, "base_accuracy": base, "final_loss": losses[-1] if losses else None})
    io.save(adapter, out, overwrite=overwrite)
    typer.echo(f"saved {out}: held-out accuracy {acc:.3f} (base model {base:.3f}), "
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
    loaded, w = _load_adapters(adapters, weights)
    composed = compose(loaded, weights=w, resolve=resolve)
    io.save(composed, out, overwrite=overwrite)
    owners = composed.meta.get("owners", {})
    typer.echo(f"saved {out}: " + ", ".join(f"{k} owns {len(v)} blocks" for k, v in owners.items()))


def _load_adapters(paths, weights: str | None) -> tuple[dict, dict[str, float] | None]:
    """(name -> loaded adapter, --weights as name -> lambda or None), shared by compose and generate.

    The names and weights are checked before any file is read: names are directory names
    (two directories with one name are refused), ``--weights`` looks like ``op=1,format=0.5``
    with finite values, and every weighted name is one of the adapters.
    """
    from roadinterp import io

    names = _adapter_names(paths)
    w = bounds.parse_weights("--weights", weights) or None
    unknown_names = sorted(set(w or ()) - set(names))
    if unknown_names:
        raise ConfigError(f"--weights names {unknown_names} are not among the adapters {sorted(names)}")
    return {name: io.load(a) for name, a in names.items()}, w


def _adapter_names(paths) -> dict[str, str]:
    """Adapter name (its directory's name) -> path; two directories with one name are refused."""
    from pathlib import Path

    names: dict[str, str] = {}
    for a in paths or []:
        name = Path(bounds.nonempty("adapter path", a)).resolve().name
        if name in names:
            raise ConfigError(f"adapters {names[name]} and {a} are both named {name!r} (names are directory "
                              "names); rename or copy one so every adapter has its own name")
        names[name] = a
    return names


@app.command("generate")
def generate_cmd(
    model: str = typer.Option(..., "--model", "-m", help="zoo:NAME or a local HF directory with a tokenizer.",
                              callback=_TEXT),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A prompt (repeat for a batch)."),
    adapter: list[str] = typer.Option(None, "--adapter", "-a",
                                      help="Saved RoAd adapter directory (repeat; names = directory names)."),
    weights: str = typer.Option(None, "--weights", help="Per-adapter lambda in the composition, e.g. upper=1,frame=0.5."),
    compare: bool = typer.Option(False, "--compare",
                                 help="Also generate with the base model and each adapter alone (one mixed batch)."),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", help="Greedy tokens to generate.",
                                       callback=bounds.int_option()),
    template: str = typer.Option("chatml", "--template", help="chatml (SmolLM2's chat turn, no system prompt) or raw."),
) -> None:
    """Generate with adapters composed (weights = lambda per adapter); --compare adds base and each alone.

    Every (prompt, condition) pair is one row of a single mixed batch (roadinterp.serve):
    each row is routed to its own adapter.
    """
    from roadinterp.adapters import serve
    from roadinterp.adapters.compose import compose
    from roadinterp.chat_behaviours import chat_prompt
    from roadinterp.errors import TokenizerError
    from roadinterp.search import get_model
    from roadinterp.zoo import load_tokenizer

    if template not in ("chatml", "raw"):
        raise ConfigError(f"--template must be chatml or raw, got {template!r}")
    loaded, w = _load_adapters(adapter, weights)
    tok = load_tokenizer(model)  # before the model: a toy zoo model has none
    if tok is None:
        raise TokenizerError(f"--model {model} has no tokenizer, so it cannot generate text; pass a text model "
                             "(zoo:smollm2-135m or a local HF directory with a tokenizer)")
    bank = {}
    if loaded:
        label = "+".join(f"{n}*{w[n]:g}" if w and n in w else n for n in loaded)
        bank[label] = compose(loaded, weights=w) if len(loaded) > 1 or w else next(iter(loaded.values()))
        if compare:
            bank.update({n: a for n, a in loaded.items() if n != label})
    conditions = (["base"] if compare or not loaded else []) + list(bank)
    m = get_model(model)
    texts = [chat_prompt(p) if template == "chatml" else p for p in prompt]
    rows = [(c, i) for i in range(len(prompt)) for c in conditions]
    ids = [tok(texts[i], add_special_tokens=False)["input_ids"] for _, i in rows]
    out = serve.generate(m, ids, adapter_ids=[None if c == "base" else c for c, _ in rows],
                         adapters=bank or None, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    width = max(map(len, ids))
    for (c, i), row in zip(rows, out):
        text = tok.decode(row[width:], skip_special_tokens=True).strip()
        typer.echo(f"[{c}] {prompt[i]!r} -> {text!r}")


# --------------------------------------------------------------------- bench
BENCHES = {"batching": "benchmarks.bench_batching", "dii": "benchmarks.bench_dii", "lm": "benchmarks.bench_lm",
           "search": "benchmarks.bench_search"}


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
    import importlib
    import json

    from roadinterp.errors import unknown

    if name not in BENCHES:
        raise unknown("benchmark", name, list(BENCHES))
    try:
        mod = importlib.import_module(BENCHES[name])
    except ModuleNotFoundError as e:
        raise ConfigError(f"benchmark {name} is not available ({e}); run from a roadinterp checkout") from None
    if (model is not None or reps is not None) and name != "batching":
        raise ConfigError(f"--model/--reps are options of 'bench batching', not of 'bench {name}'")
    if reps is not None and model is None:
        raise ConfigError("--reps sets the repetitions of the real-LM setting; pass --model too")
    extra = {} if model is None else {"model": model, "reps": reps}
    result = mod.run(quick=quick, **extra)
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


def _print_summary(console, summary, best, out) -> None:
    from rich.table import Table

    t = Table(title="alignment search: held-out IIA over seeds")
    for col in ("family", "layer", "site", "size", "seeds", "IIA mean ± std", "range", "train IIA", "vocab IIA", "no-op",
                "random-init", "rival", "seed agree (random)", "site patch", "warnings"):
        t.add_column(col, no_wrap=col != "warnings")

    def f(r, c, digits=3):
        v = r.get(c)
        return "-" if v is None or v != v else f"{v:.{digits}f}"

    for _, r in summary.iterrows():
        agree = f(r, "seed_agreement", 2)
        t.add_row(str(r["family"]), str(r["layer"]), f"{r['component']}@{r['position']}", str(r["size"]),
                  str(int(r["n_seeds"])), f"{r['iia_mean']:.3f} ± {r['iia_std']:.3f}",
                  f"{r['iia_min']:.3f}-{r['iia_max']:.3f}", f(r, "train_iia_mean"), f(r, "iia_vocab_mean"),
                  f(r, "iia_null_mean"),
                  f(r, "iia_random_model_mean"),
                  f(r, "iia_rival_mean"), agree if agree == "-" else f"{agree} ({f(r, 'seed_agreement_chance', 2)})",
                  f(r, "iia_site_patch_mean"), str(r.get("warnings") or ""))
    console.print(t)
    if best:
        ctrl = ""
        if best.get("iia_random_model_mean") is not None:
            ctrl = f"; controls: random-init model {best['iia_random_model_mean']:.3f}"
        if best.get("iia_rival_mean") is not None:
            ctrl += f", rival hypothesis {best['iia_rival_mean']:.3f}"
        if best.get("iia_null_mean") is not None:
            ctrl += f", no-op baseline {best['iia_null_mean']:.3f}"
        from roadinterp.controls import describe_warnings

        warn = f"; warnings: {describe_warnings(best['warnings'])}" if best.get("warnings") else ""
        console.print(
            f"best alignment (by mean over seeds): {best['family']} at layer {best['layer']} "
            f"{best['component']}@{best['position']} size {best['size']}: IIA {best['iia_mean']:.3f} ± "
            f"{best['iia_std']:.3f} (range {best['iia_min']:.3f}-{best['iia_max']:.3f}, "
            f"{int(best['n_seeds'])} seeds){ctrl}{warn}"
        )
    console.print(f"results: {out}/results.csv  report: {out}/report.html")


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
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


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so cleanup runs as for Ctrl-C (exit 143)."""


def _on_signal(signum, frame):  # pragma: no cover - exercised by subprocess tests
    import signal

    # remembered because Typer turns a KeyboardInterrupt into a plain return code of 130
    state["signal"] = signum
    if signum == signal.SIGTERM:
        raise _Terminated()
    raise KeyboardInterrupt


def _install_signal_handlers() -> None:
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


def _error_line(message: str) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message held
    typer.echo(f"error: {text}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the CLI's one error boundary.

    Every user mistake -- a :class:`RoadinterpError`, a Typer/Click usage error (unknown
    option or command, a value that is not an int, a missing argument), an OS refusal
    (permission, disk full) or memory exhaustion -- is one ``error: ...`` line on stderr
    with exit status 2; ``--debug`` re-raises it with its traceback. Ctrl-C exits 130 and
    SIGTERM 143, each with one line (``align`` adds the ``--resume`` hint).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    state["interrupted"] = "interrupted"
    usage_errors, exits, aborts = _click_exceptions()
    try:
        _install_signal_handlers()
        rc = app(args=args, standalone_mode=False, prog_name="roadinterp")
        if state.get("signal") is not None:  # Typer returned 130 for the KeyboardInterrupt
            _exit_interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except (KeyboardInterrupt, _Terminated) as e:
        _exit_interrupted(isinstance(e, _Terminated))
    except exits as e:
        if state.get("signal") is not None or isinstance(e.__cause__, KeyboardInterrupt):
            _exit_interrupted()
        sys.exit(getattr(e, "exit_code", 0))
    except aborts:  # click turns a Ctrl-C during a prompt into Abort
        _exit_interrupted()
    except RoadinterpError as e:
        if debug:
            raise
        _error_line(str(e))
        sys.exit(2)
    except usage_errors as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `roadinterp` / group: the help is the answer
            typer.echo(e.format_message())
            sys.exit(0)
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _error_line(f"{e.format_message()}{where}")
        sys.exit(2)
    except MemoryError:
        if debug:
            raise
        _error_line("out of memory; use smaller counts (--n-train, --n-test, --seeds, --workers)")
        sys.exit(2)
    except OSError as e:  # the environment refused (permissions, disk full, a path that is a file): not a bug
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        _error_line(f"{e.strerror or e}{where} (rerun with --debug for the traceback)")
        sys.exit(2)


if __name__ == "__main__":
    main()
