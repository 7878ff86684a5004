"""Benchmarks: scripts that print figures (``python -m benchmarks.<name>``), never run in CI."""
