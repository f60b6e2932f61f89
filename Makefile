# Everything a fresh machine (Python 3.11+, Node/npm) needs goes through these targets.
# Installs come from the committed uv.lock (`uv sync --frozen`); uv itself is installed
# with pip into .tools/uv when it is not on PATH.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
# uv's own Python downloads are not reachable everywhere: use the machine's Python.
export UV_PYTHON_DOWNLOADS := never
# The machine's certificate store, for uv, pip and npm alike: behind a TLS-inspecting proxy
# whose CA the machine trusts, installs work as they do elsewhere.
export UV_SYSTEM_CERTS := 1
SYSTEM_CA := $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt))
ifneq ($(SYSTEM_CA),)
export NODE_EXTRA_CA_CERTS ?= $(SYSTEM_CA)
PIP_CERT_OPTION := --cert $(SYSTEM_CA)
endif
UV ?= $(or $(shell command -v uv 2>/dev/null),.tools/uv/bin/uv)
# --inexact: `make run` after `make test` keeps the test tools instead of removing them.
SYNC = $(UV) sync --frozen --inexact --quiet --python $(PYTHON)
SOURCES = src tests bench examples

.PHONY: help install run dev test test-quick lint format bench check-reliability demo lock clean

## This list of targets (the default).
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z][a-z-]*:/{if (doc) {split($$0,t,":"); \
		printf "  make %-18s %s\n", t[1], doc}; doc=""} !/^## /{if (!/^[a-z][a-z-]*:/) doc=""}' \
		$(MAKEFILE_LIST)

.tools/uv/bin/uv:
	@echo "fetching uv with pip into .tools/uv (once)"
	@$(PYTHON) -m venv .tools/uv
	@.tools/uv/bin/python -m pip install --quiet $(PIP_CERT_OPTION) 'uv>=0.13'

## The virtual environment with the test and lint tools, from uv.lock.
install: $(UV)
	$(SYNC) --extra dev

## Set up everything and serve the API on 127.0.0.1:8000 (PORT) with a local data plane.
run: $(UV)
	@$(SYNC) --extra local
	@LOCAL_MODE=true SESSION_COOKIE_SECURE=$${SESSION_COOKIE_SECURE:-false} $(VENV)/bin/autopilot-api serve

## As `make run`, restarting the app when a file under src/autopilot_api changes.
dev: $(UV)
	@$(SYNC) --extra local
	@LOCAL_MODE=true SESSION_COOKIE_SECURE=$${SESSION_COOKIE_SECURE:-false} $(VENV)/bin/autopilot-api serve --reload

## Set up everything and run the test suite (it starts its own data plane).
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

## The inner loop: the suite without the tests marked slow (load, fuzzing, browsers, processes).
test-quick: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

## The API and the demo SPA on another origin (http://127.0.0.1:5173), with a dev token.
demo: $(UV)
	$(SYNC) --extra local
	$(PY) -m examples.demo

## Benchmark the service against its data plane (wrk from PATH, else fetched into .tools/wrk).
bench: $(UV)
	$(SYNC) --extra dev --extra bench
	$(PY) -m bench.run

## The long reliability runs: schemathesis with 200 examples per operation, the load scripts.
check-reliability: install
	FUZZ_EXAMPLES=200 FUZZ_SEED= $(PY) -m pytest -q -s tests/integration/test_fuzz_api.py
	EVENTS_SCALE=1 $(PY) -m pytest -q -s tests/integration/test_event_streams_at_scale.py
	$(PY) -m bench.storage_bounds
	$(PY) -m bench.event_streams
	$(PY) -m bench.fair_share
	SERVER_LIMITS_HEAVY=1 $(PY) -m pytest -q -s tests/integration/test_server_limits_heavy.py

## ruff and mypy, as CI runs them.
lint: install
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy

## ruff format and ruff's fixes.
format: install
	$(VENV)/bin/ruff format $(SOURCES)
	$(VENV)/bin/ruff check --fix $(SOURCES)

## Re-resolve uv.lock from PyPI after a change to pyproject.toml's dependencies.
lock: $(UV)
	$(UV) lock --default-index https://pypi.org/simple

## Remove the virtual environment, the local data plane and the fetched tools.
clean:
	rm -rf $(VENV) .local .tools
