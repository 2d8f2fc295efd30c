"""A search cell's one identity (:class:`CellId`), used by the store, the files, the report and the CLI.

A *cell* is (family, layer, component, position, size); with a seed it is one training
run. TransformerLens names an activation once (``blocks.3.hook_resid_post``) for every
tool; here :class:`CellId` is that name, rendered the ways a run needs it: the store's
key, the run files' slug, the report's figure stem, the printed site and a progress label.
The formats are those every run directory already holds, so old runs resume. No imports
beyond roadinterp.errors: every floor may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from roadinterp.errors import ConfigError, RunDirError

CONTROL_SUFFIXES = {None: "", "random_model": "-random_model"}
CELL_FIELDS = ("family", "layer", "component", "position", "size")  # a cell over its seeds; + "seed": one run


def _text(v) -> str:
    """A key part as every tool writes it: ``1,2`` for a tuple of positions, ``3`` for 3.0."""
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, str) and v.startswith("(") and v.endswith(")"):  # a tuple as results rows store it
        return v[1:-1].replace(" ", "").rstrip(",")
    return str(v)


@dataclass(frozen=True)
class CellId:
    """A search cell's one identity, as TransformerLens names an activation once for every tool.

    ``key`` (``family|layer|component|position|size|seed``) is the store's primary key and
    results.csv's ``key``; ``cell`` (the key without the seed) names a cell over its seeds
    (``report --cell``, the report's focus cells); ``slug`` is its run files' name
    (:func:`saved_path`; from a Cell or a row, whose position it keeps as given); ``stem`` the
    report's figure-file name; ``where`` the site as
    tables print it (``component@position``); ``label`` a cell in a progress line.
    """

    family: str
    layer: int
    component: str
    position: Any
    size: int
    seed: int | None = None

    @classmethod
    def from_row(cls, row) -> CellId:
        """The identity of a results row (a dict or DataFrame row); ``position`` kept as stored, so
        ``slug`` names the row's files."""
        seed = row.get("seed") if hasattr(row, "get") else None
        return cls(row["family"], int(row["layer"]), row["component"], row["position"], int(row["size"]),
                   None if seed is None or seed != seed else int(seed))

    @classmethod
    def parse(cls, key: str) -> CellId:
        """From ``family|layer|component|position|size`` with an optional ``|seed``."""
        parts = key.split("|") if isinstance(key, str) else []
        if len(parts) not in (5, 6):
            raise ConfigError(f"a cell is named family|layer|component|position|size (as in results.csv's key), "
                              f"got {key!r}")
        try:
            return cls(parts[0], int(parts[1]), parts[2], parts[3], int(parts[4]),
                       int(parts[5]) if len(parts) == 6 else None)
        except ValueError:
            raise ConfigError(f"a cell's layer, size and seed are integers, got {key!r}") from None

    @property
    def cell(self) -> str:
        return "|".join(_text(getattr(self, k)) for k in CELL_FIELDS)

    @property
    def key(self) -> str:
        return f"{self.cell}|{self.seed}"

    @property
    def where(self) -> str:
        return f"{self.component}@{_text(self.position)}"

    @property
    def site(self) -> str:
        """Layer and site, ``L22 block_output@last`` (:meth:`roadinterp.sites.Site.label` too)."""
        return f"L{self.layer} {self.where}"

    @property
    def label(self) -> str:
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.family} {self.site} size {self.size}{seed}"

    @property
    def stem(self) -> str:
        return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in self.cell.replace("|", "-"))

    def slug(self, control: str | None = None) -> str:
        return cell_slug(self.family, self.layer, self.component, self.position, self.size, self.seed, control)

    def with_seed(self, seed: int | None) -> CellId:
        return replace(self, seed=seed)


def cell_slug(family, layer, component, position, size, seed, control: str | None = None) -> str:
    """File-system-safe name of a cell (``control="random_model"``: its random-init control).

    ``position`` as the cell holds it or as a results row stores it (``str`` of it): both
    give the same slug.
    """
    if control not in CONTROL_SUFFIXES:
        raise RunDirError(f"unknown control {control!r}; known: {[c for c in CONTROL_SUFFIXES if c]}")
    slug = "-".join(str(p) for p in (family, f"L{int(layer)}", component, position, f"s{int(size)}",
                                     f"seed{int(seed)}")).replace("/", "_").replace(" ", "")
    return slug + CONTROL_SUFFIXES[control]


