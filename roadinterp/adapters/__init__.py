"""The adapter branch: RoAd and PEDRO adapters you train, attach, compose, save and serve.

    road/ (maths) ──▶ adapter.py  RoadAdapter: named RoAd maps   (PEDRO: pedro.py PedroAdapter)
                          │
           ┌──────────────┼──────────────────────────┬─────────────────────────┐
      placement="site"    │                  placement="linear"                │
      attach.py           │                  linear.py  RoadLinear banks      peft_interop.py
      pyvene interventions│                  pedro_linear.py PedroLinear      to_peft / from_peft
      sharing parameters  │                  (modules.py: widths, swaps, handles)
                          ▼
      compose.py  block algebra: split_blocks, restrict, compose (exact on disjoint blocks)
      composition.py  the composition experiment: train_composable, behaviour_table
      serve.py  mixed batches: every sample picks its adapter (forward, generate, serving)
      textdata.py  behaviours from data: JSONL rows -> chat-template prompts, completion-only loss
      behaviour.py  train_from_data (tailcache.py: the cached tail it trains on); textgen.py generate
      diagnose.py  how composed adapters move each other's readout; chat_data.py the chat behaviours' rows

A ``RoadAdapter``/``PedroAdapter`` is the unit that is saved (:func:`roadinterp.save`).
*Site* adapters act on hidden states through pyvene (:func:`adapter_interventions`);
*linear* adapters replace projections by wrappers that hold a whole bank of adapters
and route each sample to its own (:func:`apply_road`, :func:`apply_pedro`).
:mod:`~roadinterp.adapters.serve` drives either kind for mixed-adapter batches.
Nothing here is imported by ``road/``, ``interventions/`` or the DII trainer.
"""

from roadinterp.adapters.adapter import RoadAdapter, as_bank, stack_bank
from roadinterp.adapters.attach import adapter_interventions
from roadinterp.adapters.behaviour import Trained, train_from_data
from roadinterp.adapters.compose import combine, owned_blocks, restrict, split_blocks
from roadinterp.adapters.composition import behaviour_table, train_composable
from roadinterp.adapters.linear import (
    RoadHandle,
    RoadLinear,
    apply_road,
    linear_targets,
    merge,
    remove_road,
    road_layers,
    unmerge,
)
from roadinterp.adapters.pedro import PedroAdapter, PedroTarget, register_target_aliases, resolve_targets
from roadinterp.adapters.pedro_linear import PedroHandle, PedroLinear, apply_pedro
from roadinterp.adapters.peft_interop import from_peft, to_peft
from roadinterp.adapters.serve import BatchedAdapterLayer, RoadSiteBank, batched_layers, generate, serving

__all__ = [
    "BatchedAdapterLayer", "PedroAdapter", "PedroHandle", "PedroLinear", "PedroTarget", "RoadAdapter",
    "RoadHandle", "RoadLinear", "RoadSiteBank", "adapter_interventions", "apply_pedro", "apply_road",
    "Trained", "as_bank", "batched_layers", "behaviour_table", "combine", "from_peft", "generate", "linear_targets", "merge",
    "owned_blocks", "register_target_aliases", "remove_road", "resolve_targets", "restrict", "road_layers",
    "serving", "split_blocks", "stack_bank", "to_peft", "train_composable", "train_from_data", "unmerge",
]
