"""roadinterp: RoAd (2D rotary adaptation) and PEDRO as pyvene interventions.

The public API is re-exported here by name; everything else is internal.
See docs/index.md for a tour.
"""

__version__ = "0.1.0"

from roadinterp.errors import RoadinterpError  # noqa: E402
from roadinterp.road import RoadRotation, RoadSpec  # noqa: E402

__all__ = ["RoadinterpError", "RoadRotation", "RoadSpec", "__version__"]
