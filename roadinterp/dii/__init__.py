"""DII: learn where a causal variable lives, one cell at a time or K candidates at once.

The data flow, in the order the modules run:

    config.DIIConfig, check_cell, make_data ── tasks' counterfactual batches
        │
        ▼
    train.train_dii (one seed) / batched.train_dii_batched (K seeds of a cell, grouped)
        │
        ▼
    fit.fit_cell: build K candidates ─▶ runners.make_runner ─▶ Adam steps ─▶ fit.iia_scores (answers, vocabulary)
                                             │
                                             ▼
                        kvreplay (causal LMs: only the intervened positions run, per-row ones too,
                                  on _kvtable's cached keys/values)
                        or replay.SiteReplay (site states cached once per distinct input)
                        or pyvene's hooks (the reference path)

``config`` says what a run is; ``fit`` is the one training loop (K = 1 for ``train_dii``);
``runners`` is the one interface to the frozen model; ``kvreplay`` and ``replay`` make it
fast (``_tables``: what both share; ``_kvtable``: the KV engine's clean-run table). No I/O and no plotting happen in this package.
"""

# lazy (module __getattr__): ``roadinterp.dii.config`` is read by the CLI at start-up without torch
_EXPORTS = {
    "batch_groups": "batched", "supports_batched": "batched", "train_dii_batched": "batched",
    "ENGINES": "config", "DIIConfig": "config", "TrainResult": "config", "check_cell": "config",
    "make_data": "config", "fit_cell": "fit", "iia": "fit", "iia_scores": "fit", "make_runner": "runners",
    "randomized_copy": "train", "train_dii": "train",
}

__all__ = [
    "ENGINES",
    "DIIConfig",
    "TrainResult",
    "batch_groups",
    "check_cell",
    "fit_cell",
    "iia",
    "iia_scores",
    "make_data",
    "make_runner",
    "randomized_copy",
    "supports_batched",
    "train_dii",
    "train_dii_batched",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"roadinterp.dii.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'roadinterp.dii' has no attribute {name!r}")
