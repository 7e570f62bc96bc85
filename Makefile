# digitserve: the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# MNIST in IDX format; CI and developer machines have it beside the checkout.
DIGITSERVE_DATA_DIR ?= $(firstword $(wildcard ../shared/datasets/mnist) data)
MODEL_REPO ?= models
MODEL_NAME ?= mnist
PORT ?= 8500
METRICS_PORT ?= 8501
export DIGITSERVE_DATA_DIR

.PHONY: help run test lint typecheck protos bench bench-reload clean

help:
	@echo "make run    set up, train a quick default model if none is published, serve it"
	@echo "make test   set up and run the whole test suite"
	@echo "make bench  run the serving benchmark (see README)"
	@echo "make lint | typecheck | protos | clean"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e '.[server,train]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e '.[server,train,dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	@if $(PY) -c "import sys; from pathlib import Path; \
	from digitserve.server.repository import list_versions; \
	sys.exit(0 if list_versions(Path('$(MODEL_REPO)'), '$(MODEL_NAME)') else 1)"; then \
	  echo "== using the published versions in $(MODEL_REPO)/$(MODEL_NAME)"; \
	else \
	  echo "== no published model in $(MODEL_REPO)/$(MODEL_NAME): training a quick one"; \
	  $(VENV)/bin/digitserve-train --profile quick --model-repo $(MODEL_REPO) \
	    --model-name $(MODEL_NAME) --data-dir $(DIGITSERVE_DATA_DIR) || exit 1; \
	fi
	@echo "== serving on localhost:$(PORT) (metrics on :$(METRICS_PORT)/metrics); Ctrl-C stops"
	@echo "   try:  $(VENV)/bin/digitserve --target localhost:$(PORT) status"
	@echo "         $(VENV)/bin/digitserve --target localhost:$(PORT) classify some-digit.png"
	exec $(VENV)/bin/digitserve-server --model-repo $(MODEL_REPO) --default-model $(MODEL_NAME) \
	  --port $(PORT) --metrics-port $(METRICS_PORT)

test: $(VENV)/.installed-dev
	bash scripts/ensure_prometheus.sh
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy client/digitserve server/digitserve trainer/digitserve

protos: $(VENV)/.installed-dev
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) scripts/gen_protos.py

bench: $(VENV)/.installed-dev
	$(PY) -m digitserve.server.benchsuite --data-dir $(DIGITSERVE_DATA_DIR) --out results

bench-reload: $(VENV)/.installed-dev
	$(PY) scripts/bench_reload_rss.py --model-repo $(MODEL_REPO) --model $(MODEL_NAME)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
