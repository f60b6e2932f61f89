# Everything a fresh machine (Python 3.11+, Node/npm) needs goes through these targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test lint format bench check-reliability demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Set up everything and serve the API on 127.0.0.1:$(PORT) with a local data plane.
run: install
	LOCAL_MODE=true SESSION_COOKIE_SECURE=$${SESSION_COOKIE_SECURE:-false} $(PY) -m src serve

## Set up everything and run the test suite (it starts its own data plane).
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

## The API and the demo SPA on another origin (http://127.0.0.1:5173), with a dev token.
demo: install
	$(PY) -m examples.demo

## Benchmark the service against its data plane (installs wrk and matplotlib); see bench/run.py.
bench: install
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk) >/dev/null
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.run

## The long reliability runs: schemathesis with 200 examples per operation.
check-reliability: install
	FUZZ_EXAMPLES=200 FUZZ_SEED= $(PY) -m pytest -q -s tests/integration/test_fuzz_api.py

lint: install
	$(VENV)/bin/ruff check src tests alembic bench examples
	$(VENV)/bin/ruff format --check src tests alembic bench examples
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format src tests alembic bench examples
	$(VENV)/bin/ruff check --fix src tests alembic bench examples

clean:
	rm -rf $(VENV) .local .tools
