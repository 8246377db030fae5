"""torchrun on the CPU with 2 gloo processes: sharded pattern sweeps and DistributedDataParallel training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")


def _env(tmp_path, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["BITBENCH_CACHE"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _torchrun(args, tmp_path, timeout=600, **extra):
    # --standalone: a local rendezvous on a free port (tests may run next to other torchrun jobs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] + args
    return subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path, **extra), capture_output=True, text=True,
                          timeout=timeout)


def _bench(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)


RUN = ["run", "--defense", "rquant", "--rates", "0.01,0.05", "--epochs", "1", "--patterns", "5", "--format",
       "json", "--no-progress", "--seeds", "1"]


def _records(stdout: str) -> list[dict]:
    """The records of ``run --format json`` (a list of cells, each with its models' records)."""
    return [r for c in json.loads(stdout) for r in c["records"]]


def _files(path):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)


def test_sharded_sweep_equals_single_process_and_rank_failure_leaves_nothing(tmp_path):
    # One set of weights for both (trained once, in one process): the sweep is what is compared.
    p = _bench(["train", "--defense", "rquant", "--epochs", "1", "--seeds", "1", "--no-progress", "--save-weights",
                "w"], tmp_path)
    assert p.returncode == 0, p.stderr
    (weights,) = (tmp_path / "w").glob("*.pt")
    run = RUN[:-2] + ["--checkpoint", str(weights)]  # one model: the file's
    single = _bench(run + ["--results-dir", "single"], tmp_path)
    assert single.returncode == 0, single.stderr
    ref = _records(single.stdout)

    # A failing rank ends the job with a clear error and leaves no partial result files.
    bad = _torchrun(["-m", "benchmark"] + run + ["--results-dir", "sharded"], tmp_path,
                    BITBENCH_INJECT_FAILURE_RANK="1")
    assert bad.returncode != 0
    assert "rank 1/2: failed" in bad.stderr and "injected" in bad.stderr
    assert _files(tmp_path / "sharded") == []

    # The rerun (the same weights, loaded by both ranks) gives exactly the single-process numbers.
    ok = _torchrun(["-m", "benchmark"] + run + ["--results-dir", "sharded"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    got = _records(ok.stdout)  # only rank 0 prints
    assert len(got) == len(ref) == 2
    for a, b in zip(ref, got):
        assert b["world_size"] == 2
        assert a["patterns"]["seed"] == b["patterns"]["seed"] == [100, 101, 102, 103, 104]
        assert a["patterns"]["err"] == b["patterns"]["err"]
        assert a["patterns"]["rerr"] == b["patterns"]["rerr"]
        assert a["clean"] == b["clean"] and a["summary"] == b["summary"]
    assert len(_files(tmp_path / "sharded")) == 2


def test_torchrun_training_never_shares_a_checkpoint_with_single_process_training(tmp_path):
    """DDP sums each batch's gradients in another order than one process: other weights. The world size is part of
    the model key and of the record's recipe, so whichever ran first never decides what the other prints."""
    run = RUN[:3] + ["--rates", "0.01"] + RUN[5:]
    ddp = _torchrun(["-m", "benchmark"] + run + ["--results-dir", "ddp"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (rec_ddp,) = _records(ddp.stdout)
    assert rec_ddp["recipe"]["world_size"] == 2 and rec_ddp["timings"]["trained_now"] is True
    single = _bench(run + ["--results-dir", "single"], tmp_path)
    assert single.returncode == 0, single.stderr
    (rec_one,) = _records(single.stdout)
    assert "world_size" not in rec_one["recipe"]
    assert rec_one["timings"]["trained_now"] is True  # the DDP checkpoint was not taken for its own
    ckpts = sorted((tmp_path / "cache").rglob("*.pt"))
    assert len(ckpts) == 2 and ckpts[0].name != ckpts[1].name
    assert rec_one["config_hash"] != rec_ddp["config_hash"]
    again = _torchrun(["-m", "benchmark"] + run + ["--results-dir", "ddp2"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    (rec_again,) = _records(again.stdout)  # the DDP checkpoint is its own: loaded, the same numbers
    assert rec_again["timings"]["trained_now"] is False
    assert rec_again["patterns"]["rerr"] == rec_ddp["patterns"]["rerr"] and rec_again["clean"] == rec_ddp["clean"]


def test_ddp_training_keeps_ranks_identical(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    worker = os.path.join(ROOT, "tests", "helpers", "dist_train_worker.py")
    p = _torchrun([worker, str(out)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    assert torch.equal(r0["flat"], r1["flat"]), "parameters differ between ranks after DDP training"
    # Every rank perturbs the same weights the same way: the same pattern seeds in every step.
    assert r0["seeds"] == r1["seeds"] and len(r0["seeds"]) == 2 * 512 // 64
    assert r0["history"][-1]["bet_on"] == 1.0
    assert os.path.exists(out / "ckpt.pt")  # written by rank 0
    assert torch.isfinite(r0["flat"]).all()
