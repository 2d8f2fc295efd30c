"""A real (tiny) alignment run with saved cells, shared by the viz and browser tests."""


def small_learned_run(path, *, layers=(0,), seeds: int = 3, n_train: int = 256, epochs: int = 1):
    """Butterfly and das on the hierarchical-equality MLP, size 2, with controls, so the report's
    "Learned angles" section has saved interchanges and subspaces to read back."""
    from roadinterp.search import search

    search(out=str(path), task="hierarchical-equality", layers=list(layers), families=["butterfly", "das"],
           sizes=[2], seeds=seeds, n_train=n_train, n_test=256, epochs=epochs, controls=True, batched=True)
    return path
