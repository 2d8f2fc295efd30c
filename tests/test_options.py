"""Config help written once (field metadata) and read by the CLI and docs; the nested DII config."""

import json
from pathlib import Path

import pytest
import typer

from roadinterp.dii.config import DIIConfig
from roadinterp.errors import ConfigError
from roadinterp.options import ALIGN_FLAGS, TABLE_END, TABLE_START, field_help, options_table
from roadinterp.search import SearchConfig

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_field_has_help():
    for cls in (SearchConfig, DIIConfig):
        missing = [k for k, v in field_help(cls).items() if not v.strip()]
        assert not missing, f"{cls.__name__} fields without help: {missing}"


def test_docs_cli_table_is_the_generated_one():
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text[text.index(TABLE_START) + len(TABLE_START): text.index(TABLE_END)].strip()
    assert table == options_table(), "docs/cli.md is stale: paste roadinterp.options.options_table()"


def test_align_option_help_is_the_field_help():
    from roadinterp.cli import app

    align = typer.main.get_command(app).get_command(None, "align")
    by_flag = {opt: p for p in align.params for opt in p.opts}
    for key, flags in ALIGN_FLAGS.items():
        cls, name = (DIIConfig, key[4:]) if key.startswith("dii.") else (SearchConfig, key)
        param = by_flag[flags.split("/")[0]]
        assert field_help(cls)[name] in param.help, (key, param.help)


def test_search_config_nests_dii_and_loads_the_flat_form():
    flat = {"task": "hierarchical-equality", "families": ["road"], "n_train": 64, "epochs": 1, "mode": "each"}
    nested = {"task": "hierarchical-equality", "families": ["road"], "dii": {"n_train": 64, "epochs": 1, "mode": "each"}}
    a, b = SearchConfig.from_json(flat), SearchConfig.from_json(nested)
    assert a == b and a.dii.n_train == 64 and a.dii.epochs == 1 and a.dii.mode == "each"
    assert SearchConfig(**flat) == a  # keywords in the flat form too
    again = SearchConfig.from_json(json.loads(json.dumps(a.to_json())))
    # run.json keeps the flat form (readers of run["n_test"] go on working); it loads back nested
    assert again == a and "dii" not in a.to_json() and a.to_json()["n_train"] == 64
    # what a search could not set before: variant, depth, threads; each cell carries them
    c = SearchConfig(dii=DIIConfig(variant="road_2", depth=3, threads=2)).cell("butterfly", 4, seed=1)
    assert (c.variant, c.depth, c.threads, c.family, c.size, c.seed) == ("road_2", 3, 2, "butterfly", 4, 1)
    assert SearchConfig().with_dii(epochs=2).dii.epochs == 2


def test_search_config_refuses_bad_training_fields():
    with pytest.raises(ConfigError, match="variant"):
        SearchConfig.from_json({"dii": {"variant": "road_9"}})
    with pytest.raises(ConfigError, match="unknown dii fields"):
        SearchConfig.from_json({"dii": {"family": "road"}})  # set per cell
    with pytest.raises(ConfigError, match="per cell"):
        SearchConfig().with_dii(seed=3)
    with pytest.raises(ConfigError, match="epochs"):
        SearchConfig(epochs=0)
