# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use (`make install`).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    := build/demo

.PHONY: install demo test test-fast weights gpu-check clean

install: $(STAMP)

# torch is pinned to 2.13.0: that version installs the CPU build; any other pulls CUDA wheels.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[export,test,bench,openvino]"
	touch $(STAMP)

demo: install
	$(BIN)/emote demo --out $(DEMO)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Retrain the demo model from nothing (hours on 2 CPU cores; needs espeak-ng; resumes).
weights: install
	bash training/reproduce.sh

gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf build $(VENV)
