"""The tests: unit, integration, stores, chart, observability, packaging; benchmarks are scripts."""
