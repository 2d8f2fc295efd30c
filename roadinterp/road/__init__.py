"""Pure tensor maths of RoAd: layouts, rotation, inverse, butterfly, merge, bank.

Nothing here imports pyvene; the interventions only call these functions.
"""

from roadinterp.road.bank import apply_bank, bank_tables, gather_rows
from roadinterp.road.butterfly import apply_layers, butterfly_strides, layer_coefficients, skew_permutation
from roadinterp.road.merge import merge_into_linear, unmerge_from_linear
from roadinterp.road.module import RoadRotation, RoadSpec
from roadinterp.road.rotation import (
    VARIANTS,
    apply,
    block_elements,
    check_layout,
    coefficients,
    dense_matrix,
    inverse_coefficients,
    largest_group_size,
    n_params,
    pair_index,
    rotate_half_grouped,
)

__all__ = [
    "VARIANTS", "RoadRotation", "RoadSpec", "apply", "apply_bank", "apply_layers", "bank_tables",
    "block_elements", "butterfly_strides", "check_layout", "coefficients", "dense_matrix", "gather_rows",
    "inverse_coefficients", "largest_group_size", "layer_coefficients", "merge_into_linear", "n_params",
    "pair_index", "rotate_half_grouped", "skew_permutation", "unmerge_from_linear",
]
