"""Runnable benchmarks: `python -m benches.NAME` prints a table."""
