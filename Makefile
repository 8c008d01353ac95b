# netwarden — `make run` and `make test` work on a fresh Debian/Ubuntu machine as root.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP_SYS  := $(VENV)/.system-ok
STAMP_VENV := $(VENV)/.venv-ok
PYTEST_ARGS ?=

.PHONY: all setup system venv run test lint unit integration e2e bench clean

all: setup

setup: system venv

system: $(STAMP_SYS)
$(STAMP_SYS): scripts/install-system.sh
	bash scripts/install-system.sh
	@mkdir -p $(VENV) && touch $@

venv: $(STAMP_VENV)
$(STAMP_VENV): pyproject.toml $(STAMP_SYS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: setup
	$(VENV)/bin/netwarden run

lint: setup
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/ruff format --check src tests bench tools
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

e2e: setup
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test: setup lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
