"""Config help written once (field metadata) and read by the CLI and docs; the nested DII config."""

import json
from pathlib import Path

import pytest
import typer

from roadinterp.dii.config import DIIConfig
from roadinterp.errors import ConfigError
from roadinterp.search.config import SearchConfig
from roadinterp.search.options import TABLE_END, TABLE_START, RunOptions, config_flags, field_help, options_table

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_field_has_help():
    for cls in (SearchConfig, DIIConfig, RunOptions):
        missing = [k for k, v in field_help(cls).items() if not v.strip()]
        assert not missing, f"{cls.__name__} fields without help: {missing}"


def test_docs_cli_table_is_the_generated_one():
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text[text.index(TABLE_START) + len(TABLE_START): text.index(TABLE_END)].strip()
    assert table == options_table(), "docs/cli.md is stale: paste roadinterp.search.options.options_table()"


def _align_params():
    from roadinterp.cli import app

    align = typer.main.get_command(app).get_command(None, "align")
    return {opt: p for p in align.params for opt in p.opts}


def test_align_option_help_is_the_field_help_with_its_default():
    by_flag = _align_params()
    classes = {"": SearchConfig, "dii.": DIIConfig, "run.": RunOptions}
    for fl in config_flags():
        prefix = fl.key[: len(fl.key) - len(fl.name)]
        param = by_flag[fl.flag.split("/")[0]]
        assert field_help(classes[prefix])[fl.name] in param.help, (fl.key, param.help)
        assert param.show_default not in (None, False, True), fl.key  # the default is shown in --help


def test_a_new_config_field_is_an_option_a_docs_row_and_a_run_json_key(monkeypatch):
    """One edit (the field) and the option, the docs table and run.json all have it."""
    import dataclasses

    from roadinterp import cli
    from roadinterp.search import config as config_module
    from roadinterp.search import options as options_module
    from roadinterp.search.options import build

    extra = dataclasses.field(default=7, metadata={"help": "A knob added by a test."})
    New = dataclasses.make_dataclass("SearchConfig", [("knob", int, extra)], bases=(SearchConfig,))
    monkeypatch.setattr(config_module, "SearchConfig", New)
    assert any(fl.flag == "--knob" for fl in options_module.config_flags())
    assert "| `knob` | `--knob` | `7` | A knob added by a test. |" in options_table()

    def probe(**values):
        pass

    params = cli._with_config_options(probe).__signature__.parameters
    assert "knob" in params and params["knob"].default.help == "A knob added by a test."
    cfg, _ = build({"knob": 9, "families": "road"})
    assert cfg.knob == 9 and cfg.to_json()["knob"] == 9 and New.from_json(cfg.to_json()).knob == 9


def test_run_options_share_one_set_of_defaults_and_refuse_bad_values():
    from roadinterp.search.options import build

    _, run = build({})
    assert run == RunOptions() and (run.workers, run.batched, run.executor) == (1, True, "local")
    _, run = build({"workers": 2, "batched": False, "engine": "pyvene"})
    assert (run.workers, run.batched, run.engine) == (2, False, "pyvene")
    for bad in ({"executor": "slurm"}, {"workers": 0}, {"device": "tpu"}, {"dtype": "int8"}, {"engine": "fast"}):
        with pytest.raises(ConfigError):
            RunOptions(**bad)


def test_batch_size_follows_the_data_size():
    assert DIIConfig().steps_batch == 256  # the default n_train 8192: unchanged
    assert DIIConfig(n_train=256).steps_batch == 32 and DIIConfig(n_train=100).steps_batch == 32
    assert DIIConfig(n_train=256, batch_size=64).steps_batch == 64
    assert SearchConfig(n_train=256).to_json()["batch_size"] is None


def test_wrong_shapes_in_a_config_are_config_errors():
    for bad in ({"positions": [{"a": 1}]}, {"positions": {"a": 1}}, {"layers": [[0]]}, {"dii": [1]},
                {"n_train": [1]}, {"variables": {"x": 1}}, {"dii": {"depth": [2]}}, {"lr": {"x": 1}}):
        with pytest.raises(ConfigError):
            SearchConfig.from_json(bad)


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
