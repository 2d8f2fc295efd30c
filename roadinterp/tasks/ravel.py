"""RAVEL-style attribute questions about cities (Huang et al. 2024; MIB's RAVEL task).

A committed table (``data/ravel_cities.csv``, 191 cities) gives each city's country,
continent and language. A prompt asks for one attribute:

    "Paris is a city in the country of"   -> " France"
    "Paris is a city on the continent of" -> " Europe"   (" North" / " South" for the Americas)
    "In Paris, people speak"              -> " French"

Causal model: country, continent and language are variables computed from the city;
the output is the queried attribute. Swapping ``country`` from a source city changes
the answer only when the prompt asks for the country: the RAVEL test that an attribute
is isolated from the others. Rival ``city``: one variable for the whole entity (every
attribute follows the swapped city). Train and test hold disjoint cities; cities may be
several tokens (named position ``city``: the city's last token, per row); every answer
is one token.
"""

from __future__ import annotations

import copy
import csv
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from roadinterp.tasks.base import Do, Raw, do, rng_for
from roadinterp.tasks.prompt import Piece, PromptTask, held_out, template_pieces

ATTRIBUTES = ("country", "continent", "language")
TEMPLATES = {
    "country": "{city} is a city in the country of",
    "continent": "{city} is a city on the continent of",
    "language": "In {city}, people speak",
}
TEST_FRACTION = 1 / 3


@cache
def cities() -> dict[str, tuple[str, ...]]:
    """The committed table as columns: city, country, continent, language."""
    with open(Path(__file__).parent / "data" / "ravel_cities.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {k: tuple(r[k] for r in rows) for k in ("city", *ATTRIBUTES)}


def answer_word(value: str) -> str:
    """The one-token answer for an attribute value: its first word ("North America" -> " North")."""
    return " " + value.split()[0]


def _answers() -> list[str]:
    table = cities()
    return list(dict.fromkeys(answer_word(v) for a in ATTRIBUTES for v in table[a]))


class RavelCity(PromptTask):
    name = "ravel-city"
    description = ("city -> country / continent / language on a pretrained LM's tokenizer; each attribute a "
                   "variable (rival: city)")
    variables = ATTRIBUTES
    rivals: ClassVar[dict[str, tuple[str, ...]]] = {"city": ("city",)}
    answer_tokens: ClassVar[list[str]] = _answers()
    n_classes = len(answer_tokens)
    row_positions: ClassVar[tuple[str, ...]] = ("city",)

    def __init__(self) -> None:
        super().__init__()
        self._cities: np.ndarray | None = None  # the cities this tokenizer can answer about (None: all)
        self.dropped_answers: list[str] = []  # answers that are several tokens for the bound tokenizer
        self._index_values()

    def _index_values(self) -> None:
        table = cities()
        index = {w: i for i, w in enumerate(self.answer_tokens)}
        # value ids per attribute: the answer index of each city's value (-1: an answer dropped)
        self._values = {a: np.array([index.get(answer_word(v), -1) for v in table[a]]) for a in ATTRIBUTES}

    def bind(self, *, tokenizer=None, model=None, cache_dir=None, template: str = "auto") -> PromptTask:
        """As :meth:`PromptTask.bind`; an answer that is several tokens for ``tokenizer`` (Gemma-3
        spells " Swahili" in two) is dropped with every city having it, so no row can need it."""
        if tokenizer is None:
            return super().bind(tokenizer=tokenizer, model=model, cache_dir=cache_dir, template=template)
        multi = [t for t in _answers() if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1]
        if not multi:
            return super().bind(tokenizer=tokenizer, model=model, cache_dir=cache_dir, template=template)
        sub = copy.copy(self)
        sub.answer_tokens = [t for t in _answers() if t not in multi]
        sub.n_classes = len(sub.answer_tokens)
        sub.dropped_answers, sub._pools = multi, {}
        sub._index_values()
        keep = np.all([sub._values[a] >= 0 for a in ATTRIBUTES], 0)
        sub._cities = np.flatnonzero(keep)
        return PromptTask.bind(sub, tokenizer=tokenizer, model=model, cache_dir=cache_dir, template=template)

    def _pool(self, split: str) -> Raw:
        ids = held_out(len(cities()["city"]), split, seed=29, test_fraction=TEST_FRACTION)
        if self._cities is not None:
            ids = ids[np.isin(ids, self._cities)]
        city, attr = np.meshgrid(ids, np.arange(len(ATTRIBUTES)), indexing="ij")
        city, attr = city.ravel(), attr.ravel()
        pick = rng_for(0, self.name, split, "pool").permutation(len(city))[: self.pool_size]
        return {"city": city[pick], "attr": attr[pick]}

    def _evaluate(self, raw: Raw, hypothesis: str, interventions: Do | None) -> dict[str, np.ndarray]:
        city = raw["city"]
        if hypothesis == "city":
            city = do(interventions, "city", city)
        values = {a: do(None if hypothesis == "city" else interventions, a, self._values[a][city])
                  for a in ATTRIBUTES}
        stacked = np.stack([values[a] for a in ATTRIBUTES], 1)  # [n, 3]
        output = stacked[np.arange(len(city)), raw["attr"]]
        return {**values, "city": city, "output": output.astype(np.int64)}

    def _pieces(self, raw: Raw, i: int) -> list[Piece]:
        name = cities()["city"][raw["city"][i]]
        return template_pieces(TEMPLATES[ATTRIBUTES[raw["attr"][i]]], {"city": (" " + name, "city")})
