"""Every shell command and Python snippet in README.md and docs/quickstart.md runs.

Fenced ```bash blocks are split into commands; each ``roadinterp ...`` command runs as
``python -m roadinterp.cli ...`` in one temporary directory, in document order (later
commands read what earlier ones wrote), with long jobs shortened by appending flags
(``align``: one seed, one epoch, 256 counterfactuals, layer 0, no controls; ``train``: few steps).
``make demo`` / ``make test`` are not run, but their Makefile targets must exist and
``make -n demo`` must show the README's align command. Fenced ```python blocks run in a
subprocess with the same kind of shortening by string substitution. docs/cli.md must
mention every command and option of the Typer app.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "quickstart.md"]
SHORT = {
    "align": ["--seeds", "1", "--epochs", "1", "--n-train", "256", "--n-test", "256", "--layers", "0", "--workers", "1",
              "--no-controls"],
    "train": ["--steps", "5", "--n-train", "256"],
}
PY_SUBS = [  # (pattern, replacement): shorten training in Python snippets
    (r"seed=0\)", "seed=0, n_train=256, n_test=256, epochs=1)"),
    (r"seeds=\d+,", "seeds=1, n_train=256, n_test=256, epochs=1,"),
    (r"layers=\[[0-9, ]+\]", "layers=[0]"),
]


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def commands(path: Path) -> list[str]:
    out = []
    for block in blocks(path, "bash"):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "MPLBACKEND": "Agg", "COLUMNS": "130"}


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roadinterp.cli", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def shortened(args: list[str]) -> list[str]:
    return args + SHORT.get(args[0], [])


def check_outputs(args: list[str], cwd: Path, proc) -> None:
    """What each command must have produced."""
    opts = dict(zip(args, args[1:]))
    out = opts.get("--out") or opts.get("-o")
    if args[0] == "align":
        run = cwd / (out or f"runs/{opts.get('--task')}")
        for f in ("run.json", "results.db", "results.csv", "report.html"):
            assert (run / f).is_file(), f"{f} missing after {args}"
        assert len((run / "results.csv").read_text().splitlines()) >= 2
        assert "best alignment" in proc.stdout.lower()
    elif args[0] in ("report", "plot") or args[:1] == ["train"]:
        assert out and (cwd / out).exists(), f"{out} missing after {args}"
    elif args[0] == "tasks":
        assert "hierarchical-equality" in proc.stdout
    elif args[0] == "zoo":
        assert "hierarchical-equality-mlp" in proc.stdout


def test_docs_have_commands():
    cmds = [c for p in DOCS for c in commands(p)]
    assert any(c.startswith("make demo") for c in cmds) and any(c.startswith("roadinterp align") for c in cmds)
    assert sum(len(blocks(p, "python")) for p in DOCS) >= 2


def test_make_targets_and_demo_command():
    makefile = (ROOT / "Makefile").read_text()
    readme_make = [c.split()[1] for c in commands(ROOT / "README.md") if c.startswith("make ")]
    for target in readme_make:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no target {target}"
    align = next(c for c in commands(ROOT / "README.md") if c.startswith("roadinterp align"))
    proc = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert align.replace("roadinterp ", "roadinterp ", 1) in proc.stdout, (align, proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_shell_commands_run(doc, tmp_path):
    ran = 0
    for cmd in commands(doc):
        args = shlex.split(cmd)
        if args[0] == "make":
            continue  # exempt (see test_make_targets_and_demo_command)
        assert args[0] == "roadinterp", f"{doc.name}: unexpected shell command {cmd!r}; teach this test about it"
        args = shortened(args[1:])
        proc = run_cli(args, tmp_path)
        assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
        check_outputs(args, tmp_path, proc)
        ran += 1
    assert ran >= 1


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_python_snippets_run(doc, tmp_path):
    code = "\n\n".join(blocks(doc, "python"))
    for pat, rep in PY_SUBS:
        code = re.sub(pat, rep, code)
    # quickstart's read_run example reads the CLI run of section 2; here it reads the Python run
    code = code.replace('read_run("runs/first")', 'read_run("runs/py")')
    script = tmp_path / "snippets.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{doc.name} snippets failed:\n{code}\nstderr:\n{proc.stderr[-3000:]}"


def test_cli_reference_covers_every_command_and_option():
    import typer

    from roadinterp.cli import app

    text = (ROOT / "docs" / "cli.md").read_text()

    def walk(cmd, path):
        yield path, cmd
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(None):
                yield from walk(cmd.get_command(None, name), [*path, name])

    for path, cmd in walk(typer.main.get_command(app), ["roadinterp"]):
        name = " ".join(path)
        assert f"## `{name}`" in text, f"docs/cli.md has no section for `{name}`"
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option" and p.name != "help":
                for flag in p.opts:
                    assert f"`{flag}`" in text, f"docs/cli.md does not document {name} {flag}"
