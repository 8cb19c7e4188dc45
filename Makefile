# Two commands matter: `make test` (everything the tests need, then the whole suite) and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# uv installs the locked versions (uv.lock); uv itself comes pinned and hash-checked from requirements/uv.txt.
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PYTHON_DOWNLOADS := never
# Reinstall whenever pyproject.toml or the lock changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml uv.lock | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# Our own packages, compiled to bytecode after every install (cheap when nothing changed).
PACKAGES := coordinator provider worker ops devkit bench scripts
# The fast tests: what `make test-latest` runs against the newest versions pyproject.toml allows.
FAST_TESTS ?= -m "not slow and not chaos and not cluster"

.PHONY: venv test test-latest lint lock format demo bench chaos services clean

$(UV): requirements/uv.txt
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements/uv.txt
	touch $@

# Bytecode is compiled at install time: with PYTHONDONTWRITEBYTECODE set (as on our CI machines) every process
# would otherwise compile each module it imports, about 1 s of CPU per coordinator or worker start.
$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync -q --locked --compile-bytecode --extra test --extra dev --python $(PYTHON)
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)
	@$(PY) -m compileall -q $(PACKAGES) >/dev/null

## lock: re-resolve uv.lock to the newest versions pyproject.toml allows (commit the result on purpose).
lock: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

## test-latest: the fast tests against the newest versions pyproject.toml allows (not the lock), in .venv-latest.
test-latest: venv
	bash scripts/install_test_deps.sh
	UV=$(UV) PYTHON=$(PYTHON) bash scripts/test_latest.sh $(FAST_TESTS) $(PYTEST_ARGS)

## test: install Python deps, PostgreSQL/promtool/etcd (apt) and the QuestDB jar (Maven Central), run the suite.
test: venv
	bash scripts/install_test_deps.sh
	$(PY) -m pytest $(PYTEST_ARGS)

## demo: 3 coordinators, a worker pool, SQLite and a synthetic exchange on loopback; backfill, read back, stop.
demo: venv
	$(PY) -m scripts.demo $(DEMO_ARGS)

## bench: every bench/ script (medians, ratios against baselines from the same run) -> bench/results/.
bench: venv
	bash scripts/install_test_deps.sh
	$(PY) -m bench.run_all

## lint: ruff (lint + format check) and mypy (strict).
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
	$(PY) -m devkit.services all

clean:
	rm -rf $(VENV) .venv-latest $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .hypothesis

## chaos: the long chaos run (seeds 1-3, twice the backfill per scenario, ~12 min); the bounded run (seed 1) is part
## of `make test`. SEAMLESS_CHAOS_SEEDS=4,5 picks other seeds (docs/reliability.md).
chaos: venv
	bash scripts/install_test_deps.sh
	SEAMLESS_CHAOS_LONG=1 $(PY) -m pytest tests/chaos -m chaos -s $(PYTEST_ARGS)
