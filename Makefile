# Unistock developer entry points.  Everything runs inside $(VENV); `make test` works on a
# fresh clone as long as python3 >= 3.11 is installed (redis-server, mosquitto, postgresql, and
# for the tests nodejs with npm (the Node.js example) and prometheus (deploy/), are installed with
# apt-get when running as root on Debian, see `make services`).

PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
PIP = $(PY) -m pip
STAMP = $(VENV)/.installed
PYTEST_ARGS ?=
ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help venv services run demo test lint proto bench clean

help:
	@echo "make venv      create $(VENV) and install unistock[dev] (editable)"
	@echo "make services  check/install redis-server, mosquitto, postgresql, nodejs, npm, prometheus"
	@echo "make run       run the server with private redis/mosquitto in ./var (ARGS=...)"
	@echo "make demo      play the store/web journeys on private services, narrated (ARGS=--fast)"
	@echo "make test      run the test suite (PYTEST_ARGS=...)"
	@echo "make lint      ruff check, ruff format --check, mypy --strict"
	@echo "make proto     regenerate protobuf/gRPC code"
	@echo "make bench     run the benchmarks"
	@echo "make clean     remove ./var and caches (keeps $(VENV))"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than 3.11; run e.g. make PYTHON=python3.11" >&2; exit 1; }
	@set -e; \
	if [ ! -x "$(PY)" ]; then \
		if ! $(PYTHON) -m venv "$(VENV)"; then \
			rm -rf "$(VENV)"; \
			if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
				echo ">>> python venv support missing: installing Debian package python3-venv" >&2; \
				DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv || \
				{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; }; \
				$(PYTHON) -m venv "$(VENV)"; \
			else \
				echo "error: '$(PYTHON) -m venv' failed; install the Debian package python3-venv" >&2; \
				exit 1; \
			fi; \
		fi; \
	fi
	$(PIP) install --upgrade pip
	$(PIP) install 'hatchling>=1.25' editables
	$(PIP) install --no-build-isolation -e '.[dev]'
	@touch $@

services: venv
	$(PY) -m unistock.devtools.ensure

run: venv
	$(PY) -m unistock.devtools.ensure --no-postgres
	$(PY) -m unistock.devtools.run $(ARGS)

demo: venv
	$(PY) -m unistock.devtools.ensure --no-postgres
	$(PY) -m unistock.devtools.demo $(ARGS)

test: venv services
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy server/unistock clients/unistock edge_agents/unistock

proto: venv
	$(PY) scripts/gen_protos.py

bench: venv
	$(PY) -m bench

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
