"""Multiple-choice colour questions (MCQA, as in MIB's causal-variable track).

Prompt: "The banana is purple. What colour is the banana?\\nQ. green\\nX. purple\\nD. red\\nAnswer:"
-> " X". Three options; each example draws its own three option letters, so the *position*
of the right option and the *letter* printed there are different variables:

    answer_pointer = index (0..2) of the option holding the object's colour
    answer         = the letter at answer_pointer     (a letter id; recomputed from the base's
                                                       letters when only the pointer is swapped)
    output         = answer

Main hypothesis: (answer_pointer, answer). Rival ``colour``: the model carries the colour
itself and answers with the letter of the base option that has it, output = the base's
letter whose option is the (swapped) colour, or the base's answer if no option has it.
Train and test use disjoint objects; the answer set is the 26 capital letters.
"""

from __future__ import annotations

import string
from typing import ClassVar

import numpy as np

from roadinterp.tasks.base import Do, Raw, do, rng_for
from roadinterp.tasks.prompt import Piece, PromptTask, held_out, template_pieces

OBJECTS = (
    "banana", "apple", "car", "ball", "hat", "cup", "book", "chair", "shirt", "door", "flower", "bird",
    "pen", "box", "lamp", "kite", "boat", "bag", "shoe", "table", "bottle", "phone", "clock", "bike",
    "house", "fence", "scarf", "dress", "plate", "sofa", "bowl", "candle", "coat", "ribbon", "balloon",
    "umbrella",
)
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "brown", "black", "white", "pink", "gray")
LETTERS = tuple(string.ascii_uppercase)
N_OPTIONS = 3
TEMPLATE = "The {obj} is {col}. What colour is the {obj2}?{options}\nAnswer:"
TEST_FRACTION = 1 / 3


class MCQA(PromptTask):
    name = "mcqa"
    description = ("multiple-choice colour question on a pretrained LM's tokenizer; variables answer_pointer, "
                   "answer (rival: colour)")
    variables = ("answer_pointer", "answer")
    rivals: ClassVar[dict[str, tuple[str, ...]]] = {"colour": ("colour",)}
    answer_tokens: ClassVar[list[str]] = [" " + c for c in LETTERS]
    n_classes = len(LETTERS)
    row_positions: ClassVar[tuple[str, ...]] = ("object", "colour", *(f"letter{i}" for i in range(N_OPTIONS)))
    single_token_pieces: ClassVar[tuple[str, ...]] = ("colour", *(f"letter{i}" for i in range(N_OPTIONS)))

    def _pool(self, split: str) -> Raw:
        objects = held_out(len(OBJECTS), split, seed=17, test_fraction=TEST_FRACTION)
        rng = rng_for(0, self.name, split, "pool")
        n = self.pool_size
        options = np.stack([rng.permutation(len(COLOURS))[:N_OPTIONS] for _ in range(n)])  # [n, 3] distinct
        letters = np.stack([rng.permutation(len(LETTERS))[:N_OPTIONS] for _ in range(n)])  # [n, 3] distinct
        pointer = rng.integers(0, N_OPTIONS, n)
        raw = {"object": rng.choice(objects, n), "pointer": pointer,
               "colour": options[np.arange(n), pointer]}
        raw.update({f"c{i}": options[:, i] for i in range(N_OPTIONS)})
        raw.update({f"l{i}": letters[:, i] for i in range(N_OPTIONS)})
        return raw

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        letters = np.stack([raw[f"l{i}"] for i in range(N_OPTIONS)], 1)  # [n, 3]
        options = np.stack([raw[f"c{i}"] for i in range(N_OPTIONS)], 1)
        rows = np.arange(len(letters))
        if hypothesis == "colour":
            colour = do(interventions, "colour", raw["colour"])
            has = options == colour[:, None]
            pointer = np.where(has.any(1), has.argmax(1), raw["pointer"])
            return {"colour": colour, "output": letters[rows, pointer].astype(np.int64)}
        pointer = do(interventions, "answer_pointer", raw["pointer"])
        answer = do(interventions, "answer", letters[rows, pointer])
        return {"answer_pointer": pointer, "answer": answer, "colour": raw["colour"],
                "output": answer.astype(np.int64)}

    def _sample_source(self, base: Raw, variable: str, rng: np.random.Generator, split: str) -> Raw:
        """For the ``colour`` rival, sources whose colour is one of the base's *other* options (so
        the rival predicts a different letter); independent draws otherwise."""
        if variable != "colour":
            return super()._sample_source(base, variable, rng, split)
        pool, idx = self.pool(split), self._indices(split)
        n = len(base["object"])
        other = (base["pointer"] + rng.integers(1, N_OPTIONS, n)) % N_OPTIONS
        want = np.stack([base[f"c{i}"] for i in range(N_OPTIONS)], 1)[np.arange(n), other]
        pick = rng.choice(idx, size=n)
        for c in np.unique(want):
            having = idx[pool["colour"][idx] == c]
            rows = want == c
            if len(having):
                pick[rows] = rng.choice(having, size=int(rows.sum()))
        return {k: v[pick] for k, v in pool.items()}

    def _pieces(self, raw: Raw, i: int) -> list[Piece]:
        obj, col = OBJECTS[raw["object"][i]], COLOURS[raw["colour"][i]]
        pieces = template_pieces(TEMPLATE.split("{options}")[0], {
            "obj": (" " + obj, None), "col": (" " + col, "colour"), "obj2": (" " + obj, "object")})
        for k in range(N_OPTIONS):
            pieces += [("\n", None), (LETTERS[raw[f"l{k}"][i]], f"letter{k}"),
                       (". " + COLOURS[raw[f"c{k}"][i]], None)]
        return [*pieces, ("\nAnswer:", None)]

    def _chat_split(self, pieces: list[Piece]) -> tuple[list[Piece], list[Piece]]:
        """Chat form: the question and its options are the user's turn; the answer opens with "Answer:"."""
        return pieces[:-1], [("Answer:", None)]
