# glasscockpit developer commands. `make help` lists them.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
EXTRAS := agent,server,demo,dev,parity,bench,models,integrations
export OMP_NUM_THREADS ?= 1

.PHONY: help demo test test-all test-gpu lint imports fmt types system-deps install bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, from the CPU build on this disk; constraints keep BackPACK's
	# torchvision from pulling a multi-GB CUDA torch.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(BIN)/.installed  ## create .venv and install glasscockpit with all extras

system-deps:  ## Debian packages for browser and compose tests (chromium, docker-compose)
	@command -v chromium >/dev/null && command -v docker-compose >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  chromium docker-compose >/dev/null; }

demo: $(BIN)/.installed  ## serve the dashboard and stream a real training run into it
	$(BIN)/glasscockpit demo

test: $(BIN)/.installed system-deps  ## run the test suite (no slow, no GPU tests)
	$(BIN)/pytest -m "not slow and not cuda"

test-all: $(BIN)/.installed system-deps  ## every test except GPU ones
	$(BIN)/pytest -m "not cuda"

test-gpu: $(BIN)/.installed  ## GPU tests (needs CUDA)
	$(BIN)/pytest -m cuda

.typecheck: $(wildcard glasscockpit/*.py)
	rm -rf .typecheck && mkdir -p .typecheck/glasscockpit
	for d in agent server dashboard protocol diagnosis; do ln -s ../../$$d .typecheck/glasscockpit/$$d; done
	for f in glasscockpit/*.py; do ln -s ../../$$f .typecheck/glasscockpit/; done

types: $(BIN)/.installed .typecheck  ## mypy --strict over the installed layout
	$(BIN)/mypy

# import-linter resolves packages from real folders, so the contracts run over a
# copy of the installed layout (symlinks followed).
imports: $(BIN)/.installed .typecheck  ## import-linter contracts: the walls between agent, server, dashboard, protocol
	rm -rf .importtree && mkdir -p .importtree && cp -rL .typecheck/glasscockpit .importtree/
	find .importtree -name __pycache__ -prune -exec rm -rf {} +
	cd .importtree && PYTHONPATH=. ../$(BIN)/lint-imports --no-cache ../pyproject.toml

lint: $(BIN)/.installed .typecheck imports  ## ruff (lint + format check), mypy and the import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(BIN)/.installed  ## format and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BIN)/.installed system-deps  ## every benchmark (~15 min; BENCH_ARGS=--quick ~4) → docs/benchmarks.md
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:  ## remove caches and test output
	rm -rf .typecheck .importtree .mypy_cache .ruff_cache .pytest_cache test-output
