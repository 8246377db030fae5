"""Hostile and damaged inputs: nothing is written outside its folder, no silent wrong number, no traceback for bad
input (exit 2 with a message), every message clear, no data loss. Grouped by class; each test reproduces one case.

Runs the command line in-process (``bitbench.cli.main``) on a small suite: LeNet on the embedded digits, untrained
(``epochs = 0``: the numbers do not matter here, only what the tool does), 2 patterns, 50 evaluation images.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bitbench.attacks.error_map import save_error_map
from bitbench.cli import EXIT_NOT_REPRODUCED
from bitbench.cli import main as cli_main
from bitbench.configs import fileio
from bitbench.configs.entry import result_summary
from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import atomic_write_json, check_writable, safe_name
from bitbench.configs.lock import FileLock, LockError
from bitbench.configs.registries import create_defense
from bitbench.defenses.io import CheckpointError, save_checkpoint
from bitbench.defenses.quantized_model import QuantizedModel
from bitbench.defenses.quantization import rquant

REPO = Path(__file__).resolve().parents[1]

SUITE = """\
name = "tiny"
dataset = "mnist5k"
model = "lenet"
defenses = ["rquant"]
rates = [0.01]
patterns = 2
n_eval = 50
[model_options]
norm = "none"
[train]
epochs = 0
"""


@pytest.fixture
def work(tmp_path, monkeypatch, one_thread):
    """A working folder with the tiny suite; ``work.run(*argv)`` -> (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(SUITE)

    class Work:
        root = tmp_path
        common = ["--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "results"),
                  "--no-progress"]

        def run(self, *argv, suite=True):
            import contextlib
            import io

            out, err = io.StringIO(), io.StringIO()
            argv = list(argv)
            if suite and argv[0] in ("run", "train") and "--suite" not in argv and "--entry" not in argv:
                argv += ["--suite", str(tmp_path / "tiny.toml")]
            if argv[0] in ("run", "train", "suite"):
                argv += self.common
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = cli_main(argv)
                except SystemExit as e:  # argparse
                    rc = e.code
            return rc, out.getvalue(), err.getvalue()

    return Work()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _usage(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("error: "), err
    for n in needles:
        assert n in err, (n, err)


# ================================================================================================= security
class TestSecurity:
    @pytest.mark.parametrize("name", ["../../../escaped", "/tmp/absolute-escape", "..", ".hidden", "a/b", ""])
    def test_suite_name_never_becomes_a_path(self, work, name):
        (work.root / "esc.toml").write_text(SUITE.replace('name = "tiny"', f"name = {json.dumps(name)}"))
        before = set(os.listdir(work.root.parent))
        rc, _, err = work.run("run", "--suite", str(work.root / "esc.toml"), "--attack", "random_p0.01")
        _usage(rc, err, "'name'")
        if name:
            assert "must be a plain name" in err
        rc, _, err = work.run("submit", "nothing.json", "--suite-file", str(work.root / "esc.toml"), "--entries",
                              str(work.root / "ents" / "x"))
        assert rc == 2 and "Traceback" not in err
        assert set(os.listdir(work.root.parent)) == before and not (work.root / "results").exists()
        assert not Path("/tmp/absolute-escape").exists()

    def test_names_from_specs_stay_inside_their_folder_and_are_injective(self):
        hostile = ["../../x", "..", ".", "/etc/passwd", "a/b", "a_b", "a,b", "a:b", "-rf", "", "ä", "x" * 500,
                   "errmap:file=a_b.npz", "errmap:file=a/b.npz", "random_p0.01", "rquant", "lenet"]
        names = [safe_name(t) for t in hostile]
        assert len(set(names)) == len(hostile)  # injective
        for n in names:
            assert n and "/" not in n and "\\" not in n and not n.startswith((".", "-")) and len(n) <= 91
        assert safe_name("random_p0.01") == "random_p0.01" and safe_name("lenet") == "lenet"  # plain names stay

    def test_api_model_name_cannot_escape_the_results_folder(self, tmp_path, one_thread):
        import bitbench

        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        x, y = torch.randn(20, 1, 2, 2), torch.arange(20) % 3
        res = tmp_path / "deep" / "results"
        rec = bitbench.evaluate_model(net, (x, y), format="rquant", attack="random_p0.01", patterns=1,
                                      name="../../../../outside", results_dir=str(res))
        assert rec.path and Path(rec.path).resolve().is_relative_to(res.resolve())
        assert _files(tmp_path) == {str(Path(rec.path).relative_to(tmp_path))}

    def test_planted_symlink_lock_is_refused_and_its_target_untouched(self, work):
        victim = work.root / "victim.txt"
        victim.write_text("precious\n")
        rc, _, err = work.run("run", "--attack", "random_p0.01", "--epochs", "1")  # the record's and checkpoint's paths
        assert rc == 0, err
        (rec,) = (work.root / "results").rglob("*.json")
        rec.unlink()
        lock = Path(str(rec) + ".lock")
        lock.symlink_to(victim)
        rc, _, err = work.run("run", "--attack", "random_p0.01")
        _usage(rc, err, "is a symbolic link", "never followed")
        assert victim.read_text() == "precious\n" and lock.is_symlink()
        # the same for a checkpoint's lock
        lock.unlink()
        (ck,) = (work.root / "cache").rglob("*.pt")
        ck.unlink()
        Path(str(ck) + ".lock").symlink_to(victim)
        rc, _, err = work.run("run", "--attack", "random_p0.01", "--epochs", "1")
        _usage(rc, err, "is a symbolic link")
        assert victim.read_text() == "precious\n"

    def test_a_fifo_planted_as_a_record_or_checkpoint_never_blocks(self, work):
        rc, _, err = work.run("run", "--attack", "random_p0.01")
        (rec,) = (work.root / "results").rglob("*.json")
        rec.unlink()
        os.mkfifo(rec)
        rc, _, err = work.run("run", "--attack", "random_p0.01")  # would wait forever for a writer
        assert rc == 0 and "not a regular file" in err, err
        assert rec.is_file() and json.loads(rec.read_text())["format"].startswith("bitbench.result/")
        os.mkfifo(work.root / "ck.pt")
        rc, _, err = work.run("run", "--checkpoint", "ck.pt", "--attack", "random_p0.01")
        _usage(rc, err, "is not a regular file")

    @pytest.mark.parametrize("kind", ["fifo", "folder", "dangling-link"])
    def test_lock_that_is_not_a_regular_file_is_refused(self, tmp_path, kind):
        p = tmp_path / "x.lock"
        if kind == "fifo":
            os.mkfifo(p)
        elif kind == "folder":
            p.mkdir()
        else:
            p.symlink_to(tmp_path / "created-through-the-link")
        with pytest.raises(LockError):
            FileLock(p).acquire()
        assert not (tmp_path / "created-through-the-link").exists()
        assert stat.S_ISFIFO(os.lstat(p).st_mode) if kind == "fifo" else True


# ======================================================================================= silent wrong numbers
class TestSilentWrongNumbers:
    def test_a_layers_alternative_that_matches_nothing_is_refused(self, work):
        rc, _, err = work.run("run", "--attack", "random_p0.05:layers=features.*|clasifier.*")
        _usage(rc, err, "clasifier.*", "match no quantized tensor")
        rc, _, err = work.run("run", "--attack", "random_p0.05:layers=features.*|classifier.*")
        assert rc == 0, err

    def test_submit_checkpoint_must_hold_the_records_weights(self, work):
        rc, _, err = work.run("train", "--save-weights", "w")
        assert rc == 0, err
        rc, _, err = work.run("run", "--attack", "random_p0.01")
        assert rc == 0, err
        records = [str(p) for p in (work.root / "results").rglob("*.json")]
        (weights,) = (work.root / "w").glob("*.pt")
        other = work.root / "other.pt"
        sd = torch.load(weights, weights_only=True)
        sd["features.0.bias"][0] += 1e-3
        torch.save(sd, other)
        args = ["--suite-file", "tiny.toml", "--entries", "ents"]
        rc, _, err = work.run("submit", *records, "--checkpoint", str(other), *args)
        _usage(rc, err, "are not the weights the records were measured on")
        assert not (work.root / "ents").exists()
        rc, out, err = work.run("submit", *records, "--checkpoint", str(weights), *args)
        assert rc == 0, err

    def _qm_file(self, tmp_path, edit):
        net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
        d = QuantizedModel.from_module(net, rquant(8)).state_dict()
        edit(d)
        path = tmp_path / "qm.pt"
        save_checkpoint(d, path)  # a recomputed digest: intact, but not consistent
        return path

    @pytest.mark.parametrize("edit,needle", [
        (lambda d: d.__setitem__("names", d["names"][:-1]), "'shapes'"),
        (lambda d: d.__setitem__("shapes", [[2, 3], [2], [2, 2], [3]]), "'codes'"),
        (lambda d: d.__setitem__("shapes", [[3, 2], [2], [2, 2], [2]]), None),  # same sizes: a legal relayout
        (lambda d: d.__setitem__("shapes", [[2, 3], [2], [2, 2], [9]]), "'codes'"),
        (lambda d: d["context"]["lo"].__setitem__(0, float("nan")), "NaN or infinite"),
        (lambda d: d["context"]["hi"].__setitem__(1, float("inf")), "NaN or infinite"),
        (lambda d: d["context"].__setitem__("step", d["context"]["step"][:1]), "'context'"),
        (lambda d: d.__setitem__("scheme", "rquant"), "'scheme'"),
        (lambda d: d.__setitem__("scheme", {"bits": "eight"}), "'scheme'"),
        (lambda d: d.__setitem__("names", ["a", "a", "b", "c"]), "distinct"),
    ])
    def test_quantized_model_file_must_be_consistent(self, tmp_path, edit, needle):
        path = self._qm_file(tmp_path, edit)
        if needle is None:
            QuantizedModel.load(path)
            return
        with pytest.raises(CheckpointError, match="not a valid quantized model") as e:
            QuantizedModel.load(path)
        assert needle in str(e.value)

    def test_user_checkpoint_with_a_flipped_byte_is_refused_and_a_pin_is_checked(self, work):
        rc, _, err = work.run("train", "--save-weights", "w")
        assert rc == 0, err
        (weights,) = (work.root / "w").glob("*.pt")
        good = fileio.sha256_file(weights)
        rc, _, err = work.run("run", "--checkpoint", str(weights), "--checkpoint-sha256", good, "--attack",
                              "random_p0.01")
        assert rc == 0, err
        rc, _, err = work.run("run", "--checkpoint", str(weights), "--checkpoint-sha256", "0" * 64, "--attack",
                              "random_p0.01")
        _usage(rc, err, "--checkpoint-sha256")
        rc, _, err = work.run("run", "--checkpoint-sha256", "abc", "--attack", "random_p0.01")
        _usage(rc, err, "--checkpoint")
        # one byte of a tensor's data flipped: torch itself would load it as another number
        with zipfile.ZipFile(weights) as z:
            info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 16)
        raw = bytearray(weights.read_bytes())
        h = info.header_offset  # the local header's own name and extra lengths (torch pads the extra field)
        pos = h + 30 + int.from_bytes(raw[h + 26:h + 28], "little") + int.from_bytes(raw[h + 28:h + 30], "little") + 5
        raw[pos] ^= 0x40
        bad = work.root / "flipped.pt"
        bad.write_bytes(bytes(raw))
        rc, _, err = work.run("run", "--checkpoint", str(bad), "--attack", "random_p0.01")
        _usage(rc, err, "CRC-32", "flipped.pt")


# =========================================================================================== tracebacks
class TestNoTracebackForBadInput:
    @pytest.mark.parametrize("defense,needle", [
        ("rquant+radar:bit=channel", "bit must be a bit index"),
        ("quant:q_min=fixed", "q_min must be a finite number"),
        ("advbet:bits=none", "bits must be an integer"),
        ("quant:range=fixed,asymmetric=true,q_min=-1e308,q_max=1e308", "too wide"),
        ("quant:range=fixed,q_max=1e-44", "too narrow"),
        ("quant:signed=none", "expected a boolean"),
    ])
    def test_bad_spec_values(self, work, defense, needle):
        rc, _, err = work.run("run", "--defense", defense, "--attack", "random_p0.01")
        _usage(rc, err, needle)
        assert not (work.root / "cache").exists()  # found before any work

    def test_float64_checkpoint_beyond_float32(self, work):
        rc, _, err = work.run("train", "--save-weights", "w")
        (weights,) = (work.root / "w").glob("*.pt")
        sd = {k: v.double() for k, v in torch.load(weights, weights_only=True).items()}
        sd["features.0.weight"][0, 0, 0, 0] = 1e300
        torch.save(sd, work.root / "big.pt")
        rc, _, err = work.run("run", "--checkpoint", "big.pt", "--attack", "random_p0.01")
        _usage(rc, err, "beyond the range of the model's dtype", "features.0.weight")

    def _npz(self, path, labels, **extra):
        rng = np.random.default_rng(0)
        np.savez(path, train_images=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), train_labels=labels[:20],
                 test_images=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), test_labels=labels[20:], **extra)

    def test_npz_label_out_of_any_sane_range(self, work):
        labels = np.arange(40) % 3
        labels[5] = 2 ** 40
        self._npz(work.root / "d.npz", labels)
        rc, _, err = work.run("run", "--dataset", "npz", "--data-dir", "d.npz", "--attack", "random_p0.01",
                              suite=False)
        _usage(rc, err, "label out of range", "100,000 classes")

    def test_non_utf8_files(self, work):
        (work.root / "bad.toml").write_bytes(SUITE.replace("tiny", "t\xff").encode("latin-1"))
        rc, _, err = work.run("run", "--suite", "bad.toml", "--attack", "random_p0.01")
        _usage(rc, err, "not UTF-8")
        (work.root / "ents" / "tiny").mkdir(parents=True)
        (work.root / "ents" / "tiny" / "x.json").write_bytes(b'{"name": "\xff"}')
        rc, _, err = work.run("leaderboard", "--entries", "ents", "--configs", str(work.root), "--out", "-")
        _usage(rc, err, "not UTF-8")
        rc, _, err = work.run("run", "--entry", "ents/tiny/x.json")
        _usage(rc, err, "not UTF-8")
        (work.root / "rec.json").write_bytes(b"\xfe\xff{}")
        rc, _, err = work.run("submit", "rec.json", "--suite-file", "tiny.toml", "--entries", "ents")
        _usage(rc, err, "not UTF-8")

    def test_deeply_nested_json(self, work):
        deep = "[" * 100_000 + "]" * 100_000
        rc, _, err = work.run("run", "--attack", "random_p0.01")
        assert rc == 0, err
        (rec,) = (work.root / "results").rglob("*.json")
        first = json.loads(rec.read_text())
        rec.write_text(deep)
        rc, out, err = work.run("run", "--attack", "random_p0.01", "--format", "json")
        assert rc == 0 and "nested too deeply" in err and "Traceback" not in err, err  # damaged: recomputed
        assert json.loads(rec.read_text())["patterns"]["rerr"] == first["patterns"]["rerr"]
        (work.root / "deep.json").write_text(deep)
        rc, _, err = work.run("submit", "deep.json", "--suite-file", "tiny.toml", "--entries", "ents")
        _usage(rc, err, "nested too deeply")
        nested = json.dumps({"name": "x", "a": json.loads("[" * 500 + "]" * 500)})
        (work.root / "ents" / "tiny").mkdir(parents=True)
        for name, text in (("x", nested), ("y", deep)):
            (work.root / "ents" / "tiny" / f"{name}.json").write_text(text)
            rc, _, err = work.run("run", "--entry", f"ents/tiny/{name}.json")
            _usage(rc, err, "nested")

    def test_a_folder_where_a_record_belongs(self, work):
        rc, _, err = work.run("run", "--attack", "random_p0.01")
        (rec,) = (work.root / "results").rglob("*.json")
        rec.unlink()
        rec.mkdir()
        rc, _, err = work.run("run", "--attack", "random_p0.01")
        _usage(rc, err, "a folder is in its place", str(rec))
        with pytest.raises(UsageError, match="a folder is in its place"):  # found after the work, too
            atomic_write_json(rec, {"a": 1})
        assert os.listdir(rec.parent) == [rec.name]  # no temporary file left

    def test_full_disk_is_reported_and_resume_works(self, work, monkeypatch):
        rc, _, err = work.run("run", "--attack", "random_p0.01", "--attack", "random_p0.02")
        assert rc == 0, err
        shutil.rmtree(work.root / "results")
        real = os.fsync
        calls = []

        def fsync(fd):
            calls.append(fd)
            if len(calls) == 2:  # the second record: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd)

        monkeypatch.setattr(fileio.os, "fsync", fsync)
        rc, _, err = work.run("run", "--attack", "random_p0.01", "--attack", "random_p0.02")
        _usage(rc, err, "disk full: ")
        assert err.count("\n") == 1 and "During handling" not in err
        assert not list((work.root / "results").rglob(".tmp-*")) and not list(work.root.rglob("*.lock"))
        assert len(list((work.root / "results").rglob("*.json"))) == 1  # the first record was kept
        monkeypatch.setattr(fileio.os, "fsync", real)
        rc, _, err = work.run("run", "--attack", "random_p0.01", "--attack", "random_p0.02")
        assert rc == 0, err
        assert len(list((work.root / "results").rglob("*.json"))) == 2

    def test_full_disk_while_torch_writes_a_checkpoint(self, tmp_path, monkeypatch):
        from bitbench.defenses.io import atomic_torch_save

        class Full:
            def __init__(self, f):
                self.f = f

            def __getattr__(self, k):
                return getattr(self.f, k)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, b):
                raise OSError(errno.ENOSPC, "No space left on device")

        orig = os.fdopen
        monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: Full(orig(fd, mode)))
        with pytest.raises(fileio.DiskFullError, match=r"^disk full: .*w\.pt") as e:
            atomic_torch_save({"a": torch.zeros(100)}, tmp_path / "w.pt")
        assert e.value.__cause__ is None and e.value.__suppress_context__
        assert os.listdir(tmp_path) == []

    def test_save_weights_into_an_unwritable_folder(self, work, monkeypatch):
        (work.root / "afile").write_text("not a folder")
        rc, _, err = work.run("train", "--save-weights", "afile/w")
        _usage(rc, err, "--save-weights")
        assert not (work.root / "cache").exists()  # before the training
        # after the training (the folder became unusable meanwhile): a message, the trained model is cached
        import bitbench.cli as cli

        monkeypatch.setattr(cli, "check_writable", lambda *a, **k: None)
        rc, _, err = work.run("train", "--save-weights", "afile/w", "--epochs", "1")
        _usage(rc, err, "--save-weights", "afile")
        assert list((work.root / "cache").rglob("*.pt"))  # the training is kept


# ================================================================================================ unclear
class TestClearMessages:
    def test_pickled_error_map_and_dataset_never_suggest_unsafe_loading(self, work):
        np.save(work.root / "map.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        rc, _, err = work.run("run", "--attack", "errmap:file=map.npy")
        _usage(rc, err, "pickled Python objects")
        assert "allow_pickle" not in err
        np.savez(work.root / "d.npz", train_images=np.array([{"a": 1}], dtype=object), train_labels=np.zeros(1),
                 test_images=np.zeros((1, 8, 8)), test_labels=np.zeros(1))
        rc, _, err = work.run("run", "--dataset", "npz", "--data-dir", "d.npz", "--attack", "random_p0.01",
                              suite=False)
        _usage(rc, err, "pickled Python objects")
        assert "allow_pickle" not in err and "weights_only" not in err

    def test_run_entry_fails_loudly_when_not_reproduced(self, work):
        assert work.run("train", "--save-weights", "w")[0] == 0
        rc, _, err = work.run("run")
        records = [str(p) for p in (work.root / "results").rglob("*.json")]
        (weights,) = (work.root / "w").glob("*.pt")
        rc, out, err = work.run("submit", *records, "--checkpoint", str(weights), "--suite-file", "tiny.toml",
                                "--entries", "ents", "--name", "row")
        assert rc == 0, err
        entry = work.root / "ents" / "tiny" / "row.json"
        argv = ["run", "--entry", str(entry), "--suite", "tiny.toml"]
        rc, out, err = work.run(*argv)
        assert rc == 0 and "1/1 results reproduced exactly" in out, (out, err)
        e = json.loads(entry.read_text())  # an entry whose numbers its checkpoint does not give
        res = e["results"][0]
        res["per_model"]["rerr"] = [[min(1.0, v + 0.02) for v in m] for m in res["per_model"]["rerr"]]
        res["summary"]["rerr"] = result_summary(res["per_model"]["rerr"], f"tiny|row|{res['attack']}|rerr")
        entry.write_text(json.dumps(e))
        rc, out, err = work.run(*argv)
        assert rc == EXIT_NOT_REPRODUCED == 3, err
        assert "0/1 results reproduced exactly" in out and "NOT REPRODUCED" in out.splitlines()[-1]
        rc, out, err = work.run(*argv, "--attack", "random_p0.02")
        assert rc == 3 and "NOT REPRODUCED" in out
        assert "3 `run --entry` ran but did not reproduce" in (REPO / "README.md").read_text()

    def test_a_suite_with_nothing_to_run(self, work):
        (work.root / "empty.toml").write_text(SUITE.replace("rates = [0.01]", "rates = []"))
        rc, out, err = work.run("run", "--suite", "empty.toml")
        _usage(rc, err, "nothing to run", "--attack")
        assert out == ""

    def test_free_space_message_tells_the_numbers_apart(self, tmp_path, monkeypatch):
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(fileio.shutil, "disk_usage",
                            lambda p: usage._replace(free=int(2.4 * 2 ** 20)))
        with pytest.raises(UsageError, match=r"has 2\.4 MiB free, less than the 2\.5 MiB needed"):
            check_writable(tmp_path, "results folder", need_bytes=int(2.5 * 2 ** 20))
        monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: usage._replace(free=2 ** 21 - 1))
        with pytest.raises(UsageError, match=r"has 2,097,151 bytes free, less than the 2,097,152 bytes needed"):
            check_writable(tmp_path, "results folder", need_bytes=2 ** 21)

    def test_leaderboard_check_advice_keeps_the_plot_links(self, work):
        shutil.copy(REPO / "LEADERBOARD.md", work.root / "LEADERBOARD.md")
        with open(work.root / "LEADERBOARD.md", "a") as f:
            f.write("stale\n")
        rc, _, err = work.run("leaderboard", "--check")
        assert rc == 1
        assert "--plots leaderboard/plots`" in err, err

    def test_moving_an_error_map_recomputes_its_cell_as_the_readme_says(self, work):
        save_error_map(work.root / "chip.npz", p=np.full((1, 64, 8), 0.01))
        rc, out, err = work.run("run", "--attack", "errmap:file=chip.npz,tile=true,patterns=2", "--format", "json")
        assert rc == 0, err
        (work.root / "moved").mkdir()
        shutil.move(work.root / "chip.npz", work.root / "moved" / "chip.npz")
        rc, out2, err = work.run("run", "--attack", "errmap:file=moved/chip.npz,tile=true,patterns=2", "--format",
                                 "json")
        assert rc == 0, err
        (a,), (b,) = json.loads(out)[0]["records"], json.loads(out2)[0]["records"]
        # the same configuration and numbers, computed again under the new spec's record
        assert a["config_hash"] == b["config_hash"] and a["patterns"]["rerr"] == b["patterns"]["rerr"]
        assert b["timings"]["attack_eval"] > 0 and len(list((work.root / "results").rglob("*.json"))) == 2
        readme = (REPO / "README.md").read_text()
        assert "a moved error map is another spec" in readme and "moving it does not" not in readme


# ============================================================================================== data loss
class TestNoDataLoss:
    def test_error_map_specs_that_look_alike_get_their_own_records(self, work):
        (work.root / "a").mkdir()
        save_error_map(work.root / "a_b.npz", p=np.full((1, 64, 8), 0.01))
        save_error_map(work.root / "a" / "b.npz", p=np.full((1, 64, 8), 0.05))
        for spec in ("errmap:file=a_b.npz,patterns=2,tile=true", "errmap:file=a/b.npz,patterns=2,tile=true"):
            rc, _, err = work.run("run", "--attack", spec)
            assert rc == 0, err
        recs = sorted((work.root / "results").rglob("*.json"))
        assert len(recs) == 2
        assert {json.loads(p.read_text())["attack"] for p in recs} == {"errmap:file=a_b.npz,patterns=2,tile=true",
                                                                       "errmap:file=a/b.npz,patterns=2,tile=true"}


# ========================================================================================= a user's model
class TestUsersModel:
    def test_path_spec_results_are_not_hidden(self, work):
        (work.root / "mynet.py").write_text(
            "import torch\n"
            "def build(num_classes=10):\n"
            "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, num_classes))\n")
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
        torch.save(net.state_dict(), work.root / "m.pt")
        rc, _, err = work.run("run", "--model", "./mynet.py:build", "--checkpoint", "m.pt", "--attack",
                              "random_p0.01")
        assert rc == 0, err
        (rec,) = (work.root / "results").rglob("*.json")
        parts = rec.relative_to(work.root / "results").parts
        assert not any(p.startswith(".") for p in parts), parts
        assert parts[1].startswith("mynet.py__build-")

    def test_evaluate_model_without_results_dir_reads_nothing(self, tmp_path, monkeypatch, one_thread):
        import bitbench

        monkeypatch.chdir(tmp_path)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        x, y = torch.randn(20, 1, 2, 2), torch.arange(20) % 3
        kw = dict(format="rquant", attack="random_p0.01", patterns=1)
        first = bitbench.evaluate_model(net, (x, y), results_dir="results", **kw)
        assert not first.cached
        assert bitbench.evaluate_model(net, (x, y), results_dir="results", **kw).cached
        again = bitbench.evaluate_model(net, (x, y), **kw)
        assert not again.cached and again.path is None

    def test_quantize_stores_a_users_model_as_evaluate_model_does(self, one_thread):
        from bitbench.harness import Harness, RunOptions
        from bitbench.api import as_dataset
        from bitbench.configs.suite import load_suite
        from bitbench.user_model import supplied_model

        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.LayerNorm(8),
                                  torch.nn.Linear(8, 3))
        with torch.no_grad():
            net[2].weight.fill_(1.7)  # above the training clip at w_max = 1
        net[1].bias.requires_grad_(False)  # a frozen parameter
        ds = as_dataset((torch.randn(10, 1, 2, 2), torch.arange(10) % 3))
        suite = load_suite("default").replace(model="net", model_options={}, dataset=ds.name, n_eval=None)
        h = Harness(suite, RunOptions(write_results=False, progress=False), supplied=supplied_model(net), dataset=ds)
        for spec in ("rquant", "normal", "quant:bits=4", "rquant+secded"):
            mine = create_defense(spec).quantize(net)
            theirs = h.deploy(spec).qm
            assert getattr(mine, "names", None) == getattr(theirs, "names", None) or spec.endswith("secded")
            assert torch.equal(mine.codes, theirs.codes) and mine.scheme == theirs.scheme, spec
        assert "1.bias" in create_defense("rquant").quantize(net).names
        assert not math.isclose(float(create_defense("rquant").quantize(net).dequantize().max()), 1.0)
