"""DII: learn where a causal variable lives, one cell at a time or K candidates at once.

The data flow, in the order the modules run:

    tasks ──counterfactual batches──▶ train.make_data
    train.DIIConfig ──▶ train.train_dii ──▶ replay.make_runner ──▶ runner(rows) ──▶ loss ──▶ Adam
                          batched.train_dii_batched (K seeds of one cell in shared steps)

``train`` holds the config, the cell check and the single-candidate loop; ``replay``
runs the frozen model (``SiteReplay``: once per distinct input, up to the site; or the
pyvene reference path); ``batched`` trains K candidates of one cell in one step. No I/O
and no plotting happen in this package.
"""

from roadinterp.dii.batched import batch_groups, supports_batched, train_dii_batched
from roadinterp.dii.replay import ENGINES, make_runner
from roadinterp.dii.train import DIIConfig, TrainResult, check_cell, make_data, randomized_copy, train_dii

__all__ = [
    "ENGINES", "DIIConfig", "TrainResult", "batch_groups", "check_cell", "make_data", "make_runner",
    "randomized_copy", "supports_batched", "train_dii", "train_dii_batched",
]
