"""Benchmark scripts (run by make bench and friends), not collected as tests."""
