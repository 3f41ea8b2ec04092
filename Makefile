# Fleetboot: `make demo` and `make test` are all a newcomer needs (run as root:
# they install Debian packages and create network namespaces).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: deps system-deps python-deps test test-fast lint demo bench clean

deps: system-deps python-deps

system-deps:
	bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

python-deps: $(STAMP)

test: deps
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile --timeout 900

test-fast: python-deps
	FLEETBOOT_SKIP_PG=1 $(VENV)/bin/pytest -m "not qemu and not slow" -x -q

lint: python-deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

demo: deps
	$(PY) -m fleetboot.lab.demo

bench: deps
	$(PY) bench/dhcp.py
	$(PY) bench/tftp.py
	$(PY) bench/httpboot.py
	$(PY) bench/config.py
	$(PY) bench/storm.py
	$(PY) bench/storm_qemu.py
	$(PY) bench/vm_hotplug.py
	$(PY) bench/vm_migrate.py
	$(PY) bench/claims.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
