"""End to end: a third-party defense, registered from a temporary package through the ``bitbench.defenses``
entry-point group, runs on the default suite (reduced for CI), is submitted, and appears in the leaderboard.

Runs only where the harness CLI (benchmark/cli.py) exists; it calls ``python -m benchmark`` in subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REPO / "benchmark" / "cli.py").is_file(),
                       reason="needs the harness CLI (benchmark/cli.py), not in this checkout yet"),
]

PLUGIN = '''\
"""A third-party defense for the leaderboard end-to-end test."""
from bitbench.defenses import register_defense
from bitbench.defenses.zoo import Clip


@register_defense("thirdparty_clip")
class ThirdPartyClip(Clip):
    """Third-party test defense: clipping with another default bound.

    Args:
        w_max: clipping bound.
        bits: bits per weight.
    """

    def __init__(self, w_max: float = 0.2, bits: int = 8):
        super().__init__(w_max=w_max, bits=bits)
'''


def _reduced_default_suite(dst: Path) -> Path:
    """configs/default.toml with fewer epochs, rates, patterns, evaluation images and adversarial trials (same suite
    name)."""
    text = (REPO / "configs" / "default.toml").read_text()
    text = re.sub(r"(?m)^rates\s*=.*$", "rates = [0.01, 0.1]", text)
    text = re.sub(r"(?m)^headline_rate\s*=.*$", "headline_rate = 0.1", text)
    text = re.sub(r"(?m)^patterns\s*=.*$", "patterns = 2", text)
    text = re.sub(r"(?m)^epochs\s*=.*$", "epochs = 1", text)
    text = re.sub(r"(?m)^train_seeds\s*=.*$", "train_seeds = [0]", text)  # one model (the suite trains three)
    text = re.sub(r"(?m)^defenses\s*=.*$", 'defenses = ["thirdparty_clip"]', text)
    text = re.sub(r"(?m)^(eval_split|n_eval)\s*=.*\n", "", text)  # the suite pins its split: pin a smaller one
    text = re.sub(r"(?m)^attacks\s*=.*$", 'attacks = ["bfa_n5:trials=2", "budget_e5:iterations=2,trials=2"]', text)
    text = re.sub(r"(?m)^(name\s*=.*)$", r"\1\nn_eval = 200", text, count=1)
    dst.mkdir(parents=True, exist_ok=True)
    path = dst / "default.toml"
    path.write_text(text)
    return path


def _plugin(root: Path) -> None:
    pkg = root / "bitbench_thirdparty"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN)
    info = root / "bitbench_thirdparty-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitbench-thirdparty\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bitbench.defenses]\nthirdparty = bitbench_thirdparty\n")


def _run(args, env, cwd, timeout=900):
    r = subprocess.run([sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_third_party_defense_end_to_end(tmp_path):
    if not (REPO / "configs" / "default.toml").is_file():
        pytest.skip("configs/default.toml is not in this checkout")
    plugins = tmp_path / "plugins"
    _plugin(plugins)
    configs = tmp_path / "configs"
    suite_file = _reduced_default_suite(configs)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugins), str(REPO)]),
               BITBENCH_CACHE=str(tmp_path / "cache"))
    results = tmp_path / "results"
    _run(["benchmark", "run", "--suite", str(suite_file), "--defense", "thirdparty_clip", "--results-dir",
          str(results), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"], env, tmp_path)
    records = sorted(results.rglob("*.json"))
    assert len(records) == 4, records
    assert {json.loads(p.read_text())["defense_name"] for p in records} == {"thirdparty_clip"}

    entries = tmp_path / "entries"
    _run(["benchmark", "submit", *map(str, records), "--entries", str(entries), "--suite-file", str(suite_file),
          "--name", "thirdparty", "--citation", "Third Party, 2024", "--link", "https://example.org/tp"],
         env, tmp_path)
    assert (entries / "default" / "thirdparty.json").is_file()

    out = tmp_path / "LEADERBOARD.md"
    _run(["benchmark", "leaderboard", "--entries", str(entries), "--configs", str(configs), "--out", str(out)],
         env, tmp_path)
    md = out.read_text()
    row = next(ln for ln in md.splitlines() if "thirdparty" in ln and ln.startswith("|"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "1" and cells[1] == "[thirdparty](https://example.org/tp)"
    assert cells[2] == "`thirdparty_clip`" and cells[3] == "lenet" and cells[5] == "1"   # one trained model
    assert re.fullmatch(r"\d+\.\d\d", cells[6]), cells                                   # clean error
    assert all(re.fullmatch(r"\d+\.\d\d( \[\d+\.\d\d, \d+\.\d\d\])?", c) for c in cells[7:9]), cells  # mean [95% CI]
    adv = md.split("### Adversarial bit flips", 1)[1]
    row = next(ln for ln in adv.splitlines() if "thirdparty" in ln and ln.startswith("|"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "1" and len(cells) == 5 + 3 + 1 + 1 + 1   # Err 1, 2, 5 flips; to chance; budget RErr, rank


def test_protected_defense_end_to_end(tmp_path):
    """`run --defense rquant+secded` -> records with the cost fields -> submit -> LEADERBOARD.md shows Mem +% and
    the decode time beside RErr."""
    configs = tmp_path / "configs"
    suite_file = _reduced_default_suite(configs)
    env = dict(os.environ, PYTHONPATH=str(REPO), BITBENCH_CACHE=str(tmp_path / "cache"))
    results = tmp_path / "results"
    r = _run(["benchmark", "run", "--suite", str(suite_file), "--defense", "rquant+secded", "--rates", "0.01,0.1",
              "--results-dir", str(results), "--device", "cpu", "--no-progress"], env, tmp_path)
    assert "Mem +%" in r.stdout and "12.5" in r.stdout
    records = sorted(results.rglob("*.json"))
    assert len(records) == 2
    for p in records:
        d = json.loads(p.read_text())
        assert d["defense"] == "rquant+secded" and 0.125 <= d["memory_overhead"] < 0.126
        assert d["decode_ms"] > 0 and d["protection"]["stages"][0]["code"] == [72, 64]
        assert len(d["patterns"]["protection"]) == 2
    r = _run(["benchmark", "run", "--suite", str(suite_file), "--defense", "rquant+secded", "--attack",
              "bfa_n5:trials=2", "--attack", "budget_e5:iterations=2,trials=2", "--results-dir", str(results),
              "--device", "cpu", "--no-progress"], env, tmp_path)
    records = sorted(results.rglob("*.json"))
    entries = tmp_path / "entries"
    _run(["benchmark", "submit", *map(str, records), "--entries", str(entries), "--suite-file", str(suite_file),
          "--name", "secded"], env, tmp_path)
    entry = json.loads((entries / "default" / "secded.json").read_text())
    assert 0.125 <= entry["memory_overhead"] < 0.126 and all("decode_ms" in x for x in entry["results"])
    out = tmp_path / "LEADERBOARD.md"
    _run(["benchmark", "leaderboard", "--entries", str(entries), "--configs", str(configs), "--out", str(out)],
         env, tmp_path)
    md = out.read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("|") and "Rank" in ln)
    assert "Mem +%" in header and "Decode ms" in header
    row = next(ln for ln in md.splitlines() if "secded" in ln and ln.startswith("|"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7] == "12.50" and re.fullmatch(r"\d+\.\d\d", cells[8]), cells   # LeNet: 61,706 words, 7,714 codewords
    adv = md.split("### Adversarial bit flips", 1)[1]
    assert "Mem +%" in next(ln for ln in adv.splitlines() if ln.startswith("|") and "Rank" in ln)
