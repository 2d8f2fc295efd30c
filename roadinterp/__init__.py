"""roadinterp: RoAd (2D rotary adaptation) and PEDRO as pyvene interventions.

    import roadinterp as ri
    model = ri.load_model("zoo:hierarchical-equality-mlp")
    task = ri.get_task("hierarchical-equality")
    result = ri.train_dii(model, task, ri.Site(0), family="butterfly", size=8, seed=0)
    table = ri.search(task="hierarchical-equality", families=["das", "butterfly"], out="runs/x")

The public API is re-exported here by name; everything else is internal.
See docs/index.md for a tour.
"""

__version__ = "0.1.0"

from roadinterp import _pyvene  # noqa: F401,E402  (import pyvene quietly, once, first)
from roadinterp.adapters.adapter import RoadAdapter  # noqa: E402
from roadinterp.errors import (  # noqa: E402
    ConfigError,
    DependencyError,
    FileFormatError,
    NonFiniteError,
    OfflineError,
    OutputError,
    OverlapError,
    RoadinterpError,
    RunDirError,
    ShapeError,
    SiteError,
    TokenizerError,
    UnknownNameError,
)
from roadinterp.interventions import (  # noqa: E402
    RoadInterchange,
    RoadIntervention,
    get_family,
    list_families,
    register_family,
)
from roadinterp.adapters.compose import compose  # noqa: E402
from roadinterp.interventions.pedro import PedroIntervention  # noqa: E402
from roadinterp.io import load, save  # noqa: E402
from roadinterp.adapters.linear import apply_road, remove_road  # noqa: E402
from roadinterp.adapters.peft_interop import from_peft, to_peft  # noqa: E402
from roadinterp.adapters.pedro import PedroAdapter  # noqa: E402
from roadinterp.adapters.pedro_linear import apply_pedro  # noqa: E402
from roadinterp.interventions.pedro import PedroConfig  # noqa: E402
from roadinterp.road import RoadRotation, RoadSpec  # noqa: E402
from roadinterp.search import SearchConfig, best_alignment, search, summarize  # noqa: E402
from roadinterp.sites import Site, register_architecture  # noqa: E402
from roadinterp.tasks import get_task, list_tasks, register_task  # noqa: E402
from roadinterp.dii.train import DIIConfig, TrainResult, train_dii  # noqa: E402
from roadinterp.adapters.serve import generate  # noqa: E402
from roadinterp.zoo import load_model  # noqa: E402
from roadinterp import viz  # noqa: E402

__all__ = [
    "ConfigError",
    "DIIConfig",
    "DependencyError",
    "FileFormatError",
    "NonFiniteError",
    "OfflineError",
    "OutputError",
    "OverlapError",
    "PedroAdapter",
    "PedroConfig",
    "PedroIntervention",
    "RoadAdapter",
    "RoadInterchange",
    "RoadIntervention",
    "RoadRotation",
    "RoadSpec",
    "RoadinterpError",
    "RunDirError",
    "SearchConfig",
    "ShapeError",
    "Site",
    "SiteError",
    "TokenizerError",
    "TrainResult",
    "UnknownNameError",
    "__version__",
    "apply_pedro",
    "apply_road",
    "best_alignment",
    "compose",
    "from_peft",
    "generate",
    "get_family",
    "get_task",
    "list_families",
    "list_tasks",
    "load",
    "load_model",
    "register_architecture",
    "register_family",
    "register_task",
    "remove_road",
    "save",
    "search",
    "summarize",
    "to_peft",
    "train_dii",
    "viz",
]
