# The two commands: `make demo` runs the whole loop on the embedded default, `make test` runs the
# checks and the test suite against real local services. Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint types unit integration services venv flower flower-sim clean

demo: $(STAMP)
	$(BIN)/fleetlearn demo

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
test: $(STAMP) services flower flower-sim check
	@$(BIN)/pytest --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

check: lint types

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy bus models edge_agent cloud_trainer fleetlearn bench tests

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) services
	$(BIN)/pytest tests/integration

# Mosquitto (apt), Kafka's jars (Maven) and MinIO (go build), installed once and cached.
services: $(STAMP)
	$(BIN)/fleetlearn services install

venv: $(STAMP)

# Flower, the reference bench/aggregate.py measures against, beside the project rather than in
# .venv: flwr 1.42 pins typer, rich, protobuf and packaging below what the project uses. Its own
# modules only (--no-deps); numpy and scipy stay the project's. Used with PYTHONPATH=$(FLOWER).
FLOWER := .cache/flwr-1.42
FLOWER_PACKAGES := flwr==1.42.0 grpcio==1.85.3 grpcio-health-checking==1.81.1 protobuf==6.33.6 \
	pycryptodome==3.24.1 iterators==0.0.2 tomli-w==1.2.0 httpx==0.28.1 httpcore==1.0.9
flower: $(FLOWER)/.installed

$(FLOWER)/.installed: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps --target $(FLOWER) $(FLOWER_PACKAGES)
	touch $@

# Flower's simulation engine for bench/convergence.py: Ray (flwr[simulation]'s pin) and the
# modules flwr.simulation imports that neither .venv nor $(FLOWER) holds (FastAPI, SQLAlchemy,
# Alembic, jsonschema and theirs). A directory of its own, so bench/aggregate.py's environment
# stays as it is. Used with PYTHONPATH=$(FLOWER):$(FLOWER_SIM).
FLOWER_SIM := .cache/flwr-sim-1.42
FLOWER_SIM_PACKAGES := ray==2.55.1 msgpack==1.2.4 jsonschema==4.26.0 \
	jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 \
	fastapi==0.138.2 starlette==1.3.1 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3
flower-sim: $(FLOWER_SIM)/.installed

$(FLOWER_SIM)/.installed: $(FLOWER)/.installed
	$(BIN)/python -m pip install -q --no-deps --target $(FLOWER_SIM) $(FLOWER_SIM_PACKAGES)
	touch $@

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11+) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
