# The README's commands. Everything installs into .venv; nothing is needed by hand but Java 17.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast lint bench sample clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# fetch the Delta jars once (Spark's Ivy, Maven Central) so later starts are offline
	$(PY) -m streaming.session
	touch $(STAMP)

setup: $(STAMP)

# Restores the bundled sample's file modification times (git does not keep them)
# by regenerating it: the generator is deterministic, the bytes do not change.
sample: setup
	$(PY) -m streaming.generator --out data

run: sample
	$(PY) run_stream.py --report

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not e2e and not service and not cluster"

lint: setup
	$(PY) -m ruff check streaming tests tools run_stream.py
	$(PY) -m ruff format --check streaming tests tools run_stream.py
	$(PY) -m mypy

bench: setup
	$(PY) -m streaming.bench

clean:
	rm -rf lake checkpoints/readings checkpoints/readings-from-batch-* checkpoints/.lock bench_out spark-warehouse
