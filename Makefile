# The two commands of the README: `make demo` and `make test`. Everything else is a step of those.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test unit integration typecheck services-up services-down clean

$(BIN)/monitor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

demo: $(BIN)/monitor            ## local Kafka + Redis, a worker, live synthetic traffic
	$(BIN)/monitor demo

test: $(BIN)/monitor services-up typecheck   ## the whole suite, on the real services
	$(BIN)/python -m pytest

unit: $(BIN)/monitor            ## fast tests of the pure core, no services
	$(BIN)/python -m pytest tests/unit

typecheck: $(BIN)/monitor
	$(BIN)/mypy

services-up: $(BIN)/monitor
	$(BIN)/monitor services up

services-down: $(BIN)/monitor
	$(BIN)/monitor services down

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache
