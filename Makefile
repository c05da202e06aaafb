# The two commands of the README: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "deepops-infra needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

# Lease a CPU machine from the local pool, run something in it, release it, print its cost line.
demo: $(VENV)/.installed-run
	$(BIN)/deepops run --cloud onprem --gpus 0 --ttl 30m --idle-timeout 10m -- \
	  python -c "import platform, os, packaging; print('hello from', os.environ['DEEPOPS_MACHINE'], 'on', platform.node(), '| python', platform.python_version(), '| packaging', packaging.__version__)"

# System services the tests use (PostgreSQL, sshd), then lint and the whole suite.
test: $(VENV)/.installed-dev
	bash scripts/test-services.sh > $(VENV)/test-services.env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	set -a && . $(VENV)/test-services.env && set +a && $(BIN)/python -m pytest -n 2 -q --durations=10

# The fast layer for iteration: unit and ledger tests, no plays, no CLI or server processes.
test-fast: $(VENV)/.installed-dev
	bash scripts/test-services.sh > $(VENV)/test-services.env
	set -a && . $(VENV)/test-services.env && set +a && $(BIN)/python -m pytest -n 2 -q -m "not ansible and not slow"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.installed-dev
	$(BIN)/python tests/benchmarks/bench_foundation.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
