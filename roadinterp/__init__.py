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
from roadinterp import search  # the search package, callable: ri.search(...) runs roadinterp.search.search
from roadinterp._version import __version__

# public name -> the module that defines it, imported on first use (``ri.X``): `roadinterp --help`
# and `import roadinterp.errors` load no torch; the first ``ri.X`` loads what X needs (pyvene
# through roadinterp._pyvene, once, quietly)
_EXPORTS = {
    "ConfigError": "roadinterp.errors",
    "DIIConfig": "roadinterp.dii.config",
    "DependencyError": "roadinterp.errors",
    "FileFormatError": "roadinterp.errors",
    "NonFiniteError": "roadinterp.errors",
    "OfflineError": "roadinterp.errors",
    "OutputError": "roadinterp.errors",
    "OverlapError": "roadinterp.errors",
    "PedroAdapter": "roadinterp.adapters.pedro",
    "PedroConfig": "roadinterp.interventions.pedro",
    "PedroIntervention": "roadinterp.interventions.pedro",
    "RoadAdapter": "roadinterp.adapters.adapter",
    "RoadInterchange": "roadinterp.interventions",
    "RoadIntervention": "roadinterp.interventions",
    "RoadRotation": "roadinterp.road",
    "RoadSpec": "roadinterp.road",
    "RoadinterpError": "roadinterp.errors",
    "RunDirError": "roadinterp.errors",
    "SearchConfig": "roadinterp.search",
    "ShapeError": "roadinterp.errors",
    "Site": "roadinterp.sites",
    "SiteError": "roadinterp.errors",
    "TokenizerError": "roadinterp.errors",
    "TrainResult": "roadinterp.dii.config",
    "UnknownNameError": "roadinterp.errors",
    "apply_pedro": "roadinterp.adapters.pedro_linear",
    "apply_road": "roadinterp.adapters.linear",
    "best_alignment": "roadinterp.summary",
    "compose": "roadinterp.adapters.compose",
    "from_peft": "roadinterp.adapters.peft_interop",
    "generate": "roadinterp.adapters.serve",
    "get_family": "roadinterp.interventions",
    "get_task": "roadinterp.tasks",
    "list_families": "roadinterp.interventions",
    "list_tasks": "roadinterp.tasks",
    "load": "roadinterp.io",
    "load_model": "roadinterp.zoo",
    "register_architecture": "roadinterp.sites",
    "register_family": "roadinterp.interventions",
    "register_task": "roadinterp.tasks",
    "remove_road": "roadinterp.adapters.linear",
    "save": "roadinterp.io",
    "summarize": "roadinterp.summary",
    "to_peft": "roadinterp.adapters.peft_interop",
    "train_dii": "roadinterp.dii.train",
}

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
    """``ri.X`` on first use; ``ri.viz`` too (plotting libraries load only when a figure is asked for)."""
    import importlib

    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name == "viz":
        return importlib.import_module("roadinterp.viz")
    raise AttributeError(f"module 'roadinterp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
