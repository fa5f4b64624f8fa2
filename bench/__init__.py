"""Benchmarks (python bench/run.py): one file per benchmark, the harness, the original's re-implementation."""
