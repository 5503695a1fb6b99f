# SEER on Kubeflow — developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install test test-fast lint demo compile pretrain-10b schedule-reeval images push clean

help:  ## list targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install seer with kfp + test extras (idempotent)

test: install  ## run the whole test suite (slow tests included)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install  ## run the tests not marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install  ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: install  ## run the whole seer-pretrain DAG locally (kfp.local, CPU, rg-tiny)
	@echo "make demo: not yet — the Kubeflow layer (issue 8) wires the DAG into kfp.local."
	$(VENV)/bin/seer models

clean:  ## remove build outputs (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache demo-output
