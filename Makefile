# Two commands set everything up on a fresh machine: `make train` and `make test`.
# `make help` lists every target.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
STORE ?= sqlite:///mlruns/mlflow.db
STUDIES ?= sqlite:///multirun/optuna.db
HOST ?= 127.0.0.1
PORT ?= 5000
DASHBOARD_PORT ?= 8080
DOCS_PORT ?= 8000
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install train sweep test test-fast lint format docs docs-serve docs-reference ui dashboard clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  Pass arguments with ARGS=\"...\", e.g. make train ARGS=\"model=mlp trainer.epochs=5\""

install: $(STAMP)  ## create .venv and install the project with its dev tools

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# compat: the checkout itself on sys.path, so Hydra's plugin scan finds
	# hydra_plugins/ from any folder (setuptools' default editable finder hides it).
	$(PY) -m pip install --quiet -e ".[dev]" --config-settings editable_mode=compat
	rm -f $(VENV)/.installed-* && touch $@

train: $(STAMP)  ## the default run: cnn on the bundled digits, tracked in MLflow
	$(PY) -m experiment.train $(ARGS)

sweep: $(STAMP)  ## an Optuna sweep over lr, batch size, dropout, weight decay
	$(PY) -m experiment.train -m hparams_search=optuna $(ARGS)

test: $(STAMP)  ## the whole suite (slow tests included), two tests at a time
	$(PY) -m pytest -q -n 2 --dist worksteal $(ARGS)

test-fast: $(STAMP)  ## the fast tier: no slow tests, two at a time
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not slow" $(ARGS)

lint: $(STAMP)  ## the pre-commit checks on every file: ruff, formatting, large files, conflicts
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pre-commit run --all-files

format: $(STAMP)  ## fix what ruff can fix, and format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

docs: $(STAMP)  ## build the docs site into site/ (strict: a warning fails the build)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: $(STAMP)  ## serve the docs site on 127.0.0.1:8000 (DOCS_PORT=)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr $(HOST):$(DOCS_PORT)

docs-reference: $(STAMP)  ## regenerate docs/reference/configuration.md from the schema
	$(PY) -m experiment.config.reference > docs/reference/configuration.md

ui: $(STAMP)  ## the MLflow UI over the project's store (127.0.0.1:5000; HOST=, PORT= to change)
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE) --host $(HOST) --port $(PORT)

dashboard: $(STAMP)  ## optuna-dashboard over the sweeps' studies (127.0.0.1:8080; DASHBOARD_PORT=)
	$(VENV)/bin/optuna-dashboard $(STUDIES) --host $(HOST) --port $(DASHBOARD_PORT)

clean:  ## remove run outputs, sweeps and the MLflow store
	rm -rf outputs multirun mlruns site .pytest_cache
