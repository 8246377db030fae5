"""The main job through the real command line, in subprocesses, on the embedded data (reduced for CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bitbench.configs.suite import load_suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(args, tmp_path, *, check=None, timeout=600):
    env = dict(os.environ)
    env["BITBENCH_CACHE"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=timeout)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def files_under(path):
    out = []
    for d, _, fs in os.walk(path):
        out += [os.path.join(d, f) for f in fs]
    return sorted(out)


def records_of(stdout: str) -> list[dict]:
    """The records in ``run --format json``'s output (a list of cells, each with its models' records)."""
    return [r for c in json.loads(stdout) for r in c["records"]]


def test_run_end_to_end_and_second_run_reuses(tmp_path):
    args = ["run", "--defense", "clip", "--attack", "random_p0.05", "--attack", "random_msb_p0.01",
            "--epochs", "2", "--seeds", "1", "--patterns", "4", "--format", "json"]
    p = bench(args, tmp_path, check=0)
    cells = json.loads(p.stdout)
    assert [c["attack"] for c in cells] == ["random_p0.05:patterns=4", "random_msb_p0.01:patterns=4"]
    assert cells[0]["train_seeds"] == [0] and len(cells[0]["per_model_rerr"]) == 1
    lo, hi = cells[0]["rerr"]["ci95"]
    assert lo <= cells[0]["rerr"]["mean"] <= hi
    recs = records_of(p.stdout)
    r = recs[0]
    assert r["format"] == "bitbench.result/3" and r["suite"] == "default" and r["dataset"] == "mnist5k"
    assert r["defense"] == "clip" and r["bits"] == 8 and r["rate"] == 0.05 and r["train_seed"] == 0
    pats = r["patterns"]
    assert pats["seed"] == [100, 101, 102, 103] and len(pats["rerr"]) == 4 and len(pats["err"]) == 4
    assert cells[0]["per_model_rerr"] == [pats["rerr"]]
    # RErr counts examples wrong clean OR perturbed: never below the clean error or the perturbed error.
    for e, re_ in zip(pats["err"], pats["rerr"]):
        assert re_ >= max(e, r["clean"]["err"]) - 1e-12
    assert abs(r["summary"]["rerr"]["mean"] - sum(pats["rerr"]) / 4) < 1e-12
    assert r["summary"]["rerr"]["min"] <= r["summary"]["rerr"]["mean"] <= r["summary"]["rerr"]["max"]
    assert r["clean"]["err"] < 0.5, "2 epochs of training must be far below chance (90% error)"
    assert isinstance(r["timings"]["total"], float) and r["config_hash"] and r["version"]
    written = files_under(tmp_path / "results")
    assert len(written) == 2 and all(f.endswith(".json") for f in written)
    with open(written[0]) as f:
        on_disk = json.load(f)
    assert on_disk["format"] == "bitbench.result/3"
    assert "training" in p.stderr

    # Second run: the checkpoint is loaded (no training) and the records are reused.
    p2 = bench(args[:-2] + ["--format", "table"], tmp_path, check=0)
    assert "loaded checkpoint" in p2.stderr and "training" not in p2.stderr.replace("loaded checkpoint", "")
    assert "cached" in p2.stdout
    assert "clip" in p2.stdout and "random_p0.05" in p2.stdout

    # A changed configuration (epochs) never loads the stale checkpoint.
    p3 = bench(["run", "--defense", "clip", "--attack", "random_p0.05", "--epochs", "1", "--patterns", "2",
                "--format", "csv"], tmp_path, check=0)
    assert "training" in p3.stderr
    assert p3.stdout.splitlines()[0].startswith("defense,bits,attack")


@pytest.mark.parametrize("args, needle", [
    (["run", "--defense", "randbat"], "did you mean: randbet"),
    (["run", "--defense", "randbet:q=0.1"], "valid parameters"),
    (["run", "--defense", "randbet:p=2"], "[0, 1]"),
    (["run", "--defense", "clip:bits=17"], "bits"),
    (["run", "--attack", "random_p1.5"], "[0, 1]"),
    (["run", "--attack", "rnadom_p0.01"], "unknown attack"),
    (["run", "--rates", "abc"], "invalid rate"),
    (["run", "--attack", "errmap:file=missing-chip.npy"], "does not exist"),
    (["run", "--rates", "150%"], "outside [0, 1]"),
    (["run", "--suite", "nosuch"], "packaged suites"),
    (["run", "--suite", "cifar10", "--data-dir", "/nonexistent/cifar", "--epochs", "0"], "/nonexistent/cifar"),
    (["run", "--device", "cuda:0"] if True else [], "cuda"),
    (["run", "--epochs", "-1"], "integer >= 0"),
    (["run", "--format", "xml"], "invalid choice"),
    (["list", "gadgets"], "invalid choice"),
])
def test_bad_inputs_exit_2_with_a_helpful_message(tmp_path, args, needle):
    if "--device" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this check needs a machine without CUDA")
    p = bench(args + ["--no-progress"] if args[0] == "run" else args, tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle.lower() in p.stderr.lower(), p.stderr
    assert "Traceback" not in p.stderr
    assert files_under(tmp_path / "results") == []  # nothing half-written


def test_list_and_info(tmp_path):
    p = bench(["list"], tmp_path, check=0)
    for name in ("normal", "rquant", "clip", "randbet", "random", "bfa", "budget", "mnist5k", "lenet", "default",
                 "cifar10", "vit", "npz"):
        assert name in p.stdout
    assert "p=0.01" in p.stdout and "w_max=0.1" in p.stdout
    p = bench(["list", "defenses", "rand*", "--json"], tmp_path, check=0)
    d = json.loads(p.stdout)
    assert [e["name"] for e in d["defenses"]] == ["randbet"]
    p = bench(["info", "--json"], tmp_path, check=0)
    info = json.loads(p.stdout)
    assert "cpu" in info["kernels"] and info["version"] and info["libraries"]["torch"]


def test_interrupted_grid_resumes_without_recomputing(tmp_path):
    base = ["run", "--defense", "rquant", "--rates", "0.01,0.02", "--epochs", "1", "--seeds", "1", "--patterns", "2",
            "--format", "json", "--no-progress"]
    recs = records_of(bench(base, tmp_path, check=0).stdout)
    assert not any(r.get("_cached") for r in recs)
    files = files_under(tmp_path / "results")
    assert len(files) == 2
    os.unlink(files[1])  # as if the run had been interrupted before the second cell
    before = os.path.getmtime(files[0])
    recs2 = records_of(bench(base, tmp_path, check=0).stdout)
    assert os.path.getmtime(files[0]) == before  # the finished cell was not rewritten
    assert [r["patterns"]["rerr"] for r in recs2] == [r["patterns"]["rerr"] for r in recs]
    assert os.path.exists(files[1])


def test_run_adversarial_prints_the_curve_and_flips_to_chance(tmp_path):
    args = ["run", "--defense", "normal", "--attack", "bfa_n10:trials=2,sweep=1|5", "--attack",
            "budget_e5:trials=2,iterations=2", "--epochs", "1", "--seeds", "1", "--no-progress"]
    p = bench(args + ["--format", "json"], tmp_path, check=0)
    bfa, budget = records_of(p.stdout)
    assert bfa["attack"] == "bfa_n10:sweep=1|5,trials=2" and bfa["patterns"]["seed"] == [0, 1]
    tr = bfa["trials"]
    assert len(tr["curve"]) == 2 and [q["flips"] for q in tr["curve"][0]] == [1, 5, 10]
    assert bfa["target"]["metric"] == "err" and len(tr["flips_to_target"]) == 2
    # the evaluator ends a trial at the target (test error at chance) or the search spends its budget
    assert all(s in ("budget", "target", "no_gain") for s in tr["stop_reason"])
    for used, ftt, stop in zip(tr["flips_used"], tr["flips_to_target"], tr["stop_reason"]):
        assert (stop == "target") == (ftt is not None and ftt == used)
    assert budget["target"] is None and [q["flips"] for q in budget["trials"]["curve"][0]] == [5]
    t = bench(args, tmp_path, check=0).stdout       # records reused
    head = t.splitlines()[0].split()
    assert head[:5] == ["defense", "bits", "attack", "models", "trials"] and "target" in head and "cached" in t
    assert "n=1" in t and "n=10" in t and "flips" in t


def test_size_caps_from_the_environment(tmp_path, monkeypatch):
    """BITBENCH_DOCS_EPOCHS / BITBENCH_DOCS_PATTERNS cap a run (the docs examples run under them): the smaller value
    wins, a note says so, and a bad value is a usage error naming the variable."""
    monkeypatch.setenv("BITBENCH_DOCS_EPOCHS", "0")
    monkeypatch.setenv("BITBENCH_DOCS_PATTERNS", "3")
    p = bench(["run", "--defense", "normal", "--attack", "random_p0.01", "--format", "json"], tmp_path, check=0)
    rec = records_of(p.stdout)[0]
    assert rec["patterns"]["seed"] == [100, 101, 102]
    assert f"BITBENCH_DOCS_EPOCHS=0 caps the epochs of this run ({load_suite('default').train['epochs']} without it)" \
        in p.stderr
    assert f"BITBENCH_DOCS_PATTERNS=3 caps the patterns of this run ({load_suite('default').patterns} without it)" \
        in p.stderr
    # an explicit smaller value is kept (the cap only lowers), and no note is printed for it
    p = bench(["run", "--defense", "normal", "--attack", "random_p0.01", "--patterns", "2", "--format", "json"],
              tmp_path, check=0)
    assert len(records_of(p.stdout)[0]["patterns"]["seed"]) == 2 and "BITBENCH_DOCS_PATTERNS" not in p.stderr
    monkeypatch.setenv("BITBENCH_DOCS_PATTERNS", "many")
    p = bench(["run", "--defense", "normal", "--attack", "random_p0.01"], tmp_path, check=2)
    assert "BITBENCH_DOCS_PATTERNS='many' must be an integer >= 1" in p.stderr and "Traceback" not in p.stderr


def test_models_trained_side_by_side_equal_those_trained_one_after_the_other(tmp_path):
    """benchmark/parallel.py: the seeds' models trained in worker processes are bit-identical to sequential ones."""
    import torch

    weights = {}
    for workers in ("1", "2"):
        where = tmp_path / f"w{workers}"
        where.mkdir()
        os.environ["BITBENCH_TRAIN_WORKERS"] = workers
        try:
            p = bench(["train", "--defense", "randbet", "--epochs", "1", "--seeds", "2", "--save-weights", "w"],
                      where, check=0)
        finally:
            del os.environ["BITBENCH_TRAIN_WORKERS"]
        assert ("side by side: 2 processes" in p.stderr) == (workers == "2"), p.stderr
        weights[workers] = {f: torch.load(where / "w" / f, weights_only=True)
                            for f in sorted(os.listdir(where / "w"))}
    assert len(weights["1"]) == 2 and weights["1"].keys() == weights["2"].keys()
    for f, sd in weights["1"].items():
        other = weights["2"][f]
        assert sd.keys() == other.keys() and all(torch.equal(sd[k], other[k]) for k in sd), f
    a, b = weights["1"].values()
    assert not all(torch.equal(a[k], b[k]) for k in a)    # the two seeds are two different models


def test_bad_train_workers_is_a_usage_error(tmp_path):
    os.environ["BITBENCH_TRAIN_WORKERS"] = "0"
    try:
        p = bench(["train", "--defense", "clip", "--epochs", "1", "--seeds", "2"], tmp_path, check=2)
    finally:
        del os.environ["BITBENCH_TRAIN_WORKERS"]
    assert "BITBENCH_TRAIN_WORKERS='0' must be an integer >= 1" in p.stderr


def _subcommands():
    import argparse

    from bitbench.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_prints_its_help(command, capsys):
    """`--help` of every subcommand renders (a '%' in a help text once crashed argparse's formatting)."""
    from bitbench.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m benchmark " + command)
