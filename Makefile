# Entry points: `make demo`, `make test` and `make serve`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: demo test serve lint clean

SERVE_MODEL := out/serve/model

$(BIN)/stylerec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/stylerec
	$(BIN)/stylerec demo --data data --out out/demo

# the demo's pipeline (configs/demo.json, embeddings shared with `make demo`), fitted once,
# then served on loopback; 300 shoppers give the learned ranker 22 validation pairs, too few
# to choose by, so the demo ranks with the blend
$(SERVE_MODEL)/recommender.json: | $(BIN)/stylerec
	$(BIN)/stylerec fit --config configs/demo.json --out $(SERVE_MODEL)

serve: $(SERVE_MODEL)/recommender.json
	$(BIN)/stylerec serve --model-dir $(SERVE_MODEL) --feedback-log out/serve/feedback.db --protect

test: $(BIN)/stylerec
	$(BIN)/python -m pytest

lint: $(BIN)/stylerec
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out
