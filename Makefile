# `make demo` and `make test` work on a fresh machine: each creates .venv if missing and installs
# what it needs (pip only; torch comes from the index pip is configured with).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# DeepSpeed ships as an sdist whose build imports torch: build it against the venv's torch
# instead of letting pip copy torch into an isolated build environment.
PIP_INSTALL := $(PIP) install --no-build-isolation

.PHONY: demo test test-fast clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: $(BIN)/python setup.py
	$(PIP) install -q setuptools wheel
	$(PIP_INSTALL) -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.demo-installed setup.py
	$(PIP_INSTALL) -q -e '.[dev]'
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/flip-scale demo

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest tests -q -m "not slow" -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
