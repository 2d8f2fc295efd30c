"""Causal tasks and counterfactual data, with a registry.

Built in: ``hierarchical-equality`` (vector inputs for pyvene's MLP), ``addition-carry``
and ``interval`` (token tasks with causal variables and rival hypotheses), and the
behaviour tasks ``behaviour-base``, ``behaviour-op``, ``behaviour-format`` (one shared
prompt format, for composing adapters); ``illusion-toy`` / ``illusion-toy-faithful``
(hand-built models where an interpretability illusion does / does not occur); prompt tasks for
pretrained LMs (``ioi``, ``mcqa``, ``arithmetic``, ``ravel-city``), bound
to the model's tokenizer with ``task.bind(tokenizer=..., model=...)``. Add your own with :func:`register_task`; see
docs/tasks.md.
"""

from roadinterp.tasks.addition_carry import AdditionCarry
from roadinterp.tasks.arithmetic import Arithmetic
from roadinterp.tasks.base import CounterfactualBatch, Task, TokenTask, get_task, list_tasks, register_task
from roadinterp.tasks.behaviour import BEHAVIOURS, BehaviourTask, behaviour_data
from roadinterp.tasks.hierarchical_equality import HierarchicalEquality
from roadinterp.tasks.illusion import IllusionToy
from roadinterp.tasks.interval import Interval
from roadinterp.tasks.ioi import IOI
from roadinterp.tasks.mcqa import MCQA
from roadinterp.tasks.prompt import PromptTask
from roadinterp.tasks.ravel import RavelCity

for _task in (
    HierarchicalEquality(),
    AdditionCarry(),
    Interval(),
    IOI(),
    MCQA(),
    Arithmetic(),
    RavelCity(),
    BehaviourTask("behaviour-base", (), "base behaviour: ones digit of a + b, (a0 + b0) mod 10"),
    BehaviourTask("behaviour-op", ("op",), "op behaviour: subtraction, (a0 - b0) mod 10"),
    BehaviourTask("behaviour-format", ("format",), "format behaviour: ones digit of a + b as a letter A-J"),
    IllusionToy(),
    IllusionToy(faithful=True),
):
    if _task.name not in {t.name for t in list_tasks()}:
        register_task(_task)
del _task

__all__ = [
    "BEHAVIOURS", "IOI", "MCQA", "AdditionCarry", "Arithmetic", "BehaviourTask", "CounterfactualBatch",
    "HierarchicalEquality", "IllusionToy", "Interval", "PromptTask", "RavelCity", "Task", "TokenTask",
    "behaviour_data", "get_task", "list_tasks", "register_task",
]
