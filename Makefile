# The two commands of the README: `make demo` and `make test`. Everything else is a step of those.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: deps demo test unit integration lint typecheck services-up services-down clean

# What the machine lacks (redis-server, Java, Maven, promtool, Alertmanager, Python's venv): installed
# with apt-get as root, else the exact command is printed and make stops. Quiet when nothing is missing.
deps:
	@PYTHON=$(PYTHON) scripts/install-deps

# Order-only: deps runs first, but does not make the venv out of date.
$(BIN)/monitor: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

demo: deps $(BIN)/monitor       ## local Kafka + Redis, a worker, live synthetic traffic
	$(BIN)/monitor demo

test: deps $(BIN)/monitor lint services-up typecheck   ## the whole suite, on the real services
	$(BIN)/python -m pytest

unit: $(BIN)/monitor            ## fast tests of the pure core, no services
	$(BIN)/python -m pytest tests/unit

lint: $(BIN)/monitor            ## ruff: formatted and clean
	$(BIN)/ruff format --check monitor tests bench examples
	$(BIN)/ruff check monitor tests bench examples

typecheck: $(BIN)/monitor
	$(BIN)/mypy

services-up: $(BIN)/monitor
	$(BIN)/monitor services up

services-down: $(BIN)/monitor
	$(BIN)/monitor services down

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache
