"""Build hooks (project metadata lives in pyproject.toml).

* The cffi extension ``bitbench.kernels._cpu_flip`` (kernels/) is compiled at install time (``pip install .`` /
  ``pip install -e .`` / wheel builds); ``python setup.py build_ext --inplace`` builds it in place. Without it,
  the kernels fall back to the torch reference (see ``bitbench.kernels.backends()``).
* The folder benchmark/ is installed twice by name: as ``bitbench`` (everything) and as ``benchmark``, the name
  of the command ``python -m benchmark``. Wheels carry only ``benchmark/__init__.py`` and ``__main__.py`` under
  the second name (the command imports everything else from ``bitbench``).
"""
from setuptools import setup
from setuptools.command.build_py import build_py

COMMAND_PACKAGE = "benchmark"
COMMAND_MODULES = {"__init__", "__main__"}


class BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == COMMAND_PACKAGE:
            modules = [m for m in modules if m[1] in COMMAND_MODULES]
        return modules


setup(cffi_modules=["kernels/_build_cpu.py:ffibuilder"], cmdclass={"build_py": BuildPy})
