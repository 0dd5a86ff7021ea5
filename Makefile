PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: serve test lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[build,test]"
	touch $@ $(VENV)/.installed-serve

serve: $(VENV)/.installed-serve
	$(BIN)/kgrid serve knowledge_objects --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/ruff check kgrid_py activator knowledge_objects tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check --fix kgrid_py activator knowledge_objects tests benchmarks
	$(BIN)/ruff format kgrid_py activator knowledge_objects tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
