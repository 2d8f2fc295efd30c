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


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise fail(f"{name} must be comma-separated integers, got {text!r}") from None


def _strs(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _console():
    from rich.console import Console

    console = Console(stderr=False)
    if not console.is_terminal:  # pipes and logs: wide enough that the result table is not truncated
        console = Console(stderr=False, width=160)
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
        table.add_row(r["name"], r["task"], r["arch"], f"{r['n_params']:,}", "yes" if r["cached"] else "no", acc, secs)
    _console().print(table)


@zoo_app.command("train")
def zoo_train(name: str = typer.Argument(..., help="Zoo model name (see `roadinterp zoo`)."),
              seed: int = typer.Option(None, help="Override the entry's seed."),
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
    task: str = typer.Option(None, "--task", "-t", help="Task: a name (roadinterp tasks), path/to/file.py:NAME or package.module:NAME (docs/byo.md)."),
    model: str = typer.Option(None, "--model", "-m", help="zoo:NAME, local HF dir, .gguf file or hub id (default: the task's zoo model)."),
    layers: str = typer.Option(None, "--layers", help="Comma-separated layers (default: all)."),
    component: str = typer.Option(None, "--component", help="Comma-separated pyvene components (default block_output)."),
    positions: str = typer.Option(None, "--positions", help="Comma-separated positions: last, all, an index or a task-named position."),
    family: str = typer.Option(None, "--family", help="Comma-separated families: neuron,neuron-fixed,road,butterfly,das,lowrank,boundless."),
    size: str = typer.Option(None, "--size", help="Comma-separated sizes (coordinates per variable)."),
    seeds: int = typer.Option(None, "--seeds", help="Seeds per cell."),
    controls: bool = typer.Option(None, "--controls/--no-controls", help="Controls: random-init model, every rival hypothesis, whole-site patch, row-space part."),
    epochs: int = typer.Option(None, "--epochs", help="DII training epochs per cell."),
    n_train: int = typer.Option(None, "--n-train", help="Training counterfactuals per cell."),
    n_test: int = typer.Option(None, "--n-test", help="Held-out counterfactuals per cell."),
    batch_size: int = typer.Option(None, "--batch-size", help="DII minibatch (default 256; smaller on a real LM)."),
    config_file: str = typer.Option(None, "--config", help="JSON file with SearchConfig fields (flags override it)."),
    out: str = typer.Option(None, "--out", "-o", help="Run directory (default runs/<task>)."),
    resume: bool = typer.Option(False, "--resume", help="Skip cells already finished in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard an existing run in --out."),
    executor: str = typer.Option("local", "--executor", help="local or ray."),
    workers: int = typer.Option(2, "--workers", help="Local executor: cells trained in parallel processes."),
    batched: bool = typer.Option(True, "--batched/--sequential", help="Train the seeds of a RoAd-family cell in one batched forward."),
    engine: str = typer.Option("auto", "--engine", help="How DII steps run: auto (the KV engine on causal LMs, else replay from the site, where exact), kv, kv-bf16, replay, or pyvene."),
    device: str = typer.Option("auto", "--device", help="Where the frozen model runs: auto (a GPU if there is one), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("float32", "--dtype", help="The frozen model's dtype: float32, bfloat16 or float16 (interventions train in fp32)."),
    ray_address: str = typer.Option(None, "--ray-address", help="Address of an existing Ray cluster."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (no table, no progress)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html into the run directory."),
) -> None:
    """Causal alignment search: train a DII per cell, score held-out IIA with controls."""
    import json
    from pathlib import Path

    from roadinterp.search import SearchConfig, best_alignment, search, summarize

    base: dict = {}
    if config_file:
        try:
            base = json.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise fail(f"config file {config_file} does not exist") from None
        except json.JSONDecodeError as e:
            raise fail(f"config file {config_file} is not valid JSON ({e})") from None
        if not isinstance(base, dict):
            raise fail(f"config file {config_file} must hold a JSON object")
    flags = {
        "task": task, "model": model, "layers": _ints(layers, "--layers"), "components": _strs(component),
        "positions": _strs(positions), "families": _strs(family), "sizes": _ints(size, "--size"),
        "seeds": seeds, "controls": controls, "epochs": epochs, "n_train": n_train, "n_test": n_test,
        "batch_size": batch_size,
    }
    merged = {**base, **{k: v for k, v in flags.items() if v is not None}}
    cfg = SearchConfig.from_json(merged)
    out = out or f"runs/{cfg.task}"

    console = _console()
    progress = None
    if not as_json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("[bold]align[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=console, transient=False)
    bar = {}

    def on_cell(cell, row, done, total):
        if progress is not None:
            if "id" not in bar:
                bar["id"] = progress.add_task("", total=total, completed=done - 1)
            progress.update(bar["id"], completed=done,
                            description=f"{cell.family} L{cell.layer} size {cell.size} seed {cell.seed}: IIA {row['iia']:.3f}")

    if progress is not None:
        progress.start()
    try:
        table = search(cfg, out=out, resume=resume, overwrite=overwrite, executor=executor,
                       ray_address=ray_address, workers=workers, batched=batched, engine=engine,
                       device=device, dtype=dtype, on_cell=on_cell)
    finally:
        if progress is not None:
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
def _blocks(text: str | None) -> list[int] | None:
    """'0-15,32,40-47' -> [0..15, 32, 40..47]."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise fail(f"--blocks must look like 0-15,32,40-47, got {text!r}") from None
    return out


@app.command("train")
def train_cmd(
    task: str = typer.Option(..., "--task", "-t", help="Task whose labels the adapter is fitted to."),
    out: str = typer.Option(..., "--out", "-o", help="Directory to save the adapter (safetensors + JSON)."),
    model: str = typer.Option(None, "--model", "-m", help="zoo:NAME, local HF dir or hub id (default: the task's zoo model)."),
    layers: str = typer.Option("0", "--layers", help="Comma-separated layers."),
    component: str = typer.Option("block_output", "--component", help="pyvene component."),
    positions: str = typer.Option("all", "--positions", help="last | all | index | task-named position."),
    variant: str = typer.Option("road_2", "--variant", help="road_1, road_2 or road_4."),
    blocks: str = typer.Option(None, "--blocks", help="Subspace as block ranges, e.g. 0-15 (default: all)."),
    steps: int = typer.Option(300, "--steps", help="Optimiser steps."),
    lr: float = typer.Option(0.05, "--lr", help="Learning rate."),
    n_train: int = typer.Option(4096, "--n-train", help="Training examples."),
    seed: int = typer.Option(0, "--seed", help="Seed (init, data, order)."),
) -> None:
    """Fit a RoAd adapter (sourceless intervention) to a task's labels and save it."""
    from roadinterp import io
    from roadinterp.adapters.adapter import RoadAdapter
    from roadinterp.adapters.attach import adapter_interventions, evaluate
    from roadinterp.dii.train import train_adapter
    from roadinterp.search import default_model, get_model
    from roadinterp.sites import Site, parse_positions, validate_site
    from roadinterp.tasks import get_task

    t = get_task(task)
    spec = model or default_model(t.name if t.variables else "behaviour-base")
    m = get_model(spec)
    pos = parse_positions(positions)
    sites = [Site(layer, component, pos) for layer in _ints(layers, "--layers")]
    targets = {s.key(): validate_site(m, s) for s in sites}
    adapter = RoadAdapter(targets, variant=variant, group_size=64, blocks=_blocks(blocks),
                          meta={"task": t.name, "model": spec, "seed": seed})
    ivs = adapter_interventions(adapter)
    x, y = t.factual(n_train, split="train", seed=seed)
    losses = train_adapter(m, sites, [ivs[s.key()] for s in sites], x, y, task=t, steps=steps, lr=lr, seed=seed)
    xt, yt = t.factual(1024, split="test", seed=seed + 1)
    acc = evaluate(m, adapter, xt, yt, t, sites)
    base = evaluate(m, None, xt, yt, t)
    adapter.meta.update({"test_accuracy": acc, "base_accuracy": base, "final_loss": losses[-1] if losses else None})
    io.save(adapter, out)
    typer.echo(f"saved {out}: held-out accuracy {acc:.3f} (base model {base:.3f}), "
               f"{adapter.n_trainable():,} trainable parameters")


@app.command("compose")
def compose_cmd(
    adapters: list[str] = typer.Argument(..., help="Saved adapter directories (names = directory names)."),
    out: str = typer.Option(..., "--out", "-o", help="Directory for the composed adapter."),
    weights: str = typer.Option(None, "--weights", help="Per-adapter lambda, e.g. op=1,format=0.5."),
    resolve: str = typer.Option("error", "--resolve", help="Overlapping blocks: error, first or mean."),
) -> None:
    """Compose adapters trained on disjoint 2D blocks into one (exact)."""
    from pathlib import Path

    from roadinterp import io
    from roadinterp.adapters.compose import compose

    loaded = {Path(a).name: io.load(a) for a in adapters}
    composed = compose(loaded, weights=_weights(weights, loaded), resolve=resolve)
    io.save(composed, out)
    owners = composed.meta.get("owners", {})
    typer.echo(f"saved {out}: " + ", ".join(f"{k} owns {len(v)} blocks" for k, v in owners.items()))


def _weights(text: str | None, names) -> dict[str, float] | None:
    """'op=1,format=0.5' -> {"op": 1.0, "format": 0.5}; every name must be an adapter's."""
    if not text:
        return None
    w = {}
    for part in text.split(","):
        name, _, val = part.partition("=")
        try:
            w[name.strip()] = float(val)
        except ValueError:
            raise fail(f"--weights must look like name=1.0,other=0.5, got {text!r}") from None
    unknown_names = sorted(set(w) - set(names))
    if unknown_names:
        raise fail(f"--weights names {unknown_names} are not among the adapters {sorted(names)}")
    return w


@app.command("generate")
def generate_cmd(
    model: str = typer.Option(..., "--model", "-m", help="zoo:NAME or a local HF directory with a tokenizer."),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A prompt (repeat for a batch)."),
    adapter: list[str] = typer.Option(None, "--adapter", "-a",
                                      help="Saved RoAd adapter directory (repeat; names = directory names)."),
    weights: str = typer.Option(None, "--weights", help="Per-adapter lambda in the composition, e.g. upper=1,frame=0.5."),
    compare: bool = typer.Option(False, "--compare",
                                 help="Also generate with the base model and each adapter alone (one mixed batch)."),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", help="Greedy tokens to generate."),
    template: str = typer.Option("chatml", "--template", help="chatml (SmolLM2's chat turn, no system prompt) or raw."),
) -> None:
    """Generate with adapters composed (weights = lambda per adapter); --compare adds base and each alone.

    Every (prompt, condition) pair is one row of a single mixed batch (roadinterp.serve):
    each row is routed to its own adapter.
    """
    from pathlib import Path

    from roadinterp import io
    from roadinterp.adapters import serve
    from roadinterp.adapters.compose import compose
    from roadinterp.chat_behaviours import chat_prompt
    from roadinterp.errors import ConfigError
    from roadinterp.search import get_model
    from roadinterp.zoo import load_tokenizer

    if template not in ("chatml", "raw"):
        raise ConfigError(f"--template must be chatml or raw, got {template!r}")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    loaded = {}
    for a in adapter or []:
        name = Path(a).name
        if name in loaded:
            raise ConfigError(f"two adapters are named {name!r} (the directory name); rename one directory")
        loaded[name] = io.load(a)
    w = _weights(weights, loaded)
    if w and not loaded:
        raise fail("--weights needs at least one --adapter")
    bank = {}
    if loaded:
        label = "+".join(f"{n}*{w[n]:g}" if w and n in w else n for n in loaded)
        bank[label] = compose(loaded, weights=w) if len(loaded) > 1 or w else next(iter(loaded.values()))
        if compare:
            bank.update({n: a for n, a in loaded.items() if n != label})
    conditions = (["base"] if compare or not loaded else []) + list(bank)
    m = get_model(model)
    tok = load_tokenizer(model)
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
    reps: int = typer.Option(None, "--reps", min=1, help="batching --model only: repetitions (default 3)."),
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
        raise fail(f"benchmark {name} is not available ({e}); run from a roadinterp checkout") from None
    if (model is not None or reps is not None) and name != "batching":
        raise fail(f"--model/--reps are options of 'bench batching', not of 'bench {name}'")
    if reps is not None and model is None:
        raise fail("--reps sets the repetitions of the real-LM setting; pass --model too")
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
    path: str = typer.Argument(..., help="A saved adapter directory or a run directory."),
    out: str = typer.Option(..., "--out", "-o", help="Output file: .html (interactive), .png or .pdf (static)."),
    kind: str = typer.Option("histogram", "--kind", help="histogram or polar."),
) -> None:
    """Plot the distribution of learned angles."""
    from roadinterp.viz import plot_angles

    typer.echo(str(plot_angles(path, out, kind=kind)))


@app.command("report")
def report_cmd(
    run: str = typer.Argument(..., help="Run directory written by `roadinterp align`."),
    out: str = typer.Option(None, "--out", "-o", help="Output .html (default RUN/report.html)."),
    cell: list[str] = typer.Option(None, "--cell", help="Also show this cell's learned angles and subspaces "
                                   "(family|layer|component|position|size, as in results.csv's key); repeatable."),
    figures: str = typer.Option(None, "--figures", help="Also write the key figures as PNG and PDF into this directory."),
) -> None:
    """Write one self-contained HTML page (no network requests) for an align run."""
    from pathlib import Path

    from roadinterp.viz.report import write_figures, write_report

    cells = list(cell or [])
    typer.echo(str(write_report(run, Path(out) if out else Path(run) / "report.html", cells)))
    if figures:
        for p in write_figures(run, figures, cells):
            typer.echo(str(p))


def _print_summary(console, summary, best, out) -> None:
    from rich.table import Table

    t = Table(title="alignment search: held-out IIA over seeds")
    for col in ("family", "layer", "site", "size", "seeds", "IIA mean ± std", "range", "train IIA", "no-op",
                "random-init", "rival", "seed agree (random)", "site patch", "warnings"):
        t.add_column(col, no_wrap=col != "warnings")

    def f(r, c, digits=3):
        v = r.get(c)
        return "-" if v is None or v != v else f"{v:.{digits}f}"

    for _, r in summary.iterrows():
        agree = f(r, "seed_agreement", 2)
        t.add_row(str(r["family"]), str(r["layer"]), f"{r['component']}@{r['position']}", str(r["size"]),
                  str(int(r["n_seeds"])), f"{r['iia_mean']:.3f} ± {r['iia_std']:.3f}",
                  f"{r['iia_min']:.3f}-{r['iia_max']:.3f}", f(r, "train_iia_mean"), f(r, "iia_null_mean"),
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: RoadinterpError -> one line, exit 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        rc = app(args=args, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
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
