# Two commands on a fresh machine with python3 and make:
#   make run    set up .venv and run the main job on the embedded default data
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LINT_PATHS := jaxguard tests benchmarks configs tools

.PHONY: setup run test lint bench clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/activate

setup: $(BIN)/activate

run: setup
	$(BIN)/python -m jaxguard.train --cfg cfgs/cvae.py

# The lint and format checks cover the same paths; `make test` runs both before pytest.
lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m benchmarks.losses

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
