"""mkdocs hook (mkdocs.yml ``hooks:``): lays the package out for the API reference.

mkdocstrings reads the docstrings statically (griffe: nothing is imported, torch is not needed). The repository's
top-level folders are the package's subpackages under other names (``benchmark/`` is ``bitbench``,
``configs/`` is ``bitbench.configs``, ...: ``PACKAGE_DIRS`` in setup.py), which a
static reader cannot follow, so this hook builds ``build/api-src/bitbench/`` from symbolic links, the layout the
package has when installed, before every build.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / "build" / "api-src"


def package_dirs() -> dict[str, Path]:
    """``{import name: folder}`` of the ``bitbench`` packages: the mapping setup.py installs them by."""
    spec = importlib.util.spec_from_file_location("bitbench_setup", REPO / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # its setup() call runs only as a script
    return {name: REPO / folder for name, folder in setup.PACKAGE_DIRS.items() if name.split(".")[0] == "bitbench"}


def build_tree(tree: Path = TREE) -> Path:
    """(Re)build ``tree/bitbench``: the top package's files as links, each subpackage folder as one link."""
    dirs = package_dirs()
    if tree.exists():
        shutil.rmtree(tree)
    top = tree / "bitbench"
    top.mkdir(parents=True)
    subpackages = {name.split(".", 1)[1]: folder for name, folder in dirs.items() if "." in name}
    for child in sorted(dirs["bitbench"].iterdir()):
        if child.name == "__pycache__" or child.name in subpackages:
            continue
        os.symlink(child, top / child.name, target_is_directory=child.is_dir())
    for name, folder in sorted(subpackages.items()):
        if "." in name:
            raise ValueError(f"bitbench.{name}: nested subpackage mappings are not laid out by this hook")
        os.symlink(folder, top / name, target_is_directory=True)
    return tree


def on_startup(command: str, dirty: bool) -> None:
    build_tree()
