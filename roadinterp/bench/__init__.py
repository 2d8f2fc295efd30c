"""roadinterp benchmarks, installed with the package: each module exposes ``run(quick: bool = False) -> dict``.

``roadinterp bench NAME`` runs :data:`BENCHES` ``[NAME]``; ``python -m roadinterp.bench.bench_lm``
(and the others) run them as scripts. They measure ratios against a baseline in the same run
(docs/performance.md). Nothing in the library imports this package.
"""

BENCHES = {"batching": "bench_batching", "dii": "bench_dii", "lm": "bench_lm", "search": "bench_search"}


def run(name: str, **options) -> dict:
    """Run benchmark ``name`` (a key of :data:`BENCHES`) with its own options."""
    import importlib

    from roadinterp.errors import unknown

    if name not in BENCHES:
        raise unknown("benchmark", name, list(BENCHES))
    return importlib.import_module(f"roadinterp.bench.{BENCHES[name]}").run(**options)
