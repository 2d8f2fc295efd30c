"""roadinterp: RoAd (2D rotary adaptation) and PEDRO as pyvene interventions.

    import roadinterp as ri
    model = ri.load_model("zoo:hierarchical-equality-mlp")
    task = ri.get_task("hierarchical-equality")
    result = ri.train_dii(model, task, ri.Site(0), family="butterfly", size=8, seed=0)
    table = ri.search(task="hierarchical-equality", families=["das", "butterfly"], out="runs/x")

The public API is re-exported here by name; everything else is internal. ``ri.viz``
(plotly and matplotlib figures) is imported on first use, so ``import roadinterp``
stays light. See docs/index.md for a tour.
"""

from roadinterp import _quiet  # noqa: F401  (first: mutes known third-party chatter before it can print)
from roadinterp import _pyvene  # noqa: F401  (imports pyvene quietly, once)
from roadinterp._version import __version__
from roadinterp.adapters.adapter import RoadAdapter
from roadinterp.adapters.compose import compose
from roadinterp.adapters.linear import apply_road, remove_road
from roadinterp.adapters.pedro import PedroAdapter
from roadinterp.adapters.pedro_linear import apply_pedro
from roadinterp.adapters.peft_interop import from_peft, to_peft
from roadinterp.adapters.serve import generate
from roadinterp.dii.config import DIIConfig, TrainResult
from roadinterp.dii.train import train_dii
from roadinterp.errors import (
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
from roadinterp.interventions import (
    RoadInterchange,
    RoadIntervention,
    get_family,
    list_families,
    register_family,
)
from roadinterp.interventions.pedro import PedroConfig, PedroIntervention
from roadinterp.io import load, save
from roadinterp.road import RoadRotation, RoadSpec
from roadinterp.search import SearchConfig, search
from roadinterp.sites import Site, register_architecture
from roadinterp.summary import best_alignment, summarize
from roadinterp.tasks import get_task, list_tasks, register_task
from roadinterp.zoo import load_model

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


def __getattr__(name: str):
    """``ri.viz`` on first use: plotting libraries load only when a figure is asked for."""
    if name == "viz":
        import importlib

        return importlib.import_module("roadinterp.viz")
    raise AttributeError(f"module 'roadinterp' has no attribute {name!r}")
