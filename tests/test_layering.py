"""The house's layering, read from the code's imports (every import statement, module level or inside functions):
the core `bitbench.configs` sits below everything and needs no torch; dependencies point one way,
benchmark -> attacks -> defenses -> kernels -> core; the leaderboard reads files through the core only; no package
takes another package's private names."""
import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDER_OF = {"bitbench.configs": "configs", "bitbench.kernels": "kernels", "bitbench.defenses": "defenses",
             "bitbench.attacks": "attacks", "bitbench.leaderboard": "leaderboard"}
ALLOWED = {
    "configs": {"configs"},
    "kernels": {"kernels", "configs"},
    "defenses": {"defenses", "kernels", "configs"},
    "attacks": {"attacks", "defenses", "kernels", "configs"},
    "leaderboard": {"leaderboard", "configs"},
    "benchmark": {"benchmark", "attacks", "defenses", "kernels", "configs", "leaderboard"},
}
STDLIB = set(sys.stdlib_module_names)


def _package_of(folder: str, path: Path) -> str:
    rel = path.relative_to(REPO / folder).with_suffix("")
    base = "bitbench" if folder == "benchmark" else f"bitbench.{folder}"
    parts = [p for p in rel.parts if p != "__init__"]
    mod = ".".join([base] + parts)
    return mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]


def _folder(module: str) -> str | None:
    if module != "bitbench" and not module.startswith("bitbench."):
        return None
    for prefix, folder in FOLDER_OF.items():
        if module == prefix or module.startswith(prefix + "."):
            return folder
    return "benchmark"


def _imports(folder: str, path: Path):
    """(module imported, names taken, line) for every import statement of the file."""
    pkg = _package_of(folder, path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            names = [a.name for a in node.names]
            if mod in ("bitbench",):  # `from bitbench import kernels` imports a subpackage
                for n in names:
                    yield f"bitbench.{n}" if f"bitbench.{n}" in FOLDER_OF else "bitbench", [], node.lineno
            else:
                yield mod, names, node.lineno


def _files(folder: str):
    return sorted(p for p in (REPO / folder).rglob("*.py") if "entries" not in p.parts)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_dependencies_point_one_way(folder):
    bad = []
    for path in _files(folder):
        for mod, _, line in _imports(folder, path):
            target = _folder(mod)
            if target is not None and target not in ALLOWED[folder]:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {mod} ({target}/)")
    assert not bad, "\n".join(bad)


# Core modules that may use numpy (a declared dependency; never torch): the statistics and energy engines
# (vectorized bootstraps) and the voltage-profile reader (error-map .npz files).
NUMPY_IN_CORE = {"stats.py", "energy.py", "voltage.py"}


def test_the_core_needs_only_the_standard_library():
    """configs/ imports nothing third-party but tqdm (terminal progress bars) and tomli (TOML on Python 3.10),
    and numpy in the modules of NUMPY_IN_CORE."""
    bad = []
    for path in _files("configs"):
        allowed = ("bitbench", "tqdm", "tomli") + (("numpy",) if path.name in NUMPY_IN_CORE else ())
        for mod, _, line in _imports("configs", path):
            top = mod.split(".")[0]
            if top not in STDLIB and top not in allowed:  # tomli: Python 3.10 only
                bad.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_core_and_its_registries_load_no_torch_and_no_upper_package():
    """Importing the core and calling every registry function of it loads neither torch nor any package above the
    core: the built-in entries are declared from above (bitbench.builtin_entries), never named by the core."""
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import sys
        import bitbench.configs as core
        from bitbench.configs import registries as r, schema, record, entry, cells, suite, metrics, spec
        from bitbench.configs.spec import SpecError
        for name in r.__all__:
            obj = getattr(r, name)
            if name.startswith("list_"):
                obj()
            elif name.startswith("create_"):
                try:
                    obj("no_such_entry")
                except SpecError:
                    pass
            elif hasattr(obj, "describe"):
                obj.describe(); obj.names(); obj.list("*")
        suite.load_suite("default")
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")
                        or m.startswith(("bitbench.defenses", "bitbench.attacks", "bitbench.kernels",
                                         "bitbench.leaderboard", "bitbench.models", "bitbench.data",
                                         "bitbench.harness", "bitbench.cli")))
        print(",".join(loaded))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the core loaded: {out.stdout.strip()}"


def test_numpy_core_modules_exist():
    """NUMPY_IN_CORE names real files (a renamed module must not keep its exemption)."""
    assert all((REPO / "configs" / name).is_file() for name in NUMPY_IN_CORE)


def test_no_package_takes_another_packages_private_names():
    bad = []
    for folder in ALLOWED:
        for path in _files(folder):
            for mod, names, line in _imports(folder, path):
                target = _folder(mod)
                if target is None or target == folder:
                    continue
                private = [n for n in names if n.startswith("_")]
                if private or any(part.startswith("_") for part in mod.split(".")[1:]):
                    bad.append(f"{path.relative_to(REPO)}:{line} takes {private or mod} from {target}/")
    assert not bad, "\n".join(bad)


def test_no_former_top_level_imports():
    """Nothing imports `kernels`, `defenses`, ... as top-level names (they are not ours any more)."""
    bad = []
    for folder in ALLOWED:
        for path in _files(folder):
            for mod, _, line in _imports(folder, path):
                if mod.split(".")[0] in ("kernels", "defenses", "attacks", "leaderboard", "configs", "benchmark"):
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_field_tables_of_the_docs_are_generated_from_the_declarations():
    """docs/formats.md's record and entry tables are what the declared fields generate (python
    scripts/update_format_docs.py rewrites them)."""
    from bitbench.configs.format_docs import stale

    assert stale((REPO / "docs" / "formats.md").read_text(encoding="utf-8")) == [], \
        "docs/formats.md is stale: run python scripts/update_format_docs.py"
