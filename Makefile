# `make demo` and `make test` work on a fresh machine: each creates .venv if missing and installs
# what it needs (pip only; torch comes from the index pip is configured with).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# DeepSpeed ships as an sdist whose build imports torch: build it against the venv's torch
# instead of letting pip copy torch into an isolated build environment.
PIP_INSTALL := $(PIP) install --no-build-isolation

# tests/test_data_spark.py runs img2dataset on Spark (local mode and a standalone master + worker):
# Java from Debian, pyspark from PyPI. pyspark ships as a ~450 MB sdist that takes minutes to
# build, so its wheel is built once into WHEELS (kept outside the clone) and installed from there.
WHEELS ?= $(HOME)/.cache/flip-scale/wheels
PYSPARK_VERSION ?= 4.3.0

.PHONY: demo demo-figure test test-fast simulate-recipes chromium spark clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo downloads with img2dataset ([data]) and draws the report with matplotlib ([report]).
$(VENV)/.demo-installed: $(BIN)/python setup.py
	$(PIP) install -q setuptools wheel
	$(PIP_INSTALL) -q -e '.[data,report]'
	touch $@

$(VENV)/.test-installed: $(VENV)/.demo-installed setup.py
	$(PIP_INSTALL) -q -e '.[dev]'
	touch $@

$(VENV)/.spark-installed: $(VENV)/.test-installed
	command -v java >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y openjdk-17-jre-headless)
	mkdir -p $(WHEELS)
	ls $(WHEELS)/pyspark-$(PYSPARK_VERSION)-*.whl >/dev/null 2>&1 || \
		$(PIP) wheel -q --no-deps -w $(WHEELS) pyspark==$(PYSPARK_VERSION)
	$(PIP) install -q --find-links $(WHEELS) pyspark==$(PYSPARK_VERSION)
	touch $@

spark: $(VENV)/.spark-installed

demo: $(VENV)/.demo-installed
	$(BIN)/flip-scale demo

# README's demo figure: run the demo, keep its Figure-1 panel (zero-shot against wall-clock time).
demo-figure: demo
	cp runs/demo/report/zeroshot_vs_wall.png docs/demo_zeroshot_vs_wall.png

# tests/test_report_browser.py opens the report in headless Chromium (Debian's `chromium`,
# installed here when missing; apt-get needs root, as on CI).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# PYTEST_ARGS: what `make test` runs (.ci/run adds -rs and a junit XML for its skip check).
PYTEST_ARGS ?= tests

test: $(VENV)/.test-installed $(VENV)/.spark-installed chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q -p no:cacheprovider

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest tests -q -m "not slow" -p no:cacheprovider

# Every paper recipe simulated at its layout (flip-scale plan --simulate), beside the analytic plan:
# the table in BENCHMARKS.md. Minutes per recipe; outside the test suite.
simulate-recipes: $(VENV)/.test-installed
	$(BIN)/python bench/simulate_recipes.py

clean-venv:
	rm -rf $(VENV)
