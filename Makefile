# AI FinOps exporter — every target installs what it needs by itself.
#   make run    the exporter on its built-in demo cluster (http://127.0.0.1:9877/)
#   make test   the whole test suite (unit, sources, web, rules, e2e with real Prometheus)
#   make stack  the demo exporter + Prometheus (rule bundle) + Alertmanager on 127.0.0.1 (Ctrl-C stops)
#   make bench  the fleet-scale benchmark table (100, 1k, 10k GPUs)
#   make lint   ruff and mypy --strict
#   make generate  regenerate dashboards, rules, deploy files and docs from their sources
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: help venv tools run test test-fast lint fmt bench generate kustomize stack clean

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

$(STAMP): pyproject.toml
	@echo ">> setting up a virtual environment in $(VENV) (Python deps from pyproject.toml)"
	@$(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip
	@$(VENV)/bin/pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

# promtool, prometheus, alertmanager, amtool: Debian's packages (tests start them on 127.0.0.1).
tools:
	@bash scripts/install-tools.sh

run: $(STAMP)
	@echo ">> starting the exporter on its demo cluster: http://127.0.0.1:9877/metrics (Ctrl-C stops)"
	@$(VENV)/bin/aifinops-exporter --demo

test: $(STAMP) tools
	@echo ">> running the test suite"
	@$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	@$(PY) -m pytest -q -m 'not e2e' $(PYTEST_ARGS)

lint: $(STAMP)
	@$(VENV)/bin/ruff check exporter tests bench scripts
	@$(VENV)/bin/ruff format --check exporter tests bench scripts
	@$(VENV)/bin/mypy

fmt: $(STAMP)
	@$(VENV)/bin/ruff format exporter tests bench scripts
	@$(VENV)/bin/ruff check --fix exporter tests bench scripts

# Regenerate committed derived files (PrometheusRule, dashboard ConfigMaps, series docs);
# a test fails when they drift from their sources.
generate: $(STAMP)
	@$(PY) scripts/render_rules.py
	@$(PY) scripts/build_dashboards.py
	@$(PY) scripts/generate.py
	@$(PY) -m aifinops.exposition.docs > docs/metrics.md

stack: $(STAMP) tools
	@$(PY) scripts/stack.py

kustomize:
	@bash scripts/install-kustomize.sh

bench: $(STAMP)
	@$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
