"""Integrity (issue 14): nothing damaged, stale or mismatched is ever reused, reported or published.

One test (or a few) per numbered case of the issue:
1. a checkpoint with 64 flipped bytes is reported and retrained, never used;
2. an edited result record is reported and recomputed, never reused;
3. error maps (and local datasets, suite files) enter the hashes by content, not by path;
4. the leaderboard refuses an entry evaluated on another split (every packaged suite pins its split);
5. submit/leaderboard refuse edited std/min/max; a missing or empty entries folder is an error; --check with plots;
6. --data-dir given to the embedded suite is an error;
7. every bad-usage case exits 2 with a message (bad checkpoints never suggest weights_only=False, run no code);
8. an unwritable results or cache folder is found before any work;
9. duplicate spec keys, patterns overflow, 0.7% == 0.007, the lock (two real processes), the umask.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from bitbench.attacks.error_map import save_error_map
from bitbench.cli import main as cli_main
from bitbench.configs.entry import EntryError, validate_entry
from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import check_writable
from bitbench.configs.lock import FileLock
from bitbench.configs.record import RecordError, ResultRecord, Summary
from bitbench.configs.registries import create_defense
from bitbench.configs.suite import AUGMENT_KEYS, TRAIN_KEYS, Suite, list_suites, load_suite, stable_hash
from bitbench.data import Augment
from bitbench.defenses import TrainConfig, Trainer, rquant
from bitbench.defenses.io import CheckpointError, atomic_torch_save, load_checkpoint, save_checkpoint
from bitbench.defenses.quantized_model import QuantizedModel
from bitbench.harness import Harness, RunOptions
from bitbench.leaderboard import cli as lcli
from bitbench.leaderboard.entries import load_entries, submit, write_entry

ROOT = Path(__file__).resolve().parent.parent


def small_suite(**kw) -> Suite:
    d = dict(name="integrity", dataset="mnist5k", model="lenet", defenses=["normal"], rates=[0.05], patterns=2,
             n_eval=200, train={"epochs": 1})
    d.update(kw)
    return Suite(**d)


def harness(tmp_path, suite=None, **kw) -> Harness:
    opt = RunOptions(cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"), device="cpu",
                     progress=False, **kw)
    return Harness(suite or small_suite(), opt)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A cache with the 'normal' LeNet of small_suite() trained (1 epoch) and its record for random_p0.05."""
    root = tmp_path_factory.mktemp("trained")
    h = harness(root)
    rec = h.run_cell("normal", "random_p0.05")
    return root, rec


def copy_of(trained, tmp_path) -> Path:
    root, _ = trained
    for d in ("cache", "results"):
        shutil.copytree(root / d, tmp_path / d)
    return tmp_path


def checkpoint_file(tmp_path) -> Path:
    (ck,) = (tmp_path / "cache").rglob("*.pt")
    return ck


def record_file(tmp_path) -> Path:
    (rf,) = (tmp_path / "results").rglob("*.json")
    return rf


def bench(args, cwd, *, env_extra=None, timeout=300, **popen):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               BITBENCH_CACHE=str(Path(cwd) / "cache"), OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


# ---------------------------------------------------------------------------------------------- 1. checkpoints
def test_1_bit_flipped_checkpoint_is_reported_and_retrained(trained, tmp_path, capsys):
    copy_of(trained, tmp_path)
    good = trained[1]
    ck = checkpoint_file(tmp_path)
    raw = bytearray(ck.read_bytes())
    mid = len(raw) // 2
    for i in range(64):  # 64 flipped bytes in the middle of the weights: a real bit error on disk
        raw[mid + i] ^= 0xFF
    ck.write_bytes(bytes(raw))
    # the archive's own CRC-32s catch it first ...
    with pytest.raises(CheckpointError, match="does not match its CRC-32"):
        load_checkpoint(ck)
    # ... and the content digest catches a change that a rewritten archive's CRCs do not
    edited = tmp_path / "edited.pt"
    d = torch.load(trained[0] / "cache" / ck.relative_to(tmp_path / "cache"), weights_only=True)  # intact
    d["model"][next(iter(d["model"]))].view(-1)[0] += 1e-3
    torch.save(d, edited)
    with pytest.raises(CheckpointError, match="does not match its digest"):
        load_checkpoint(edited)

    h = harness(tmp_path)
    rec = h.run_cell("normal", "random_p0.05")
    err = capsys.readouterr().err
    assert f"warning: checkpoint {ck}: the torch archive is truncated or damaged" in err
    assert "trained again" in err and "--retrain" in err and "weights_only" not in err
    dep = h.deploy("normal")
    assert dep.trained_now  # never used: retrained
    assert rec.clean_err == good.clean_err and rec.per_pattern_rerr == good.per_pattern_rerr
    assert load_checkpoint(ck)["epoch"] == 1  # replaced by an intact file
    # The record of the intact model is reused only because the retrained weights are bit-identical (CPU):
    assert rec.cached and dep.weights_digest == good.inputs["weights"]


def test_1_record_is_tied_to_the_deployed_weights(trained, tmp_path):
    """A consistently rewritten checkpoint (other weights, valid digest) never reuses the old record."""
    copy_of(trained, tmp_path)
    ck = checkpoint_file(tmp_path)
    d = load_checkpoint(ck)
    d["model"] = {k: (v * 0.5 if v.is_floating_point() else v) for k, v in d["model"].items()}
    save_checkpoint(d, ck)
    rec = harness(tmp_path).run_cell("normal", "random_p0.05")
    assert not rec.cached and rec.inputs["weights"] != trained[1].inputs["weights"]


def test_1_trainer_reports_a_damaged_resume_file_and_starts_over(ds, tmp_path):
    x, y = ds.train_x[:128], ds.train_y[:128]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False)
    ck = tmp_path / "resume.pt"
    ck.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.warns(RuntimeWarning, match=r"resume\.pt: not a torch checkpoint.*training starts from the beginning"):
        Trainer(model, cfg, scheme=rquant(8)).fit(x, y, checkpoint=ck, key="k")
    assert load_checkpoint(ck)["epoch"] == 1  # replaced by a verified file


def test_1_quantized_model_files_are_verified(tmp_path):
    qm = QuantizedModel.from_module(torch.nn.Linear(8, 4), rquant(8))
    p = tmp_path / "qm.pt"
    qm.save(p)
    assert torch.equal(QuantizedModel.load(p).codes, qm.codes)
    raw = bytearray(p.read_bytes())
    # one bit inside a stored tensor (not in the archive's alignment padding, which holds no content)
    import struct
    import zipfile

    info = max((i for i in zipfile.ZipFile(p).infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"qm\.pt: (its content does not match|the torch archive)"):
        QuantizedModel.load(p)


# ------------------------------------------------------------------------------------------------- 2. records
def test_2_edited_record_is_reported_and_recomputed(trained, tmp_path, capsys):
    copy_of(trained, tmp_path)
    good = trained[1]
    rf = record_file(tmp_path)
    d = json.loads(rf.read_text())
    d["summary"]["rerr"]["mean"] = 0.0123  # mean outside [min, max]
    rf.write_text(json.dumps(d))
    h = harness(tmp_path)
    rec = h.run_cell("normal", "random_p0.05")
    err = capsys.readouterr().err
    assert f"warning: result record {rf} is not used: summary.rerr.mean: 0.0123 does not match the per-pattern" in err
    assert "--rerun or delete the file" in err
    assert not rec.cached and rec.per_pattern_rerr == good.per_pattern_rerr
    assert ResultRecord.from_json(json.loads(rf.read_text())).rerr == good.rerr  # replaced by an intact record

    # An edit that keeps the summary consistent (a per-pattern value and the summary together): the digest.
    d = json.loads(rf.read_text())
    d["patterns"]["rerr"][0] = d["patterns"]["err"][0] = 0.99  # (above the clean error: RErr >= clean error)
    d["summary"]["rerr"] = Summary.of(d["patterns"]["rerr"]).to_json()
    d["summary"]["err"] = Summary.of(d["patterns"]["err"]).to_json()
    rf.write_text(json.dumps(d))
    with pytest.raises(RecordError, match="digest: does not match the record's content"):
        ResultRecord.from_json(json.loads(rf.read_text()))
    rec = harness(tmp_path).run_cell("normal", "random_p0.05")
    assert "digest: does not match" in capsys.readouterr().err
    assert not rec.cached and rec.per_pattern_rerr == good.per_pattern_rerr


def test_2_record_digest_round_trip_and_refusals():
    rec = ResultRecord.from_json(_toy_record())
    d = rec.to_json()
    assert d["format"] == "bitbench.result/3" and d["digest"].startswith("sha256:")
    assert ResultRecord.from_json(json.loads(json.dumps(d))).to_json() == d
    for edit in (lambda r: r.__setitem__("date", "2020-01-01T00:00:00+00:00"),
                 lambda r: r["clean"].__setitem__("err", 0.0),
                 lambda r: r["patterns"]["seed"].__setitem__(0, 7)):
        e = json.loads(json.dumps(d))
        edit(e)
        with pytest.raises(RecordError, match="^digest: does not match"):
            ResultRecord.from_json(e)
    e = dict(d)
    del e["digest"]
    with pytest.raises(RecordError, match="^digest: missing"):
        ResultRecord.from_json(e)


def _toy_record(rerr=(0.1, 0.12), seeds=(100, 101), clean_err=0.05, **kw) -> dict:
    """A result record's JSON as the harness writes it (derived summaries and digest)."""
    from bitbench.configs.record import PatternResult

    pats = [PatternResult(index=k, seed=sd, err=round(v - 0.001, 12), rerr=v, masked=1000) for k, (v, sd) in
            enumerate(zip(rerr, seeds))]
    args = dict(suite="default", dataset="mnist5k", eval_split="test[0:1000]", n_eval=1000, model="lenet",
                model_options={"norm": "none"}, n_params=10, defense="normal", defense_name="normal",
                defense_params={}, bits=8, attack="random_p0.01", attack_name="random", rate=0.01, clean_err=clean_err,
                patterns=pats, version="0", config_hash="abc", date="2024-01-01T00:00:00", train_seed=0)
    args.update(kw)
    return ResultRecord(**args).to_json()


# --------------------------------------------------------------------------------------- 3. inputs by content
def test_3_error_map_results_follow_the_maps_content(trained, tmp_path):
    copy_of(trained, tmp_path)
    m = tmp_path / "chip.npz"
    save_error_map(m, p=np.full((16, 64, 8), 0.01))
    spec = f"errmap:file={m},patterns=2,tile=true"
    h = harness(tmp_path)
    a = h.run_cell("normal", spec)
    save_error_map(m, p=np.full((16, 64, 8), 0.2))  # same path, other content
    h2 = harness(tmp_path)
    b = h2.run_cell("normal", spec)
    assert not b.cached and b.per_pattern_rerr != a.per_pattern_rerr
    # A uniform map of p is bit for bit random_p{p} with the same seeds: the independent reference.
    ref = h2.run_cell("normal", "random_p0.2")
    assert b.per_pattern_rerr == ref.per_pattern_rerr and b.inputs["attack.file"].startswith("sha256:")
    # The same content at another path: the same configuration hash (content, not path).
    m2 = tmp_path / "elsewhere" / "copy.npz"
    m2.parent.mkdir()
    shutil.copy(m, m2)
    dep = h2.deploy("normal")
    assert (h2.cell_hash(dep, h2.canonical_attack(spec)[1])
            == h2.cell_hash(dep, h2.canonical_attack(f"errmap:file={m2},patterns=2,tile=true")[1]))


def _npz_dataset(path: Path, seed: int) -> None:
    g = np.random.default_rng(seed)
    np.savez(path, train_images=g.integers(0, 256, (60, 28, 28), dtype=np.uint8),
             train_labels=np.arange(60) % 10, test_images=g.integers(0, 256, (30, 28, 28), dtype=np.uint8),
             test_labels=np.arange(30) % 10)


def test_3_local_dataset_and_suite_files_enter_by_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _npz_dataset(a / "data.npz", 0)
    shutil.copy(a / "data.npz", b / "moved.npz")

    def key(data_dir):
        h = harness(tmp_path, small_suite(dataset="npz", n_eval=None, data_dir=str(data_dir)))
        return stable_hash(h.model_identity(create_defense(h.canonical_defense("normal"))))

    k = key(a)
    assert key(b) == k  # moved / renamed file, same content: same model (and no path in the identity)
    _npz_dataset(a / "data.npz", 1)
    assert key(a) != k  # same path, changed content: another model

    # Files declared on the harness (e.g. a user's checkpoint) enter the same way.
    h = harness(tmp_path)
    d = create_defense(h.canonical_defense("normal"))
    k0 = stable_hash(h.model_identity(d))
    (tmp_path / "user.pt").write_bytes(b"weights v1")
    h.add_input_file("model", "checkpoint", tmp_path / "user.pt")
    k1 = stable_hash(h.model_identity(d))
    (tmp_path / "user.pt").write_bytes(b"weights v2")
    h.add_input_file("model", "checkpoint", tmp_path / "user.pt")
    assert len({k0, k1, stable_hash(h.model_identity(d))}) == 3

    # Suite files: what determines the numbers enters by value; a copy elsewhere is the same configuration.
    text = (ROOT / "configs" / "default.toml").read_text()
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    (tmp_path / "s1" / "default.toml").write_text(text)
    (tmp_path / "s2" / "default.toml").write_text(text.replace("lr = 0.05", "lr = 0.04"))

    def suite_key(path):
        h = harness(tmp_path, load_suite(path))
        return stable_hash(h.model_identity(create_defense(h.canonical_defense("normal"))))

    assert suite_key(tmp_path / "s1" / "default.toml") == suite_key(ROOT / "configs" / "default.toml")
    assert suite_key(tmp_path / "s2" / "default.toml") != suite_key(ROOT / "configs" / "default.toml")


# ------------------------------------------------------------------------------------- 4. the eval split
def test_4_every_packaged_suite_pins_its_eval_split():
    names = list_suites()
    assert {"default", "mnist", "cifar10", "cifar100"} <= set(names)
    for n in names:
        s = load_suite(n)
        assert s.eval_split is not None and s.eval_split.startswith("test[0:"), n
    assert load_suite("default").eval_split == "test[0:1000]"


def test_4_entry_on_another_split_is_refused(tmp_path):
    entry = json.loads(submit(_records_for_default(tmp_path), name="lenet-clip", out_dir=tmp_path / "e0").read_text())
    suite = load_suite("default")
    validate_entry(entry, suite)
    entry["protocol"]["eval_split"] = "test[0:100]"
    with pytest.raises(EntryError, match=r'protocol\.eval_split: "test\[0:100\]" differs from suite "default" '
                                         r'\("test\[0:1000\]"\): results are not comparable'):
        validate_entry(entry, suite)
    entries = tmp_path / "entries"
    write_entry(dict(entry, name="small"), entries / "default" / "small.json")
    with pytest.raises(EntryError, match=r"small\.json: protocol\.eval_split"):
        load_entries(entries)


# ----------------------------------------------------------------------------------- 5. submit and the board
def _records_for_default(tmp_path, **kw) -> list[Path]:
    """Result records of one defense for every rate of the default suite, as the harness writes them."""
    out = []
    suite = load_suite("default")
    for r in suite.rates:
        pp = [0.03 + r / 2, 0.04 + r / 2] + [0.035 + r / 2] * (suite.patterns - 2)
        rec = _toy_record(attack=f"random_p{r!r}", rate=r, rerr=pp, seeds=suite.seeds, clean_err=0.03, **kw)
        p = tmp_path / "results" / f"{r!r}.json"
        p.parent.mkdir(exist_ok=True)
        p.write_text(json.dumps(rec, indent=2))
        out.append(p)
    return out


@pytest.mark.parametrize("field", ["std", "min", "max"])
def test_5_submit_refuses_edited_summary_fields(tmp_path, field):
    paths = _records_for_default(tmp_path)
    assert submit(paths, name="ok", out_dir=tmp_path / "entries").is_file()
    d = json.loads(paths[3].read_text())
    d["summary"]["rerr"][field] = min(1.0, d["summary"]["rerr"][field] + 0.01)
    paths[3].write_text(json.dumps(d))
    with pytest.raises(EntryError, match=rf"{paths[3].name}: summary\.rerr\.{field}: .* does not match the "
                                         r"per-pattern values"):
        submit(paths, name="edited", out_dir=tmp_path / "entries")
    assert not (tmp_path / "entries" / "default" / "edited.json").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["summary"]["rerr"].__setitem__("mean", r["summary"]["rerr"]["mean"] + 0.0001),
     "summary.rerr.mean: .* does not match the per-model values .*: the entry was edited or damaged"),
    (lambda r: r["summary"]["rerr"].__setitem__("chip_sd", r["summary"]["rerr"]["chip_sd"] + 0.0001),
     "summary.rerr.chip_sd: .* does not match the per-model values .*: the entry was edited or damaged"),
    (lambda r: r["summary"]["rerr"].__setitem__("ci95", [0.0, 0.0]),
     r"summary.rerr.ci95: expected \[low, high\] around the mean"),
    (lambda r: r["per_model"]["rerr"][0].__setitem__(0, 0.5),
     "summary.rerr.mean: .* does not match the per-model values"),
], ids=["mean", "chip_sd", "ci95", "a per-pattern value"])
def test_5_leaderboard_refuses_an_entry_with_an_edited_summary(tmp_path, edit, message, capsys):
    paths = _records_for_default(tmp_path)
    entries = tmp_path / "entries"
    p = submit(paths, name="row", out_dir=entries)
    out = tmp_path / "LB.md"
    assert lcli.main(["leaderboard", "--entries", str(entries), "--out", str(out)]) == 0
    before = out.read_bytes()
    e = json.loads(p.read_text())
    edit(e["results"][2])
    p.write_text(json.dumps(e))
    capsys.readouterr()
    assert lcli.main(["leaderboard", "--entries", str(entries), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"error: {re.escape(str(p))}: results\[2\]\.{message}", err), err
    assert out.read_bytes() == before  # nothing written


@pytest.mark.parametrize("how", ["missing", "empty", "suite folders without entries"])
def test_5_missing_or_empty_entries_folder_is_an_error(tmp_path, how, capsys):
    entries = tmp_path / "entries"
    if how != "missing":
        entries.mkdir()
    if how == "suite folders without entries":
        (entries / "default").mkdir()
    out = tmp_path / "LEADERBOARD.md"
    out.write_text("the committed board\n")
    for extra in ([], ["--check"]):
        assert lcli.main(["leaderboard", "--entries", str(entries), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert f"error: {entries}: the entries folder " in err
        assert ("does not exist" if how == "missing" else "holds no entries") in err
    assert out.read_text() == "the committed board\n"


def test_5_check_works_for_a_board_with_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plots need the optional matplotlib (pip install 'bitbench[plot]')")
    entries = tmp_path / "entries"
    submit(_records_for_default(tmp_path), name="row", out_dir=entries)
    out, plots = tmp_path / "LB.md", tmp_path / "plots"
    base = ["leaderboard", "--entries", str(entries), "--out", str(out)]
    assert lcli.main(base + ["--plots", str(plots)]) == 0
    assert lcli.main(base + ["--plots", str(plots), "--check"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert lcli.main(base + ["--check"]) == 1  # without the plot links the generated text differs
    capsys.readouterr()
    (plots / "default.png").unlink()
    assert lcli.main(base + ["--plots", str(plots), "--check"]) == 1
    assert f"plot {plots / 'default.png'} is missing" in capsys.readouterr().err
    # the shipped board (generated with plots) checks as up to date
    assert lcli.main(["leaderboard", "--check", "--plots", str(ROOT / "leaderboard" / "plots"), "--out",
                      str(ROOT / "LEADERBOARD.md")]) == 0


# ----------------------------------------------------------------------------------------------- 6. data dir
def test_6_data_dir_with_the_embedded_suite_is_an_error(tmp_path, capsys):
    argv = ["run", "--defense", "normal", "--attack", "random_p0.01", "--epochs", "1", "--patterns", "2",
            "--data-dir", "/nonexistent", "--cache-dir", str(tmp_path / "cache"), "--results-dir",
            str(tmp_path / "results"), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "--data-dir /nonexistent: dataset 'mnist5k' of suite 'default' is built in and reads no local files" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()
    with pytest.raises(UsageError, match="data_dir = '/data' in the suite file"):
        harness(tmp_path, small_suite(data_dir="/data"))


# --------------------------------------------------------------------------------------- 7. exit 2, not 1
def _suite_file(tmp_path, extra: str, model: str = "lenet") -> str:
    p = tmp_path / "bad.toml"
    p.write_text(f'name = "bad"\ndataset = "mnist5k"\nmodel = "{model}"\ndefenses = ["normal"]\nrates = [0.01]\n'
                 f'patterns = 2\n{extra}\n')
    return str(p)


BAD_SUITES = [
    ("[train]\nepochs = 1\nlearning_rate = 0.1", r"\[train\] unknown key 'learning_rate'; allowed: epochs"),
    ("[train]\nseed = 3", r"\[train\] seed: not a \[train\] key here; it is set by the top-level train_seed"),
    ("[augment]\ncrop = 2\nmixup = true", r"\[augment\] unknown key 'mixup'; allowed: crop, flip"),
    ("[model_options]\nimage_size = 32", r"\[model_options\] image_size: set by the dataset's image size"),
    ("[model_options]\nnorm = 'batchnorm'", r"unknown norm 'batchnorm'; choose one of"),
    ("[model_options]\ndepth = 3", r"model 'lenet5' has no parameter 'depth'. Valid parameters: norm=none, width=none"),
]


@pytest.mark.parametrize("extra, message", BAD_SUITES, ids=[m.split(" ")[0].strip("\\") for _, m in BAD_SUITES])
def test_7_bad_suite_keys_exit_2_before_any_work(tmp_path, capsys, extra, message):
    import re

    argv = ["suite", _suite_file(tmp_path, extra), "--cache-dir", str(tmp_path / "cache"), "--results-dir",
            str(tmp_path / "results"), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and not list(tmp_path.rglob("*.pt"))


def test_7_unknown_model_in_a_suite(tmp_path, capsys):
    assert cli_main(["suite", _suite_file(tmp_path, "", model="resnet9000"), "--no-progress",
                     "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "suite 'bad'" in (err := capsys.readouterr().err) and "unknown model 'resnet9000'. Did you mean" in err


def test_7_suite_keys_match_the_classes():
    assert set(TRAIN_KEYS) == {f.name for f in fields(TrainConfig)} - {"seed", "device", "progress"}
    assert tuple(AUGMENT_KEYS) == tuple(Augment.KEYS)


@pytest.mark.parametrize("argv, message", [
    (["run", "--defense", "normal", "--attack", "random_p0.01:layers=nosuch*"],
     "layers=nosuch*: no quantized tensor matches 'nosuch*'; tensors are ['features.0.weight'"),
    (["perf", "kernels", "--device", "tpu", "--quick"], "invalid device 'tpu'; use cpu, cuda, cuda:N or auto"),
    (["run", "--defense", "normal", "--attack", "random_p0.01:patterns=99999999999999999999"],
     "patterns must be an integer in [1, 4294967296], got 99999999999999999999"),
    (["run", "--defense", "randbet:p=0.1,p=0.2", "--attack", "random_p0.01"],
     "'p' is given twice (p=0.1 and p=0.2)"),
])
def test_7_and_9_bad_specs_and_devices_exit_2(tmp_path, capsys, argv, message):
    extra = ["--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "r"), "--epochs", "1",
             "--no-progress"] if argv[0] == "run" else []
    assert cli_main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "base_seed" not in err
    assert not list(tmp_path.rglob("*.pt"))  # found before any training


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoints(tmp_path) -> dict:
    good = tmp_path / "good.pt"
    save_checkpoint({"format": "bitbench.test/1", "w": torch.arange(1000, dtype=torch.float32)}, good)
    raw = good.read_bytes()
    files = {"empty": b"", "truncated": raw[: len(raw) // 2], "garbage": os.urandom(4096),
             "text": b"model weights\n" * 20}
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.pt"
        out[name].write_bytes(data)
    out["malicious"] = tmp_path / "malicious.pt"
    torch.save({"model": _Evil(tmp_path / "PWNED")}, out["malicious"])
    return out


@pytest.mark.parametrize("name, reason", [
    ("empty", "the file is empty (0 bytes)"),
    ("truncated", "the torch archive is truncated or damaged"),
    ("garbage", "not a torch checkpoint"),
    ("text", "not a torch checkpoint"),
    ("malicious", "it holds pickled Python objects, not only tensors and plain containers (it references "),
])
def test_7_bad_checkpoints_are_refused_with_the_file_and_the_recovery(tmp_path, name, reason):
    path = _bad_checkpoints(tmp_path)[name]
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(path, require_digest=False, hint="re-save it")
    e = ei.value
    assert isinstance(e, ValueError) and e.path == str(path) and reason in e.reason
    assert str(e).startswith(f"checkpoint {path}: ") and str(e).endswith("; re-save it")
    assert "weights_only" not in str(e) and "trusted source" not in str(e)
    assert not (tmp_path / "PWNED").exists()  # no code of the file ran


def test_7_bad_cached_checkpoints_are_reported_and_retrained(trained, tmp_path, capsys):
    copy_of(trained, tmp_path)
    ck = checkpoint_file(tmp_path)
    for name, bad in _bad_checkpoints(tmp_path).items():
        shutil.copy(bad, ck)
        rec = harness(tmp_path).run_cell("normal", "random_p0.05")
        err = capsys.readouterr().err
        assert f"warning: checkpoint {ck}: " in err and "trained again" in err, name
        assert "weights_only" not in err and rec.per_pattern_rerr == trained[1].per_pattern_rerr
        assert load_checkpoint(ck)["epoch"] == 1
    assert not (tmp_path / "PWNED").exists()


def test_7_user_checkpoints_without_digest(tmp_path):
    """The contract issue 18 builds on: plain state dicts load with require_digest=False and are returned as read."""
    m = torch.nn.Linear(3, 2)
    p = tmp_path / "user.pt"
    torch.save(m.state_dict(), p)
    d = load_checkpoint(p, require_digest=False)
    assert torch.equal(d["weight"], m.weight.detach())
    with pytest.raises(CheckpointError, match="carries no content digest"):
        load_checkpoint(p)
    torch.save({"format": "bitbench.train_checkpoint/2", "model": m.state_dict()}, p)  # ours, but no digest
    with pytest.raises(CheckpointError, match="carries no content digest"):
        load_checkpoint(p, require_digest=False)


# ------------------------------------------------------------------------------------ 8. unwritable folders
def _unwritable_dirs(tmp_path) -> list[tuple[str, Path]]:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = [("under a regular file", blocker / "results")]
    if sys.platform.startswith("linux") and os.path.isdir("/sys"):
        out.append(("a kernel folder (refuses new files, even to root)", Path("/sys")))
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        out.append(("a read-only folder", ro))
    return out


@pytest.mark.parametrize("which", ["--results-dir", "--cache-dir"])
def test_8_unwritable_folder_is_found_before_any_work(tmp_path, capsys, which):
    for what, bad in _unwritable_dirs(tmp_path):
        dirs = {"--results-dir": str(tmp_path / "results"), "--cache-dir": str(tmp_path / "cache")}
        dirs[which] = str(bad)
        argv = ["run", "--defense", "normal", "--attack", "random_p0.01", "--epochs", "1", "--patterns", "2",
                *[x for kv in dirs.items() for x in kv]]
        assert cli_main(argv) == 2, what
        err = capsys.readouterr().err
        folder = "results folder" if which == "--results-dir" else "cache folder"
        assert f"error: the {folder} " in err and "is not writable" in err and f"choose another with {which}" in err
        assert "training" not in err, what
        assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.json")), what


def test_8_free_space_is_checked(tmp_path):
    with pytest.raises(UsageError, match=r"has .* free, less than the .* needed; choose another with --x"):
        check_writable(tmp_path, "results folder", option="--x", need_bytes=1 << 62)
    check_writable(tmp_path / "new", "results folder", need_bytes=1)
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())  # no probe file left


# ------------------------------------------------------------------------------------------------ 9. smaller
def test_9_percent_rates_name_the_same_attack(tmp_path):
    h = harness(tmp_path)
    from bitbench.cli import _rates

    (r,) = _rates("0.7%")
    assert r == 0.007 and f"random_p{r!r}" == "random_p0.007"
    a1, a2 = h.canonical_attack(f"random_p{r!r}"), h.canonical_attack("random_p0.007")
    assert a1[0] == a2[0] and h.record_path("normal", a1[0]) == h.record_path("normal", a2[0])


def test_9_files_are_written_with_the_users_umask(trained, tmp_path):
    old = os.umask(0o022)
    try:
        h = harness(tmp_path)
        h.run_cell("normal", "random_p0.05")
        written = [checkpoint_file(tmp_path), record_file(tmp_path)]
        atomic_torch_save({"x": 1}, tmp_path / "plain.pt")
        entries = tmp_path / "entries"
        written += [tmp_path / "plain.pt", submit(_records_for_default(tmp_path), name="row", out_dir=entries)]
        assert lcli.main(["leaderboard", "--entries", str(entries), "--out", str(tmp_path / "LB.md")]) == 0
        written.append(tmp_path / "LB.md")
        for p in written:
            assert (p.stat().st_mode & 0o777) == 0o644, p
        os.umask(0o027)
        save_checkpoint({"format": "bitbench.test/1"}, tmp_path / "g.pt")
        assert ((tmp_path / "g.pt").stat().st_mode & 0o777) == 0o640
        assert not list(tmp_path.rglob("*.lock")) and not list(tmp_path.rglob(".tmp-*"))  # nothing left behind
    finally:
        os.umask(old)


def _lock_path(tmp_path) -> str:
    """The checkpoint lock the CLI below takes (the same suite construction as the command line's)."""
    s = load_suite("default")
    s = s.replace(train=dict(s.train, epochs=1), patterns=2, n_eval=200, train_seeds=[0])
    h = Harness(s, RunOptions(cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"),
                              device="cpu", progress=False))
    d = create_defense(h.canonical_defense("normal"))
    return h.checkpoint_path(d, stable_hash(h.model_identity(d))) + ".lock"


def _wait_for(pred, timeout=120.0, what=""):
    t = time.time()
    while not pred():
        if time.time() - t > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_9_concurrent_identical_runs_train_once(tmp_path):
    """Two real processes, same command: one trains and computes, the other waits and reuses both."""
    lock = FileLock(_lock_path(tmp_path)).acquire()  # hold the checkpoint lock until both processes wait for it
    args = ["run", "--defense", "normal", "--attack", "random_p0.05", "--epochs", "1", "--seeds", "1", "--patterns",
            "2", "--n-eval", "200", "--format", "json", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
            "--results-dir", str(tmp_path / "results")]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    procs, errs = [], []
    try:
        for i in range(2):
            errs.append(open(tmp_path / f"err{i}.txt", "w+"))
            procs.append(subprocess.Popen([sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=env,
                                          stdout=subprocess.PIPE, stderr=errs[i], text=True))
        _wait_for(lambda: all("waiting for the checkpoint of normal" in (tmp_path / f"err{i}.txt").read_text()
                              for i in range(2)), what="both processes to wait for the lock")
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in (tmp_path / "err0.txt").read_text()
    finally:
        lock.release()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [(tmp_path / f"err{i}.txt").read_text() for i in range(2)]
    err = [(tmp_path / f"err{i}.txt").read_text() for i in range(2)]
    assert sum("] training lenet" in e for e in err) == 1, err  # trained once
    assert sum("] loaded checkpoint" in e for e in err) == 1, err  # the other waited and reused it
    recs = [json.loads(o) for o in outs]
    assert recs[0] == recs[1]  # the same record: computed once (date and timings included), reused by the other
    assert not list(tmp_path.rglob("*.lock"))


def test_9_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    path = tmp_path / "artefact.lock"
    code = ("import sys, time; from bitbench.configs.lock import FileLock; FileLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "locked"
        os.kill(p.pid, signal.SIGKILL)  # dies holding the lock: its lock file stays behind
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert path.exists() and f"{p.pid} " in path.read_text()
    logs = []
    lock = FileLock(path, "the artefact", log=logs.append)
    t = threading.Thread(target=lock.acquire, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "the stale lock was not taken over"
    assert lock.held and lock.took_over["pid"] == p.pid and not lock.waited
    assert any(f"took over the stale lock of pid {p.pid}" in m for m in logs), logs
    lock.release()
    assert not path.exists()


def test_9_lock_waits_for_a_live_holder(tmp_path):
    path = tmp_path / "x.lock"
    first = FileLock(path).acquire()
    logs = []
    second = FileLock(path, "x", log=logs.append)
    t = threading.Thread(target=second.acquire, daemon=True)
    t.start()
    _wait_for(lambda: logs, 30, "the waiting message")
    assert t.is_alive() and not second.held and f"being computed by pid {os.getpid()}" in logs[0]
    first.release()
    t.join(timeout=30)
    assert second.held and second.took_over is None
    second.release()
