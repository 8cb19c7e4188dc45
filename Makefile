# Two commands matter: `make test` (everything the tests need, then the whole suite) and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall whenever pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv test lint format demo bench chaos services clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

## test: install Python deps, PostgreSQL/promtool/etcd (apt) and the QuestDB jar (Maven Central), run the suite.
test: venv
	bash scripts/install_test_deps.sh
	$(PY) -m pytest $(PYTEST_ARGS)

## demo: 3 coordinators, a worker pool, SQLite and a synthetic exchange on loopback; backfill, read back, stop.
demo: venv
	$(PY) scripts/demo.py $(DEMO_ARGS)

## bench: every bench/ script (medians, ratios against baselines from the same run) -> bench/results/.
bench: venv
	bash scripts/install_test_deps.sh
	$(PY) bench/run_all.py

## lint: ruff (lint + format check) and mypy.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## services: run QuestDB and PostgreSQL in the foreground for development (Ctrl-C stops them).
services: venv
	bash scripts/install_test_deps.sh
	$(PY) scripts/devservices.py all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

## chaos: the long chaos run (seeds 1-3, twice the backfill per scenario, ~12 min); the bounded run (seed 1) is part
## of `make test`. SEAMLESS_CHAOS_SEEDS=4,5 picks other seeds (docs/reliability.md).
chaos: venv
	bash scripts/install_test_deps.sh
	SEAMLESS_CHAOS_LONG=1 $(PY) -m pytest tests/chaos -m chaos -s $(PYTEST_ARGS)
