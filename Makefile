# gwproxy — the two commands a fresh clone needs are `make run` and `make test`.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
# pip's notices about absent optional indexes are noise; failures still fail.
QUIET_PIP := { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }

.PHONY: run test test-vllm vllm lint typecheck services bench bench-fleet bench-scale install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e . 2>&1 | $(QUIET_PIP)
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]' 2>&1 | $(QUIET_PIP)
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

## Start the gateway on embedded defaults in front of the bundled vLLM simulator.
run: $(VENV)/.installed
	$(BIN)/gwproxy demo --port $(PORT)

## Lint, type-check and run the whole test suite (the tests start the servers they need).
test: $(VENV)/.installed-test lint typecheck services
	$(BIN)/python -m pytest --cov --cov-report=term -q

services:
	bash tests/install-services.sh

## vLLM's CPU build in a virtualenv of its own (~/.cache/gwproxy; minutes once, then cached) for
## the real-vLLM tier; `make test` runs it too (the tests install it in the background otherwise).
vllm:
	bash tests/vllm/install.sh

## The real-vLLM tier alone: the gateway, the fleet and the simulator against vLLM's CPU build.
test-vllm: $(VENV)/.installed-test vllm
	$(BIN)/python -m pytest -q tests/vllm

lint: $(VENV)/.installed-test
	$(BIN)/ruff check gwproxy tests bench migrations
	$(BIN)/ruff format --check gwproxy tests bench migrations
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy gwproxy

## The overhead benchmark: direct vs bare pass-through vs gateway, one run; writes bench/results/.
bench: $(VENV)/.installed-test
	bash bench/setup.sh
	$(BIN)/python -m bench.run

## The fleet benchmark: routing among 3 upstreams vs 1, the balancing score vs round robin, cold start vs wake.
bench-fleet: $(VENV)/.installed-test
	bash bench/setup.sh
	$(BIN)/python -m bench.fleet

## Reads at scale: PostgreSQL seeded with 20 M requests and 2 M messages, each console/API read's p95.
bench-scale: $(VENV)/.installed-test
	$(BIN)/python -m bench.scale

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* *.egg-info
