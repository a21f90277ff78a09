# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use (`make install`), with the versions pinned in constraints.txt.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    := build/demo
EXTRAS  := export,test,bench,openvino,serve,ray
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo tune test test-fast lint lock weights gpu-check clean

install: $(STAMP)

# torch is pinned to 2.13.0: that version installs the CPU build; any other pulls CUDA wheels.
# constraints.txt pins every other package to the versions `make test` last passed with.
# Debian packages: chromium for the kiosk page's browser test (Playwright drives it: no browser
# download), espeak-ng for text in; without them (no apt-get, no root) their tests are skipped, saying why.
$(STAMP): pyproject.toml constraints.txt
	@{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } && command -v espeak-ng >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null 2>&1 && $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium espeak-ng; } || \
		echo "note: chromium or espeak-ng not installed: the kiosk page's browser test or text in will be skipped"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: install
	$(BIN)/emote demo --out $(DEMO)

# This machine's fastest backend, precision and threads for the demo bundle, stored as its default (after
# `make demo`). Not part of `make demo`: it measured 8 min on a loaded 2-core Zen 3 (96 s of CPU; about a
# minute idle), minutes, not seconds (bench/RESULTS.md, "emote tune").
tune: install
	$(BIN)/emote tune $(DEMO)/bundle

# The layers (import-linter contracts in pyproject.toml) and ruff first: seconds, before minutes of tests.
lint: install
	$(BIN)/ruff check emote tests bench training
	$(BIN)/ruff format --check emote tests bench training
	$(BIN)/lint-imports

# Two workers, one core each (tests/conftest.py pins them), whole files per worker: the
# exports that fixtures make are mostly single-threaded tracing, so the two halves overlap.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Refresh constraints.txt: the newest versions pyproject.toml allows, resolved in a fresh venv;
# then run `make test` before committing the new file.
lock:
	rm -rf build/lock-venv
	$(PY) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet --upgrade pip
	build/lock-venv/bin/pip install --quiet torch==2.13.0
	build/lock-venv/bin/pip install --quiet -e ".[$(EXTRAS)]"
	build/lock-venv/bin/pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > constraints.txt
	rm -rf build/lock-venv
	@echo "wrote constraints.txt: run make test, then commit it"

# Retrain the demo model from nothing (hours on 2 CPU cores; needs espeak-ng; resumes).
weights: install
	bash training/reproduce.sh

# On a GPU machine. Offline, on an image with CUDA (and perhaps PyTorch):
#   make gpu-check PYTHON=/usr/bin/python3 [WHEELHOUSE=dir-of-wheels]   (docs/gpu.md)
gpu-check:
	@PYTHON="$(PYTHON)" WHEELHOUSE="$(WHEELHOUSE)" bash bench/gpu_check.sh

clean:
	rm -rf build $(VENV)
