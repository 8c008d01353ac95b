# netwarden — `make run` and `make test` work on a fresh Debian/Ubuntu machine as root.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP_SYS  := $(VENV)/.system-ok
STAMP_VENV := $(VENV)/.venv-ok
PYTEST_ARGS ?=

LINT_DIRS := $(wildcard src tests bench tools)
BPF_OBJ := build/bpf/netwarden.bpf.o

.PHONY: all setup system venv bpf run test lint unit integration e2e bench clean

all: setup

setup: system venv bpf

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

# the eBPF objects (CO-RE); a machine without BTF or clang builds none and the ebpf backend
# reports why (netwarden doctor) - everything else still works
bpf: $(BPF_OBJ)
$(BPF_OBJ): scripts/build-bpf.sh $(wildcard src/netwarden/bpf/*.c src/netwarden/bpf/*.h) $(STAMP_SYS)
	bash scripts/build-bpf.sh -o build/bpf || echo "netwarden: eBPF objects not built (see above); the ebpf backend will be unavailable"

run: setup
	$(VENV)/bin/netwarden run

lint: setup
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)
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
