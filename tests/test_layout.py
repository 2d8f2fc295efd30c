"""The package's shape: no import cycles, a light ``import roadinterp``, modules a reader can hold.

Imports are read from the source with ``ast`` (every ``import roadinterp...`` and
``from roadinterp... import ...``, including the ones inside functions), so a cycle
hidden behind a lazy import still counts.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "roadinterp"
MAX_LINES = 500

# Known exceptions, each owned by an open piece of work and to be emptied by it:
ALLOWED_CYCLES: set[frozenset[str]] = set()
ALLOWED_LONG: dict[str, str] = {}
# the search package's floors, lowest first: a module imports only modules listed before it
SEARCH_FLOORS = ["config", "options", "frozen", "cells", "jobs", "executors", "pipeline"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the roadinterp modules it imports (the deepest existing module of each name)."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names if a.name.split(".")[0] == "roadinterp")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "roadinterp":
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in mods else owner(node.module))
        graph[mod] = {d for d in deps if d is not None and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_the_package():
    found = set(cycles(import_graph()))
    unexpected = sorted(sorted(c) for c in found - ALLOWED_CYCLES)
    assert not unexpected, f"import cycles: {unexpected}"


def test_import_roadinterp_loads_no_plotting_library_itself():
    """plotly never; matplotlib only as far as pyvene's own ``import pyvene`` pulls it in
    (pyvene's ``CausalModel`` imports ``matplotlib.pyplot`` at import time)."""
    code = (
        "import sys\n"
        "def plotting(): return {m for m in sys.modules if m.split('.')[0] in ('plotly', 'matplotlib')"
        " or m.startswith('roadinterp.viz')}\n"
        "import pyvene\n"
        "by_pyvene = plotting()\n"
        "import roadinterp\n"
        "print(sorted(plotting() - by_pyvene))\n"
        "print(sorted(m for m in by_pyvene if not m.startswith('matplotlib')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    ours, pyvene_other = (ast.literal_eval(line) for line in out.stdout.strip().splitlines()[-2:])
    assert ours == [] and pyvene_other == [], (ours, pyvene_other)


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    unexpected = {k: v for k, v in long.items() if k not in ALLOWED_LONG}
    assert not unexpected, f"modules over {MAX_LINES} lines: {unexpected}"


def test_the_search_package_never_calls_up_a_floor():
    graph = import_graph()
    for i, name in enumerate(SEARCH_FLOORS):
        above = {f"roadinterp.search.{m}" for m in SEARCH_FLOORS[i + 1:]}
        assert not graph[f"roadinterp.search.{name}"] & above, (name, graph[f"roadinterp.search.{name}"] & above)
    # what reads results (store, summary, controls, viz) never imports the search
    for mod, deps in graph.items():
        if mod.startswith(("roadinterp.store", "roadinterp.summary", "roadinterp.controls", "roadinterp.viz")):
            assert not {d for d in deps if d.startswith("roadinterp.search")}, mod


def test_help_and_usage_errors_import_no_torch():
    probe = (
        "import sys\n"
        "from roadinterp.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)\n"
    )
    for args in (["--help"], ["align", "--help"], ["align", "--seeds", "x"], ["nope"]):
        r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT.parent)
        assert r.stdout.strip().splitlines()[-1] == "False", (args, r.stdout[-300:], r.stderr[-300:])


def test_every_public_name_resolves():
    code = "import roadinterp as ri\nfor n in ri.__all__:\n    getattr(ri, n)\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_every_builtin_saved_kind_is_registered_by_its_module():
    import importlib

    from roadinterp import io

    for kind, module in io.BUILTIN_KINDS.items():
        importlib.import_module(module)
        assert kind in io._KINDS, (kind, module)
