# Two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/lightning_digits.py
	$(BIN)/python examples/keras_breast_cancer.py
	$(BIN)/python examples/regression_diabetes.py
	$(BIN)/python examples/lightning_char_lm.py

lint: $(STAMP)
	$(BIN)/ruff format --check src tests examples
	$(BIN)/ruff check src tests examples

typecheck: $(STAMP)
	$(BIN)/mypy

# Keras fixes its backend at import, so the torch-backend tests run in their own process.
unit: $(STAMP)
	$(BIN)/python -m pytest src/initguard tests --ignore=tests/keras_torch
	KERAS_BACKEND=torch $(BIN)/python -m pytest tests/keras_torch

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
