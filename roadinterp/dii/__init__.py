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
                        kvreplay (causal LMs: cached keys/values, only the intervened positions run)
                        or replay.SiteReplay (site states cached once per distinct input)
                        or pyvene's hooks (the reference path)

``config`` says what a run is; ``fit`` is the one training loop (K = 1 for ``train_dii``);
``runners`` is the one interface to the frozen model; ``kvreplay`` and ``replay`` make it
fast (``_tables``: what both share). No I/O and no plotting happen in this package.
"""

from roadinterp.dii.batched import batch_groups, supports_batched, train_dii_batched
from roadinterp.dii.config import ENGINES, DIIConfig, TrainResult, check_cell, make_data
from roadinterp.dii.fit import fit_cell, iia, iia_scores
from roadinterp.dii.runners import make_runner
from roadinterp.dii.train import randomized_copy, train_dii

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
