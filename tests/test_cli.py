"""The main job through the real command line, in subprocesses, on the embedded data (reduced for CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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


def test_run_end_to_end_and_second_run_reuses(tmp_path):
    args = ["run", "--defense", "clip", "--attack", "random_p0.05", "--attack", "random_msb_p0.01",
            "--epochs", "2", "--patterns", "4", "--format", "json"]
    p = bench(args, tmp_path, check=0)
    recs = json.loads(p.stdout)
    assert [r["attack"] for r in recs] == ["random_p0.05:patterns=4", "random_msb_p0.01:patterns=4"]
    r = recs[0]
    assert r["format"] == "bitbench.result/2" and r["suite"] == "default" and r["dataset"] == "mnist5k"
    assert r["defense"] == "clip" and r["bits"] == 8 and r["rate"] == 0.05
    assert r["seeds"] == [100, 101, 102, 103] and r["n_patterns"] == 4
    assert len(r["per_pattern_rerr"]) == 4 and len(r["per_pattern_err"]) == 4
    # RErr counts examples wrong clean OR perturbed: never below the clean error or the perturbed error.
    for e, re_ in zip(r["per_pattern_err"], r["per_pattern_rerr"]):
        assert re_ >= max(e, r["clean_err"]) - 1e-12
    assert abs(r["rerr"]["mean"] - sum(r["per_pattern_rerr"]) / 4) < 1e-12
    assert r["rerr"]["min"] <= r["rerr"]["mean"] <= r["rerr"]["max"]
    assert r["clean_err"] < 0.5, "2 epochs of training must be far below chance (90% error)"
    assert isinstance(r["timings"]["total"], float) and r["config_hash"] and r["version"]
    written = files_under(tmp_path / "results")
    assert len(written) == 2 and all(f.endswith(".json") for f in written)
    with open(written[0]) as f:
        on_disk = json.load(f)
    assert on_disk["format"] == "bitbench.result/2"
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
    base = ["run", "--defense", "rquant", "--rates", "0.01,0.02", "--epochs", "1", "--patterns", "2",
            "--format", "json", "--no-progress"]
    recs = json.loads(bench(base, tmp_path, check=0).stdout)
    assert not any(r.get("_cached") for r in recs)
    files = files_under(tmp_path / "results")
    assert len(files) == 2
    os.unlink(files[1])  # as if the run had been interrupted before the second cell
    before = os.path.getmtime(files[0])
    recs2 = json.loads(bench(base, tmp_path, check=0).stdout)
    assert os.path.getmtime(files[0]) == before  # the finished cell was not rewritten
    assert [r["per_pattern_rerr"] for r in recs2] == [r["per_pattern_rerr"] for r in recs]
    assert os.path.exists(files[1])


def test_run_adversarial_prints_the_curve_and_flips_to_chance(tmp_path):
    args = ["run", "--defense", "normal", "--attack", "bfa_n10:trials=2,sweep=1|5", "--attack",
            "budget_e5:trials=2,iterations=2", "--epochs", "1", "--no-progress"]
    p = bench(args + ["--format", "json"], tmp_path, check=0)
    bfa, budget = json.loads(p.stdout)
    assert bfa["attack"] == "bfa_n10:sweep=1|5,trials=2" and bfa["n_patterns"] == 2 and bfa["seeds"] == [0, 1]
    assert len(bfa["curve"]) == 2 and [q["flips"] for q in bfa["curve"][0]] == [1, 5, 10]
    assert bfa["target"]["metric"] == "err" and len(bfa["flips_to_target"]) == 2
    assert all(s in ("budget", "chance", "collapse") for s in bfa["stop_reason"])
    assert budget["target"] is None and [q["flips"] for q in budget["curve"][0]] == [5]
    t = bench(args, tmp_path, check=0).stdout       # records reused
    head = t.splitlines()[0].split()
    assert head[:4] == ["defense", "bits", "attack", "trials"] and "target" in head and "cached" in t
    assert "n=1" in t and "n=10" in t and "flips" in t
