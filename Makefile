# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: demo test lint clean

$(BIN)/stylerec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/stylerec
	$(BIN)/stylerec demo --data data --out out/demo

test: $(BIN)/stylerec
	$(BIN)/python -m pytest

lint: $(BIN)/stylerec
	$(BIN)/ruff check recsys stylers evaluation tests scripts

clean:
	rm -rf $(VENV) out
