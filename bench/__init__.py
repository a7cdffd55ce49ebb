"""Benchmarks: ``python -m bench`` (see docs/benchmarks.md)."""
