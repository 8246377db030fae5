"""Build hooks (project metadata lives in pyproject.toml).

* Packages: the repository's top-level folders are mapped under one import name (:data:`PACKAGE_DIRS`:
  benchmark/ is ``bitbench``, kernels/ is ``bitbench.kernels``, ...). Every folder with an ``__init__.py`` below
  them is a subpackage and is found here (:func:`mapped_packages`), so a new subpackage can never be left out of a
  wheel; tests/test_packaging.py checks that a built wheel holds every module and data file of the source folders.
* The cffi extension ``bitbench.kernels._cpu_flip`` (kernels/) is compiled at install time (``pip install .`` /
  ``pip install -e .`` / wheel builds); ``python setup.py build_ext --inplace`` builds it in place. Without it,
  the kernels fall back to the torch reference (see ``bitbench.kernels.backends()``).
* The folder benchmark/ is installed twice by name: as ``bitbench`` (everything) and as ``benchmark``, the name
  of the command ``python -m benchmark``. Wheels carry only ``benchmark/__init__.py`` and ``__main__.py`` under
  the second name (the command imports everything else from ``bitbench``).
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# import name -> folder of the repository (the folders stay where they are; only their import names change)
PACKAGE_DIRS = {"bitbench": "benchmark", "bitbench.kernels": "kernels", "bitbench.defenses": "defenses",
                "bitbench.attacks": "attacks", "bitbench.leaderboard": "leaderboard", "bitbench.configs": "configs"}
COMMAND_PACKAGE = "benchmark"
COMMAND_MODULES = {"__init__", "__main__"}


def mapped_packages(root: str = HERE) -> list[str]:
    """Every package under the mapped folders, by its import name (``defenses/protection`` ->
    ``bitbench.defenses.protection``), plus the command package."""
    out = []
    for name, folder in PACKAGE_DIRS.items():
        out.append(name)
        out += [f"{name}.{sub}" for sub in find_packages(os.path.join(root, folder))
                if f"{name}.{sub}" not in PACKAGE_DIRS]
    return sorted(set(out)) + [COMMAND_PACKAGE]


class BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == COMMAND_PACKAGE:
            modules = [m for m in modules if m[1] in COMMAND_MODULES]
        return modules


if __name__ == "__main__":
    setup(packages=mapped_packages(), package_dir={**PACKAGE_DIRS, COMMAND_PACKAGE: "benchmark"},
          cffi_modules=["kernels/_build_cpu.py:ffibuilder"], cmdclass={"build_py": BuildPy})
