# The two commands a new user needs: `make run` and `make test`. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# One test file per worker process, two at a time (--dist loadfile keeps a file's module fixtures in one process).
# Files are handed out in collection order, not xdist's default of most tests first: that default left the
# one-test files for last, and here those are the slowest (one end-to-end scenario each: crashes, pauses, bench
# smokes), so one worker ran the last few while the other stood idle. In collection order the many short files
# of monitor/, ops/ and quality/ come last and even out the two workers' ends.
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: help install system-deps run run-generator run-monitor test lint bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the pinned Python packages

node_modules/.installed: package.json
	npm install --no-audit --no-fund --silent
	touch node_modules/.installed

system-deps: ## Install the Debian packages the tests start (influxdb, prometheus, alertmanager, chromium)
	sh scripts/install-system-deps.sh

run: install node_modules/.installed ## Run the generator (:7860) and the monitor (:7861), wired together
	bash scripts/run.sh

test: system-deps install node_modules/.installed ## Install what the tests need, then run them all
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## ruff, mypy and the import contract (pyproject.toml says what each checks)
	$(PY) -m ruff check generator monitor common tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

bench: install ## Run the benchmarks; results go to bench/results/
	$(PY) -m bench.run

clean: ## Remove the venv, node_modules and local state
	rm -rf $(VENV) node_modules var outputs
