# Targets of the reference design, for Python. Every target sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
SERVER ?= localhost:8080
PYTEST_ARGS ?=

.PHONY: deps system-deps proto run test test-unit test-integration test-observability alerts bench bench-telemetry load-test lint format clean

$(BIN)/ad-event-processor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## deps: create .venv with the service and the dev tools
deps: $(BIN)/ad-event-processor

## system-deps: Debian packages the tests start (redis-server); needs root or sudo
system-deps:
	@bash .ci/system-deps

## proto: regenerate service/aep/proto from proto/
proto: deps
	$(PY) proto/generate.py

## run: run the server on the file store (data in ./data)
run: deps
	$(BIN)/ad-event-processor

## test: every test (unit + integration); fails when no test ran
test: deps system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: deps
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

## test-integration: tests that start real server processes
test-integration: deps system-deps
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

## test-observability: promtool on the alert rules, every dashboard query against a real Prometheus
test-observability: deps system-deps
	$(BIN)/pytest tests/observability $(PYTEST_ARGS)

## alerts: promtool check + unit tests of dashboards/alerts (needs Debian's prometheus)
alerts: system-deps
	promtool check rules dashboards/alerts/ad-event-processor.rules.yaml
	cd dashboards/alerts && promtool test rules *.test.yaml

## bench-telemetry: throughput and CPU per event with telemetry off / on / on with traces
bench-telemetry: deps
	$(PY) tests/benchmarks/bench_telemetry.py

## load-test: drive a running server (make run) with the load client
load-test: deps
	$(BIN)/ad-event-client --server $(SERVER) --mode load --events 200000 --batch 100 --concurrent 8
	$(BIN)/ad-event-client --server $(SERVER) --mode load --events 20000 --batch 1 --concurrent 50

## bench: our server against a bare grpc.aio baseline (server on CPU 0, load on CPU 1)
bench: deps
	$(PY) tests/benchmarks/bench_ingest.py $(BENCH_ARGS)

## lint: ruff (lint + format check) and mypy --strict
lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data
