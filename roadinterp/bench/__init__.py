"""roadinterp benchmarks: each module exposes ``run(quick: bool = False) -> dict``."""
