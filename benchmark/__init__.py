"""The bit-error robustness benchmark: ``python -m benchmark`` (CLI), data, models, harness, perf."""

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("bitbench")
except Exception:  # not installed (run from a checkout with PYTHONPATH)
    __version__ = "0.1.0+src"
