"""Indirect object identification (IOI; Wang et al. 2023, as in MIB's causal-variable track).

Prompt (one of six templates): "Then, Mary and John went to the store. John gave a drink
to" -> " Mary". Two names open the prompt (A, then B); the subject S is repeated later and
the answer is the other one, the indirect object IO. Causal model (MIB's positional one):

    io_position = 0 if IO is the first name (A) else 1
    io_token    = the name at io_position            (a name id; recomputed from the base's
                                                      names when only io_position is swapped)
    output      = io_token

Main hypothesis: variables (io_token, io_position). Rival ``first-name`` (a false
hypothesis, a negative control like addition-carry's tens-only): the model copies the
first name it read, output = first_name = A. Train and test use disjoint names (a fixed
third of the names is test-only); the answer set is every name. Named positions per row:
``io`` and ``s1`` (the names in the opening clause), ``s2`` (the repeated subject).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from roadinterp.tasks.base import Do, Raw, do, rng_for
from roadinterp.tasks.prompt import Piece, PromptTask, held_out, template_pieces

# One token each (with the leading space) for SmolLM2's and GPT-2's tokenizers.
NAMES: tuple[str, ...] = tuple(
    "Mary John Tom James Dan Sid Martin Amy Paul Kate Anna Mark Lisa Emma Sarah David Michael Chris Jane "
    "Alice Bob Peter Laura Linda Susan Karen Nancy Steve Kevin Brian George Jack Ryan Eric Adam Alex Ben "
    "Sam Max Joe Mike Rose Grace Helen Ruth Jessica Andrew Daniel Robert William Richard Thomas Charles "
    "Joseph Matthew Anthony Donald Steven Edward Jason Jeff Frank Scott Justin Greg Ray Emily Rachel "
    "Victoria Lucy Sophie Claire Julia Nick Tim Luke Henry Oliver Harry Leo Ian Carl Alan Neil Roger "
    "Simon Gary Tony Bill Fred Jim Joan Anne Carol Diana Maria Ellen".split()
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
# {A}, {B}: the opening names; {S}: the repeated subject; {P}: place; {O}: object.
TEMPLATES = (
    "Then, {A} and {B} went to the {P}. {S} gave a {O} to",
    "When {A} and {B} got a {O} at the {P}, {S} decided to give it to",
    "After {A} and {B} went to the {P}, {S} gave a {O} to",
    "Friends {A} and {B} found a {O} at the {P}. {S} gave it to",
    "While {A} and {B} were working at the {P}, {S} gave a {O} to",
    "The {P} was quiet when {A} and {B} arrived. Later, {S} handed the {O} to",
)
TEST_FRACTION = 1 / 3


class IOI(PromptTask):
    name = "ioi"
    description = ("indirect object identification on a pretrained LM's tokenizer; variables io_token, "
                   "io_position (rival: first-name)")
    variables = ("io_token", "io_position")
    rivals: ClassVar[dict[str, tuple[str, ...]]] = {"first-name": ("first_name",)}
    answer_tokens: ClassVar[list[str]] = [" " + n for n in NAMES]
    n_classes = len(NAMES)
    row_positions: ClassVar[tuple[str, ...]] = ("io", "s1", "s2")
    single_token_pieces: ClassVar[tuple[str, ...]] = ("io", "s1", "s2")

    def _pool(self, split: str) -> Raw:
        names = held_out(len(NAMES), split, seed=13, test_fraction=TEST_FRACTION)
        rng = rng_for(0, self.name, split, "pool")
        n = self.pool_size
        ia = rng.integers(0, len(names), n)
        ib = (ia + rng.integers(1, len(names), n)) % len(names)  # a different name
        return {"template": rng.integers(0, len(TEMPLATES), n), "a": names[ia], "b": names[ib],
                "io_first": rng.integers(0, 2, n), "place": rng.integers(0, len(PLACES), n),
                "object": rng.integers(0, len(OBJECTS), n)}

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        a, b = raw["a"], raw["b"]
        if hypothesis == "first-name":
            first = do(interventions, "first_name", a)
            return {"first_name": first, "output": first.astype(np.int64)}
        io_position = do(interventions, "io_position", 1 - raw["io_first"])
        io_token = do(interventions, "io_token", np.where(io_position == 0, a, b))
        return {"io_token": io_token, "io_position": io_position, "first_name": a,
                "output": io_token.astype(np.int64)}

    def _pieces(self, raw: Raw, i: int) -> list[Piece]:
        a, b = NAMES[raw["a"][i]], NAMES[raw["b"][i]]
        io_first = bool(raw["io_first"][i])
        fill = {"A": (" " + a, "io" if io_first else "s1"), "B": (" " + b, "s1" if io_first else "io"),
                "S": (" " + (b if io_first else a), "s2"),
                "P": (" " + PLACES[raw["place"][i]], None), "O": (" " + OBJECTS[raw["object"][i]], None)}
        return template_pieces(TEMPLATES[raw["template"][i]], fill)

