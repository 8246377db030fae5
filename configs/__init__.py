"""Benchmark suites as TOML files (found with ``importlib.resources``, installed editable or as a wheel)."""
