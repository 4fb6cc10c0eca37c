# The README's commands. Everything runs from a clean clone on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint format bench clean engine

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The demo sweep for real: build demo/'s image, run its 6 jobs on the local engine as one
# Prefect flow run, then show the group, print the Prefect UI's page of its run, and end with
# the sweep's results: one row per job, its args and the accuracy it wrote to metrics.json.
demo: venv engine
	cd demo && ../$(BIN)/caliban run --nogpu --xgroup demo \
		--experiment_config experiment.json trainer.train
	cd demo && ../$(BIN)/caliban status --xgroup demo
	cd demo && ../$(BIN)/caliban ui --no_browser --xgroup demo
	cd demo && ../$(BIN)/caliban results --xgroup demo --sort accuracy

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# A real Docker engine and registry: reused when reachable, else installed and started.
engine: venv
	$(BIN)/python -m devtools.engine up

# The whole suite; it also builds the wheel and runs `caliban` from a fresh venv outside the
# checkout (tests/e2e/test_wheel_install.py).
test: lint engine
	$(BIN)/python -m pytest

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache .hypothesis
