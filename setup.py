"""Build hook for the C backend of kernels/ (project metadata lives in pyproject.toml).

The cffi extension ``kernels._cpu_flip`` is compiled at install time (``pip install .`` / ``pip install -e .`` /
wheel builds); ``python setup.py build_ext --inplace`` builds it in place. Without it, kernels/ falls back to the
torch reference (see ``kernels.backends()``).
"""
from setuptools import setup

setup(cffi_modules=["kernels/_build_cpu.py:ffibuilder"])
