# CNF developer entry points. Two commands matter on a fresh machine:
#   make demo   - venv + install + run the embedded default and move two VMs (no services needed)
#   make test   - install what is missing (apt, PyPI), start the services the tests need, run everything
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: demo test venv system-deps services lint unit clean bench lab lab-migrate lab-down

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

demo: venv
	$(PY) scripts/demo.py

system-deps:
	bash scripts/install-system-deps.sh

services:
	bash scripts/ensure-services.sh

lint: venv
	$(VENV)/bin/ruff check cnf tests benchmarks scripts lab
	$(VENV)/bin/mypy cnf
	$(VENV)/bin/lint-imports

unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test: venv system-deps services lint
	$(VENV)/bin/pytest --durations=15 $(PYTEST_ARGS)

# The real-infrastructure lab (root: network namespaces, Ceph, FRR, QEMU, Keystone + Nova, two cnf-agents with
# etcd, PostgreSQL and Celery on Redis): docs/lab.md. ARGS passes options (e.g. ARGS="--no-agents", "--via rest").
lab: venv system-deps
	$(PY) -m lab.e2e up $(ARGS)

lab-migrate: venv
	$(PY) -m lab.e2e migrate $(ARGS)

lab-down: venv
	$(PY) -m lab.e2e down

bench: venv
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache htmlcov .coverage
