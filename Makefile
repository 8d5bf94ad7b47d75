# docwatch: every target CI and developers use.  `make test` installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-long lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dagster]'
	touch $(STAMP)

## demo: build the bundled example legacy tree, index it, show status and one latest essay
demo: $(STAMP)
	rm -rf example-data
	$(BIN)/python examples/legacy_tree.py example-data --combos 6 --seed 1
	$(BIN)/docwatch scan --data-root example-data
	$(BIN)/docwatch status --data-root example-data
	$(BIN)/python examples/show_latest.py example-data

## test: lint, then the whole suite (fast default; the long fault campaign is `make test-long`)
test: $(STAMP)
	$(BIN)/ruff check daemon tests examples bench
	REQUIRE_DAGSTER=1 $(BIN)/python -m pytest -q -m "not long"

test-long: $(STAMP)
	REQUIRE_DAGSTER=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check daemon tests examples bench
	$(BIN)/ruff format --check daemon tests examples bench

format: $(STAMP)
	$(BIN)/ruff format daemon tests examples bench

## bench: ~100,000-file tree; scan vs cp -a, --link vs cp -al, rescan vs walk+stat, RSS
bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) example-data bench/out .pytest_cache .hypothesis
