PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
# Test processes (pytest-xdist): one per core of CI's 2-core machine; a test file stays on one worker.
TEST_WORKERS ?= 2

.PHONY: serve test lint java chromium postgres clean

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

# Spark's tests need a Java runtime (17+); install one where the machine has none.
java:
	@command -v java >/dev/null 2>&1 || { \
		echo "Installing a Java runtime for the Spark tests"; \
		apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless || apt-get install -y -qq default-jre-headless; }

# The catalogue's browser tests drive the distribution's Chromium (Playwright's own download is not used).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "Installing Chromium for the catalogue's browser tests"; \
		apt-get update -qq && apt-get install -y -qq chromium; }

# The capture tests start a real PostgreSQL (tests/pg.py: initdb/pg_ctl on a temporary directory);
# install the server binaries where none are under /usr/lib/postgresql/*/bin.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "Installing PostgreSQL for the capture tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

test: $(VENV)/.installed-test java chromium postgres
	$(BIN)/ruff check kgrid_py activator knowledge_objects tests benchmarks
	$(BIN)/lint-imports
	KGRID_NO_SKIP=1 $(BIN)/python -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.installed-test
	$(BIN)/ruff check --fix kgrid_py activator knowledge_objects tests benchmarks
	$(BIN)/ruff format kgrid_py activator knowledge_objects tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
