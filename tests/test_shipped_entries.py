"""The shipped leaderboard entries can be re-run: every measured row names one checkpoint per model (present, of
the SHA-256 it names, small), and ``python -m benchmark run --entry`` reproduces a row of each suite exactly from
those checkpoints alone (a fresh cache: nothing trained)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRIES = REPO / "leaderboard" / "entries"
# suites whose rows the project measures and ships with checkpoints (scripts/regenerate.py writes them)
MEASURED_SUITES = ["default", "vit", "lm"]
MAX_CHECKPOINT_BYTES = 4 << 20


def _measured(suite: str) -> list[Path]:
    return sorted(p for p in (ENTRIES / suite).glob("*.json")
                  if json.loads(p.read_text()).get("reported_by") != "paper")


def _all_measured() -> list[Path]:
    return [p for s in sorted(d.name for d in ENTRIES.iterdir() if d.is_dir()) for p in _measured(s)]


@pytest.mark.parametrize("suite", MEASURED_SUITES)
def test_each_measured_suite_ships_rows(suite):
    rows = _measured(suite)
    assert rows, f"leaderboard/entries/{suite} has no measured rows (run scripts/regenerate.py --suite {suite})"


@pytest.mark.parametrize("path", _all_measured(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_measured_row_names_its_checkpoints(path):
    entry = json.loads(path.read_text())
    cks = entry["checkpoints"]
    assert [c["train_seed"] for c in cks] == entry["train_seeds"], "one checkpoint per trained model, in seed order"
    for ck in cks:
        f = path.parent / ck["path"]
        assert f.is_file(), f"{path.name}: {ck['path']} is missing"
        assert f.stat().st_size <= MAX_CHECKPOINT_BYTES
        assert hashlib.sha256(f.read_bytes()).hexdigest() == ck["sha256"]


@pytest.mark.parametrize("suite", MEASURED_SUITES)
def test_run_entry_reproduces_a_row_from_its_checkpoints(suite, tmp_path):
    rows = _measured(suite)
    assert rows
    path = next((p for p in rows if "-rquant" in p.stem), rows[0])
    entry = json.loads(path.read_text())
    attack = next(r["attack"] for r in entry["results"] if r["attack"].startswith("random_p"))
    env = dict(os.environ, BITBENCH_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-m", "benchmark", "run", "--entry", str(path), "--attack", attack,
                        "--no-progress", "--results-dir", str(tmp_path / "results")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    n = len(entry["train_seeds"])
    assert f"entry {entry['name']}: {n}/{n} results reproduced exactly" in p.stdout, p.stdout
    assert not (tmp_path / "cache" / "checkpoints").exists() or not any((tmp_path / "cache" / "checkpoints").rglob(
        "*.pt")), "run --entry trained a model instead of using the entry's checkpoints"
