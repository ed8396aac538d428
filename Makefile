# Two commands set everything up on a fresh machine: `make train` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
STORE ?= sqlite:///mlruns/mlflow.db
STUDIES ?= sqlite:///multirun/optuna.db
HOST ?= 127.0.0.1
PORT ?= 5000
DASHBOARD_PORT ?= 8080
ARGS ?=

.PHONY: install train sweep test test-fast lint ui dashboard clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

train: $(STAMP)  ## the default run: cnn on the bundled digits, tracked in MLflow
	$(PY) -m experiment.train $(ARGS)

sweep: $(STAMP)  ## an Optuna sweep over lr, batch size, dropout, weight decay
	$(PY) -m experiment.train -m hparams_search=optuna $(ARGS)

test: $(STAMP)  ## the whole suite (slow tests included)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

ui: $(STAMP)  ## the MLflow UI over the project's store, on http://$(HOST):$(PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE) --host $(HOST) --port $(PORT)

dashboard: $(STAMP)  ## optuna-dashboard over the sweeps' study storage, on http://$(HOST):$(DASHBOARD_PORT)
	$(VENV)/bin/optuna-dashboard $(STUDIES) --host $(HOST) --port $(DASHBOARD_PORT)

clean:
	rm -rf outputs multirun mlruns .pytest_cache
