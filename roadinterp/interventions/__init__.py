"""pyvene interventions: RoAd (sourceless), RoAd interchange (DII), family registry."""

from roadinterp.interventions.attach import attach_dii, attach_sourceless, run_dii, run_sourceless
from roadinterp.interventions.registry import (
    Family,
    FamilyBuild,
    get_family,
    list_families,
    register_family,
)
from roadinterp.interventions.road import (
    RoadInterchange,
    RoadIntervention,
    assign_axes,
    check_assignment,
    subspace_mask,
)

__all__ = [
    "Family", "FamilyBuild", "RoadInterchange", "RoadIntervention", "assign_axes", "attach_dii",
    "attach_sourceless", "check_assignment", "get_family", "list_families", "register_family",
    "run_dii", "run_sourceless", "subspace_mask",
]
