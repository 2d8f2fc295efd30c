"""What the installed commands print on stderr, exactly, under HF_HUB_OFFLINE=1.

A dependency's new release can start printing on every import (transformers 5.25 pulled in
`kernels`, whose logger said "Skipping publisher trust check ..." three times per command
under HF_HUB_OFFLINE=1). These tests run the real console entry point against whatever is
installed, so the next such change fails here instead of in a user's terminal and in every
one-error-line assertion of the suite. `make test-latest` runs them against the latest
releases (the early warning); `make test` against the lock.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENTRY = [sys.executable, "-m", "_roadinterp_entry"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.pop("PYTHONWARNINGS", None)  # the user's default: warnings shown once
    return env


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [["--help"], ["tasks"], ["zoo"], ["align", "--help"]])
def test_commands_print_nothing_on_stderr(args):
    r = _run([*ENTRY, *args])
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"roadinterp {' '.join(args)} wrote to stderr:\n{r.stderr}"
    assert r.stdout.strip()


@pytest.mark.parametrize("args", [
    ["align", "--task", "no-such-task", "--out", "never-written"],
    ["align", "--task", "hierarchical-equality", "--seeds", "-3", "--out", "never-written"],
])
def test_bad_input_is_exactly_one_error_line(args, tmp_path):
    r = subprocess.run([*ENTRY, *args], env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert not (tmp_path / "never-written").exists()


def test_library_import_with_transformers_is_silent():
    """`import roadinterp` mutes the chatter even when the user then imports transformers' models."""
    code = ("import roadinterp, transformers\n"
            "from transformers import AutoModelForCausalLM, LlamaConfig\n"
            "AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,"
            " num_attention_heads=2, num_key_value_heads=2, vocab_size=32))\n")
    r = _run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr


def test_quiet_mutes_only_named_loggers():
    """The mute is by name: a logger roadinterp does not list keeps its level (real warnings stay)."""
    import logging

    from roadinterp import _quiet

    _quiet.quiet()
    assert logging.getLogger("kernels._internals.hf_hub").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("transformers.modeling_utils").getEffectiveLevel() < logging.ERROR
    assert "kernels" in _quiet.QUIET_LOGGERS


def test_peft_deprecation_notice_is_muted():
    """peft 0.21 on transformers 5.25 warns `is_gradient_checkpointing` is deprecated on every wrap."""
    code = ("import warnings; warnings.simplefilter('default')\n"
            "import roadinterp\n"
            "import peft, torch\n"
            "from transformers import AutoModelForCausalLM, LlamaConfig\n"
            "m = AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,"
            " num_attention_heads=2, num_key_value_heads=2, vocab_size=32))\n"
            "peft.get_peft_model(m, peft.LoraConfig(r=2, target_modules=['q_proj']))\n")
    r = _run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    assert "is_gradient_checkpointing" not in r.stderr, r.stderr
