# docwatch: every target CI and developers use.  `make test` installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The pipeline side of the Dagster integration lives in its own venv, as in production: current
# Dagster (which requires watchdog<7; the daemon requires watchdog 7.1) plus docwatch installed
# with --no-deps for the `docwatch.dagster` resource.  README, "Dagster integration".
PIPELINE_VENV   ?= .venv-pipeline
PIPELINE_STAMP  := $(PIPELINE_VENV)/.installed
PIPELINE_PYTHON := $(abspath $(PIPELINE_VENV))/bin/python
# The Dagster version the integration is tested with; bump it deliberately.
DAGSTER_SPEC    ?= dagster==1.13.29
# The Dagster tests fail (never skip) when the pipeline venv is missing.
TEST_ENV := REQUIRE_DAGSTER=1 TEST_PIPELINE_PYTHON=$(PIPELINE_PYTHON)

.PHONY: demo test test-long test-faults lint format bench bench-quick clean system-deps

# --clear: a venv left from an older layout (which held Dagster 1.8.4) is rebuilt from scratch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(PIPELINE_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv --clear $(PIPELINE_VENV)
	$(PIPELINE_PYTHON) -m pip install --quiet --upgrade pip
	$(PIPELINE_PYTHON) -m pip install --quiet '$(DAGSTER_SPEC)'
	$(PIPELINE_PYTHON) -m pip install --quiet --no-deps -e .
	$(PIPELINE_PYTHON) -m pip install --quiet 'psycopg[binary]>=3.2,<4'  # readers of a PostgreSQL index
	$(PIPELINE_PYTHON) -c 'import dagster; print("pipeline venv: Dagster", dagster.__version__)'
	touch $(PIPELINE_STAMP)

## demo: `docwatch watch` on an empty example-data/ while the example pipeline writes into it
## live (~1 minute): documents appear, pending -> ok, parse failures, copy-mode links; then
## SIGTERM, `docwatch status` and one `docwatch latest` (examples/demo.py recreates example-data/)
demo: $(STAMP)
	$(BIN)/python examples/demo.py --data-root example-data

## system-deps: Debian's postgresql (the tests run their own server) and strace, when missing
system-deps:
	.ci/install-system-deps

## test: lint, then the whole suite on 2 workers (most tests wait on real processes and disks;
## the long fault campaign is `make test-long`)
test: lint system-deps $(PIPELINE_STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2 -m "not long"

## test-long: the whole suite with the long fault campaign, then every seeded fault
test-long: lint system-deps $(PIPELINE_STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2
	$(TEST_ENV) $(BIN)/python tests/seeded_faults.py

## test-faults: plant each seeded fault in a throwaway copy; its tests must fail (one line each)
test-faults: system-deps $(PIPELINE_STAMP)
	$(TEST_ENV) $(BIN)/python tests/seeded_faults.py

lint: $(STAMP)
	$(BIN)/ruff check daemon tests examples bench
	$(BIN)/ruff format --check daemon tests examples bench

format: $(STAMP)
	$(BIN)/ruff format daemon tests examples bench

## bench: the floor (kernel, disk), scan vs cp -a, --link vs cp -al, rescan vs walk+stat, RSS
## (bench/run.py, ~100,000 files), the live daemon incl. issue 10's burst (live.py), latest on a
## 1M-row index (reader.py), PostgreSQL vs SQLite (postgres.py)
## Each bench keeps its files (--keep) and they are removed only after the last one: on ext4
## without a journal a deletion slows every file creation of the next minutes (bench/README.md).
bench: $(STAMP) system-deps
	$(BIN)/python bench/floor.py --keep
	$(BIN)/python bench/run.py --keep
	$(BIN)/python bench/live.py --keep
	$(BIN)/python bench/reader.py
	$(BIN)/python bench/postgres.py
	rm -rf bench/out/floor-work bench/out/work bench/out/tree bench/out/tree.json bench/out/live-work

bench-quick: $(STAMP) system-deps
	$(BIN)/python bench/floor.py --rounds 1 --files 3000
	$(BIN)/python bench/run.py --files 5000 --repeats 1
	$(BIN)/python bench/live.py --quick
	$(BIN)/python bench/reader.py --quick
	$(BIN)/python bench/postgres.py --quick

clean:
	rm -rf $(VENV) $(PIPELINE_VENV) example-data bench/out .pytest_cache .hypothesis
