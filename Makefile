# RunLedger: the single entry point. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := test
.PHONY: chaos venv lint test simulate demo bench bench-prefect clean distclean

## venv: create .venv and install the project with its dev extras (again only when pyproject.toml changed)
venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

## lint: ruff and mypy (strict) over the whole repository
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

## test: lint, then the whole test suite (starts and stops its own broker)
test: venv lint
	$(BIN)/python -m pytest -q

## simulate: play SEEDS (default 200000) seeds of the protocol simulation on every core; replay one with
## `$(BIN)/python -m tests.simulation.run --seed N --trace`
SEEDS ?= 200000
simulate: venv
	$(BIN)/python -m tests.simulation.run --seeds $(SEEDS)

## demo: create the env, then run the example flow on a private embedded broker (stops all it starts)
demo: venv
	$(BIN)/runledger demo

## bench-prefect: a separate venv with Prefect 1.4.1, the baseline bench/bench_local.py measures beside ours
bench-prefect: .venv-prefect/.installed

.venv-prefect/.installed:
	$(PYTHON) -m venv .venv-prefect
	.venv-prefect/bin/python -m pip install 'prefect==1.4.1'
	@touch $@

## bench: run every bench/bench_*.py (make bench-prefect first to include the Prefect baseline)
bench: venv
	@set -e; for script in bench/bench_*.py; do \
		[ -e "$$script" ] || { echo "no benchmarks in bench/"; break; }; \
		echo "== $$script"; $(BIN)/python "$$script"; \
	done

## clean: remove build artefacts and tool caches (keeps .venv)
clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

## distclean: clean, and remove .venv too
distclean: clean
	rm -rf $(VENV)

## chaos: real processes on a real broker, SIGKILLed and frozen while they work (scripts/chaos.py; ARGS=...)
chaos: venv
	$(BIN)/python scripts/chaos.py $(ARGS)
