"""Import names: the distribution claims only `bitbench` and `benchmark`, and the tool works from any working folder
(one with its own configs/, kernels/, attacks/, defenses/, leaderboard/ folders, as research folders have) and
beside any other package; progress output suits a log."""
import importlib.metadata as md
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHADOWS = ("configs", "kernels", "attacks", "defenses", "leaderboard")
OURS = {"bitbench", "benchmark"}


def _env(tmp_path, **extra):
    env = dict(os.environ, BITBENCH_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def _shadowed_folder(tmp_path, with_init: bool) -> Path:
    """A user's project folder whose sub-folders carry our former top-level names (and break if imported)."""
    work = tmp_path / "project"
    for name in SHADOWS:
        d = work / name
        d.mkdir(parents=True)
        (d / "notes.txt").write_text("the user's own files\n")
        if with_init:
            (d / "__init__.py").write_text(f"raise ImportError('the user folder {name}/ was imported')\n")
    (work / "configs" / "default.toml").write_text("this is not a bitbench suite\n")
    return work


@pytest.mark.parametrize("with_init", [False, True], ids=["plain-folders", "packages"])
def test_main_job_from_a_folder_with_shadowing_folders(tmp_path, with_init):
    work = _shadowed_folder(tmp_path, with_init)
    p = subprocess.run([sys.executable, "-m", "benchmark", "run", "--defense", "rquant", "--attack", "random_p0.01",
                        "--epochs", "1", "--patterns", "2"], cwd=work, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:5] == ["defense", "bits", "attack", "models", "patterns"]
    assert lines[2].split()[:5] == ["rquant", "8", "random_p0.01:patterns=2", "3", "2"]  # the suite's 3 models
    # stderr is not a terminal here: one line per finished epoch / cell, no redraws
    assert "\r" not in p.stderr
    assert re.search(r"^(\[rquant seed [012]\] )?epoch 1/1: 4000/4000 img, loss=[0-9.]+ acc=[0-9.]+ \([0-9.]+ s\)$", p.stderr, re.M), p.stderr
    assert re.search(r"^rquant \[model [012]\] random_p0.01:patterns=2: 2/2 patterns \([0-9.]+ s\)$", p.stderr, re.M), p.stderr
    assert (work / "results" / "default").is_dir()  # results go to the working folder, as documented


@pytest.mark.parametrize("with_init", [False, True], ids=["plain-folders", "packages"])
def test_leaderboard_and_listing_from_a_folder_with_its_own_leaderboard(tmp_path, with_init):
    work = _shadowed_folder(tmp_path, with_init)
    p = subprocess.run([sys.executable, "-m", "benchmark", "leaderboard", "--out", "-"], cwd=work,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    # the shipped file links the plots (written with --plots); the same text otherwise
    without_plots = re.sub(r"\n\n!\[[^\]]*\]\(leaderboard/plots/[^)]*\)", "", (REPO / "LEADERBOARD.md").read_text())
    assert p.stdout == without_plots
    p = subprocess.run([sys.executable, "-m", "benchmark", "list", "suites"], cwd=work, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert re.findall(r"^  (\w+) ", p.stdout, re.M) == ["cifar10", "cifar100", "default", "lm", "mnist", "vit"]


def test_bitbench_console_script_runs_the_same_cli(tmp_path):
    script = Path(sys.executable).with_name("bitbench")
    assert script.is_file(), f"the console script {script} is not installed (pip install -e . installs it)"
    a = subprocess.run([str(script), "list", "attacks", "random*"], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    b = subprocess.run([sys.executable, "-m", "benchmark", "list", "attacks", "random*"], cwd=tmp_path,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout and "random_p{p}" in a.stdout


def test_former_top_level_names_are_not_ours(tmp_path):
    """Outside the checkout, `import kernels` (etc.) does not find our code; `bitbench.*` does."""
    code = ("import importlib, sys\n"
            f"repo = {str(REPO)!r}\n"
            f"for name in {SHADOWS!r}:\n"
            "    try:\n"
            "        m = importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        continue\n"
            "    f = getattr(m, '__file__', None) or ''\n"
            "    assert not f.startswith(repo), (name, f)\n"
            "import bitbench.kernels, bitbench.defenses, bitbench.attacks, bitbench.leaderboard, bitbench.configs\n"
            "print(bitbench.kernels.__name__, sorted(bitbench.list_defenses('r*')))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "bitbench.kernels ['randbet', 'rquant']"


def test_installed_distribution_claims_only_bitbench_and_benchmark():
    # the installed metadata in site-packages (not a build's bitbench.egg-info lying in the checkout)
    site = sysconfig.get_paths()["purelib"]
    dists = [d for d in md.distributions(path=[site]) if d.metadata["Name"] == "bitbench"]
    assert len(dists) == 1, f"bitbench is not installed in {site} (pip install -e .)"
    dist = dists[0]
    top = (dist.read_text("top_level.txt") or "").split()
    assert top and set(top) <= OURS, top
    names = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first == ".." or first.endswith((".dist-info", ".pth")) or f.suffix not in (".py", ".so", ""):
            continue
        if first.startswith("__editable__"):
            # an editable install: the finder maps import names to folders of the checkout
            text = Path(f.locate()).read_text()
            m = re.search(r"^MAPPING[^=]*= (\{.*\})$", text, re.M)
            assert m, f"no MAPPING in {f}"
            names |= {k.split(".")[0] for k in eval(m.group(1))}  # a dict literal of str -> str
            continue
        names.add(first.removesuffix(".py"))
    assert names and names <= OURS, names


def test_public_api_and_the_readme_extension_examples_run():
    """`import bitbench` gives the registries and contracts; the README's extension examples work as written."""
    import bitbench
    import torch

    for name in ("register_defense", "register_attack", "list_defenses", "list_attacks", "create_defense",
                 "create_attack", "DEFENSES", "ATTACKS", "SpecError", "Defense", "Attack", "Perturbation",
                 "QuantScheme", "QuantizedModel", "Suite", "load_suite", "ResultRecord", "Harness"):
        assert getattr(bitbench, name) is not None, name
    assert bitbench.DEFENSES is bitbench.defenses.DEFENSES is bitbench.configs.registries.DEFENSES
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Extending"):]
    section = section[:section.index("\n## ", 4)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    ns: dict = {}
    try:
        for code in blocks:
            exec(compile(code, "README.md", "exec"), ns)
        d = bitbench.create_defense("mydefense:w_max=0.2")
        assert d.scheme().w_max == 0.2
        with pytest.raises(bitbench.SpecError, match="defense 'mydefense:w_max=2': w_max must be in"):
            bitbench.create_defense("mydefense:w_max=2")
        net = torch.nn.Linear(4, 3)
        qm = bitbench.QuantizedModel.from_module(net, d.scheme())
        (pert,) = bitbench.create_attack("stuck_msb_n3").perturbations(qm)
        assert torch.equal(pert.codes[:3] & 0x80, torch.full((3,), 0x80, dtype=torch.uint8))
        assert torch.equal(pert.codes[3:], qm.codes[3:])
    finally:
        bitbench.DEFENSES.unregister("mydefense")
        bitbench.ATTACKS.unregister("stuck_msb")
