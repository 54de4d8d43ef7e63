# The two set-up commands of the README: `make demo` and `make test` (each creates .venv on first use).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 2
# pytest workers: the suite is mostly TF start-up and subprocesses that wait (signals, peers, servers); on
# 2 cores, 3 workers fill those waits (892 s with 2, 680 s with 3, the same tests).
WORKERS ?= 3

.PHONY: venv test test-fast lint format demo clean

$(BIN)/activate: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

venv: $(BIN)/activate

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -n $(WORKERS) --dist worksteal

test-fast: venv
	$(BIN)/python -m pytest -n $(WORKERS) -m "not slow"

# The main job end to end on data that ships inside scikit-learn: train ResNet-20 on the CPU, export, show where.
demo: venv
	rm -rf runs/demo
	$(BIN)/python -m trainers.demo --model-dir runs/demo --export-dir saved_models

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
