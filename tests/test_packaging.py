"""Packaging: the source distribution builds, a wheel built from it holds every module and data file of the source
folders (so a new subpackage or data file can never be left out), the version is one number everywhere, and the
installed wheel runs alone -- no checkout on ``sys.path``, no editable finder -- from a folder with its own
``configs/`` and other shadowing folders."""
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# repository folder -> where its files go in the wheel
SOURCE_FOLDERS = {"benchmark": "bitbench", "kernels": "bitbench/kernels", "defenses": "bitbench/defenses",
                  "attacks": "bitbench/attacks", "leaderboard": "bitbench/leaderboard", "configs": "bitbench/configs"}
# files of the source folders that are not part of the package, and why
NOT_PACKAGED = {"leaderboard/plots/": "pictures of the repository's LEADERBOARD.md (written by `leaderboard --plots`)"}
# build products that may lie in a checkout (never tracked)
_BUILT = re.compile(r"(^|/)__pycache__/|\.py[cod]$|\.so$|^kernels/_cpu_flip\.c$|\.egg-info(/|$)")


def _version() -> str:
    m = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert m, "no version in pyproject.toml"
    return m.group(1)


def _tracked_files() -> list[str]:
    """The repository's files (git's list in a checkout, else every file but build products)."""
    try:
        p = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, timeout=60)
        if p.returncode == 0 and p.stdout:
            return sorted(f for f in p.stdout.decode().split("\0") if f and (REPO / f).is_file())
    except OSError:
        pass
    out = []
    for d, dirs, files in os.walk(REPO):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x not in ("build", "dist", "__pycache__")]
        out += [os.path.relpath(os.path.join(d, f), REPO).replace(os.sep, "/") for f in files]
    return sorted(f for f in out if not _BUILT.search(f))


def _source_files() -> list[str]:
    return [f for f in _tracked_files() if f.split("/")[0] in SOURCE_FOLDERS
            and not any(f.startswith(x) for x in NOT_PACKAGED) and not _BUILT.search(f)]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(sdist, wheel built from that sdist): both through the build backend, as pip builds them."""
    out = tmp_path_factory.mktemp("dist")
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    sdist = out / p.stdout.strip().splitlines()[-1]
    assert sdist.name == f"bitbench-{_version()}.tar.gz"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(sdist),
                        "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (whl,) = out.glob("bitbench-*.whl")
    return sdist, whl


def test_sdist_holds_the_project(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    want = set(_source_files()) | {"pyproject.toml", "setup.py", "README.md", "MANIFEST.in"}
    want |= {f for f in _tracked_files() if f.startswith(("tests/", "docs/")) and not _BUILT.search(f)}
    assert not sorted(want - names), f"missing from the sdist: {sorted(want - names)}"


def test_wheel_holds_every_module_and_data_file_of_the_source_folders(dists):
    _, whl = dists
    names = set(zipfile.ZipFile(whl).namelist())
    want = {SOURCE_FOLDERS[f.split("/")[0]] + "/" + f.split("/", 1)[1] for f in _source_files()}
    assert "bitbench/defenses/protection/secded.py" in want  # a subpackage two levels down
    missing = sorted(want - names)
    assert not missing, f"missing from the wheel: {missing}"
    # the command's package ships only its two modules; nothing else is claimed at the top level
    assert sorted(n for n in names if n.startswith("benchmark/")) == ["benchmark/__init__.py",
                                                                    "benchmark/__main__.py"]
    top = {n.split("/")[0] for n in names}
    assert top == {"bitbench", "benchmark", f"bitbench-{_version()}.dist-info"}, top
    assert any(n.startswith("bitbench/kernels/_cpu_flip") and n.endswith(".so") for n in names)
    meta = zipfile.ZipFile(whl).read(f"bitbench-{_version()}.dist-info/METADATA").decode()
    assert re.search(rf"^Version: {re.escape(_version())}$", meta, re.M)


def test_one_version_everywhere(tmp_path):
    assert _version() == "0.2.0"
    init = (REPO / "benchmark" / "__init__.py").read_text()
    m = re.search(r'__version__ = "([^"]+)"', init)
    assert m and m.group(1) == _version() + "+src", "the fallback version (a checkout without install) differs"
    for cmd in ([sys.executable, "-m", "benchmark", "--version"],
                [str(Path(sys.executable).with_name("bitbench")), "--version"]):
        p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() in (f"bitbench {_version()}", f"bitbench {_version()}+src"), p.stdout


def test_installed_wheel_runs_alone_from_a_hostile_folder(dists, tmp_path):
    """Only the wheel's files: ``python -S`` (no site: no editable finder, no .pth of the checkout) with the wheel's
    target folder first and the third-party libraries after it. Every module of the wheel imports, and `info` and
    the main job run from a folder with its own (empty) configs/ and a configs/default.toml that is no suite."""
    _, whl = dists
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(whl)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    work = tmp_path / "work"
    for name in ("configs", "kernels", "defenses", "attacks", "leaderboard"):
        (work / name).mkdir(parents=True)
    (work / "configs" / "default.toml").write_text("this is not a bitbench suite\n")
    env = dict(os.environ, BITBENCH_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]))
    modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in zipfile.ZipFile(whl).namelist()
                     if n.endswith(".py") and not n.startswith("benchmark/") and not n.endswith("/__main__.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            f"checkout = {tuple(str(REPO / f) + os.sep for f in SOURCE_FOLDERS)!r}\n"
            "bad = [n for n, m in sys.modules.items() if (getattr(m, '__file__', None) or '').startswith(checkout)]\n"
            "assert not bad, bad\n"
            "import bitbench; print(bitbench.__file__, bitbench.__version__)\n")
    p = subprocess.run([sys.executable, "-S", "-c", code], cwd=work, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith(str(site)) and p.stdout.split()[-1] == _version(), p.stdout
    p = subprocess.run([sys.executable, "-S", "-m", "benchmark", "info"], cwd=work, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith(f"bitbench {_version()} ")
    p = subprocess.run([sys.executable, "-S", "-m", "benchmark", "run", "--defense", "rquant", "--attack",
                        "random_p0.01", "--epochs", "1", "--patterns", "2", "--no-progress"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    # the default suite's three models (training seeds 0, 1, 2), two chips each
    assert p.stdout.splitlines()[2].split()[:5] == ["rquant", "8", "random_p0.01:patterns=2", "3", "2"]
    assert (work / "results" / "default").is_dir()
