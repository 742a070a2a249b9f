# prompt-harness: every target makes the virtual environment on first use.
#   make base2new                  demo profile (synthetic data, tiny CLIP) when DATA_ROOT is empty
#   make base2new DATA_ROOT=/data  the paper's base-to-new study on your data
#   make test                      the test suite
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
DATA_ROOT ?=
LAUNCHER ?= local
BACKBONE ?=
OUT      ?= output
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## create the virtual environment (.venv) and install the project

.PHONY: test
test: $(STAMP) ## run the test suite (slow and Slurm tests included when a cluster is up)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: DATA_ROOT= LAUNCHER=local|slurm|debug BACKBONE= OUT=$(OUT)"
