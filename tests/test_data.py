"""Datasets (embedded mnist5k and local loaders on small files written in the real formats) and augmentation."""
from __future__ import annotations

import gzip
import pickle
import struct
import sys
import time
import types

import numpy as np
import pytest
import torch

from bitbench.data import (Augment, DataError, Dataset, batches, cutout, list_datasets, load_dataset, random_crop,
                            random_hflip)
from bitbench.data.loaders import read_idx, split_eval_attack

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------ embedded

@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


def test_list_datasets():
    assert list_datasets() == ["cifar10", "cifar100", "h5", "mnist", "mnist5k", "npz", "sklearn_digits",
                               "text"]
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]


def test_mnist5k_sizes_dtypes_ranges(mnist5k):
    ds = mnist5k
    assert ds.name == "mnist5k" and ds.num_classes == 10
    assert ds.train_x.shape == (4000, 1, 28, 28)
    assert ds.test_x.shape == (1000, 1, 28, 28)
    assert ds.attack_x.shape == (500, 1, 28, 28)
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y), (ds.attack_x, ds.attack_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert len(x) == len(y)
    # uint8 values scaled by 255: every pixel is k/255
    k = ds.train_x[:50] * 255
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert ds.in_channels == 1 and ds.image_size == 28
    assert len(ds.mean) == len(ds.std) == 1
    assert abs(ds.mean[0] - float(ds.train_x.mean())) < 1e-5
    assert abs(ds.std[0] - float(ds.train_x.std(unbiased=False))) < 1e-4
    assert ds.info["sizes"] == {"train": 4000, "test": 1000, "attack": 500}
    assert "split" in ds.info and "source" in ds.info


def test_mnist5k_class_balance_and_order(mnist5k):
    ds = mnist5k
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [400] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [100] * 10
    assert torch.bincount(ds.attack_y, minlength=10).tolist() == [50] * 10
    # round-robin order: any prefix is balanced
    assert ds.test_y[:20].tolist() == list(range(10)) * 2
    assert torch.bincount(load_dataset("mnist5k", n_eval=200).test_y).tolist() == [20] * 10


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in (x * 255).round().to(torch.uint8).flatten(1)}


def test_mnist5k_splits_disjoint_and_attack_from_train(mnist5k):
    ds = mnist5k
    train, test, attack = _rows(ds.train_x), _rows(ds.test_x), _rows(ds.attack_x)
    assert not (test & train)
    assert not (test & attack)
    assert attack <= train  # the attacker's images are training images


def test_mnist5k_deterministic_and_fast():
    times = []
    for _ in range(3):  # best of three: a shared, busy CPU should not make this flaky
        t = time.perf_counter()
        a = load_dataset("mnist5k")
        times.append(time.perf_counter() - t)
    assert min(times) < 0.5
    b = load_dataset("mnist5k")
    for f in ("train_x", "train_y", "test_x", "test_y", "attack_x", "attack_y"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    a.train_x.zero_()  # a fresh copy each time: mutating one load does not leak into the next
    assert float(load_dataset("mnist5k").train_x.max()) == 1.0


def test_mnist5k_n_eval(mnist5k):
    ds = load_dataset("mnist5k", n_eval=100)
    assert ds.test_x.shape[0] == 100 and torch.equal(ds.test_x, mnist5k.test_x[:100])
    assert torch.equal(ds.attack_x, mnist5k.attack_x)
    for bad in (0, 1001, -5):
        with pytest.raises(DataError):
            load_dataset("mnist5k", n_eval=bad)


def test_mnist5k_looks_like_digits(mnist5k):
    """Per-class mean images differ clearly; a nearest-class-mean classifier is far above chance."""
    ds = mnist5k
    means = torch.stack([ds.train_x[ds.train_y == c].mean(0).flatten() for c in range(10)])
    d = torch.cdist(ds.test_x.flatten(1), means)
    acc = (d.argmin(1) == ds.test_y).float().mean().item()
    assert acc > 0.7
    assert torch.cdist(means, means).fill_diagonal_(1e9).min() > 1.0


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*Registered datasets: cifar10"):
        load_dataset("imagenet")


def test_sklearn_digits_optional():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="scikit-learn"):
            load_dataset("sklearn_digits")
        return
    ds = load_dataset("sklearn_digits")
    assert ds.train_x.shape[1:] == (1, 8, 8) and ds.num_classes == 10
    assert float(ds.train_x.max()) <= 1.0
    assert len(ds.train_x) + len(ds.test_x) == 1797
    assert ds.test_y[:10].tolist() == list(range(10))
    assert not ({r.tobytes() for r in ds.test_x.numpy()} & {r.tobytes() for r in ds.attack_x.numpy()})


# ------------------------------------------------------------------------------------------------ split rule

def test_split_rule():
    ev, at, _ = split_eval_attack(10000)
    assert (ev.start, ev.stop, at.start, at.stop) == (0, 9000, 9000, 10000)
    ev, at, _ = split_eval_attack(10000, n_eval=500)
    assert (ev.stop, at.start) == (500, 9000)
    ev, at, _ = split_eval_attack(50)
    assert (ev.stop, at.start, at.stop) == (45, 45, 50)
    with pytest.raises(DataError):
        split_eval_attack(10000, n_eval=9001)


# ------------------------------------------------------------------------------------------------ MNIST IDX

def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def _write_mnist(d, n_train=30, n_test=20, gz=True, labels_max=9):
    d.mkdir(parents=True, exist_ok=True)
    tr = RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    te = RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    trl = RNG.integers(0, labels_max + 1, n_train, dtype=np.uint8)
    tel = RNG.integers(0, labels_max + 1, n_test, dtype=np.uint8)
    files = {"train-images-idx3-ubyte": tr, "train-labels-idx1-ubyte": trl,
             "t10k-images-idx3-ubyte": te, "t10k-labels-idx1-ubyte": tel}
    for name, arr in files.items():
        raw = _idx_bytes(arr)
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (d / name).write_bytes(raw)
    return tr, trl, te, tel


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    tr, trl, te, tel = _write_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", str(tmp_path))
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.num_classes == 10
    assert torch.equal((ds.train_x * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(tr))
    assert ds.train_y.tolist() == trl.tolist()
    # < 10,000 test images: the attacker gets the last 10%
    assert ds.test_x.shape[0] == 18 and ds.attack_x.shape[0] == 2
    assert ds.attack_y.tolist() == tel[18:].tolist() and ds.test_y.tolist() == tel[:18].tolist()


def test_mnist_subfolder_and_paper_split(tmp_path):
    _write_mnist(tmp_path / "MNIST" / "raw", n_train=5, n_test=10000)
    ds = load_dataset("mnist", str(tmp_path))
    assert ds.test_x.shape[0] == 9000 and ds.attack_x.shape[0] == 1000
    assert load_dataset("mnist", str(tmp_path), n_eval=100).test_x.shape[0] == 100


def test_mnist_missing_lists_files(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path))
    msg = str(e.value)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte", str(tmp_path)):
        assert f in msg


def test_mnist_truncated(tmp_path):
    _write_mnist(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(DataError, match="truncated"):
        read_idx(str(p))


def test_mnist_bad_magic_and_labels(tmp_path):
    _write_mnist(tmp_path, gz=False)
    p = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(p.read_bytes())
    raw[2] = 0x0D  # float data type
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="IDX"):
        load_dataset("mnist", str(tmp_path))
    _write_mnist(tmp_path / "b", gz=True, labels_max=12)
    with pytest.raises(DataError, match="out of range"):
        load_dataset("mnist", str(tmp_path / "b"))


def test_mnist_wrong_count(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(DataError, match="29 labels for 30 images"):
        load_dataset("mnist", str(tmp_path))


# ------------------------------------------------------------------------------------------------ CIFAR

def _pickle_batch(path, x, labels, label_key=b"labels"):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", label_key: list(map(int, labels)), b"data": x,
                     b"filenames": [b"a"] * len(x)}, f, protocol=2)


def _write_cifar10(root, n=4, n_test=10):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    data = []
    for i in range(1, 6):
        x = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = RNG.integers(0, 10, n)
        _pickle_batch(d / f"data_batch_{i}", x, y)
        data.append((x, y))
    xt = RNG.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    _pickle_batch(d / "test_batch", xt, RNG.integers(0, 10, n_test))
    return d, data


def test_cifar10(tmp_path):
    d, data = _write_cifar10(tmp_path)
    for where in (tmp_path, d):  # parent or the extracted folder itself
        ds = load_dataset("cifar10", str(where))
        assert ds.train_x.shape == (20, 3, 32, 32) and ds.num_classes == 10
        assert ds.test_x.shape == (9, 3, 32, 32) and ds.attack_x.shape == (1, 3, 32, 32)
        x0 = data[0][0][0].reshape(3, 32, 32)
        assert torch.equal((ds.train_x[0] * 255).round().to(torch.uint8), torch.from_numpy(x0))
        assert ds.train_y[:4].tolist() == list(data[0][1])
        assert len(ds.mean) == 3


def test_cifar10_tarball(tmp_path):
    import tarfile
    _write_cifar10(tmp_path / "src")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (20, 3, 32, 32)


def test_cifar10_missing_and_broken(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(tmp_path))
    assert "data_batch_1" in str(e.value) and "test_batch" in str(e.value) and str(tmp_path) in str(e.value)
    d, _ = _write_cifar10(tmp_path / "a")
    _pickle_batch(d / "data_batch_3", RNG.integers(0, 256, (4, 3000), dtype=np.uint8), [0] * 4)
    with pytest.raises(DataError, match="N,3072"):
        load_dataset("cifar10", str(tmp_path / "a"))
    d, _ = _write_cifar10(tmp_path / "b")
    _pickle_batch(d / "test_batch", RNG.integers(0, 256, (10, 3072), dtype=np.uint8), [10] * 10)
    with pytest.raises(DataError, match="out of range"):
        load_dataset("cifar10", str(tmp_path / "b"))
    d, _ = _write_cifar10(tmp_path / "c")
    (d / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="pickle"):
        load_dataset("cifar10", str(tmp_path / "c"))


def test_cifar_pickle_is_restricted(tmp_path):
    d, _ = _write_cifar10(tmp_path)
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"data": types.SimpleNamespace()}, f)
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    _pickle_batch(d / "train", RNG.integers(0, 256, (12, 3072), dtype=np.uint8), np.arange(12) * 8,
                  label_key=b"fine_labels")
    _pickle_batch(d / "test", RNG.integers(0, 256, (10, 3072), dtype=np.uint8), [99] * 10,
                  label_key=b"fine_labels")
    ds = load_dataset("cifar100", str(tmp_path))
    assert ds.num_classes == 100 and ds.train_y.max() == 88 and ds.test_y.tolist() == [99] * 9
    with pytest.raises(DataError, match="cifar-100-python"):
        load_dataset("cifar100", str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------------------ HDF5 / npz

def _write_h5(path, arr, key="tensor"):
    import h5py
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=arr)


def test_h5_original_layout(tmp_path):
    tr = RNG.random((12, 32, 32, 3), dtype=np.float32)
    te = RNG.random((10, 32, 32, 3), dtype=np.float32)
    _write_h5(tmp_path / "train_images.h5", tr)
    _write_h5(tmp_path / "train_labels.h5", RNG.integers(0, 10, (12, 1)), key="whatever")
    _write_h5(tmp_path / "test_images.h5", te)
    _write_h5(tmp_path / "test_labels.h5", np.arange(10))
    ds = load_dataset("h5", str(tmp_path))
    assert ds.train_x.shape == (12, 3, 32, 32) and ds.num_classes == 10
    assert torch.allclose(ds.train_x[3], torch.from_numpy(tr[3]).permute(2, 0, 1))
    assert ds.test_x.shape[0] == 9 and ds.attack_y.tolist() == [9]


def test_h5_errors(tmp_path):
    _write_h5(tmp_path / "train_images.h5", RNG.random((4, 28, 28, 1), dtype=np.float32))
    with pytest.raises(DataError) as e:
        load_dataset("h5", str(tmp_path))
    assert "train_labels.h5" in str(e.value) and "test_images.h5" in str(e.value) and str(tmp_path) in str(e.value)
    _write_h5(tmp_path / "train_labels.h5", np.zeros(4, np.int64))
    _write_h5(tmp_path / "test_images.h5", 3 * RNG.random((4, 28, 28, 1), dtype=np.float32))  # not in [0, 1]
    _write_h5(tmp_path / "test_labels.h5", np.ones(4, np.int64))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_dataset("h5", str(tmp_path))


def test_npz_nhwc_uint8_and_nchw_float(tmp_path):
    tr = RNG.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    te = RNG.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", train_images=tr, train_labels=RNG.integers(0, 5, 20),
             test_images=te, test_labels=np.arange(10) % 5)
    ds = load_dataset("npz", str(tmp_path))  # a folder with one .npz
    assert ds.train_x.shape == (20, 3, 16, 16) and ds.num_classes == 5
    assert torch.equal((ds.train_x * 255).round().to(torch.uint8), torch.from_numpy(tr).permute(0, 3, 1, 2))
    p = tmp_path / "f" / "nchw.npz"
    p.parent.mkdir()
    np.savez(p, train_images=tr.transpose(0, 3, 1, 2) / 255.0, train_labels=np.zeros(20, np.int64),
             test_images=te.transpose(0, 3, 1, 2).astype(np.float32) / 255, test_labels=np.ones(10, np.int64),
             num_classes=np.array(4))
    ds2 = load_dataset("npz", str(p))  # the file itself
    assert ds2.num_classes == 4
    assert torch.allclose(ds2.train_x, ds.train_x, atol=1e-6)


def test_npz_as_hdf5(tmp_path):
    import h5py
    with h5py.File(tmp_path / "set.h5", "w") as f:
        f["train_images"] = RNG.integers(0, 256, (8, 28, 28), dtype=np.uint8)
        f["train_labels"] = np.arange(8) % 2
        f["test_images"] = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
        f["test_labels"] = np.arange(4) % 2
    ds = load_dataset("npz", str(tmp_path))
    assert ds.train_x.shape == (8, 1, 28, 28) and ds.num_classes == 2


def test_npz_errors(tmp_path):
    good = dict(train_images=np.zeros((4, 8, 8, 1), np.uint8), train_labels=np.zeros(4, np.int64),
                test_images=np.zeros((4, 8, 8, 1), np.uint8), test_labels=np.ones(4, np.int64))

    def write(name, **over):
        d = tmp_path / name
        d.mkdir()
        arrs = {**good, **over}
        np.savez(d / "x.npz", **{k: v for k, v in arrs.items() if v is not None})
        return str(d)

    with pytest.raises(DataError, match="test_labels"):
        load_dataset("npz", write("missing_key", test_labels=None))
    with pytest.raises(DataError, match="out of range"):
        load_dataset("npz", write("neg", train_labels=np.array([0, -1, 0, 1])))
    with pytest.raises(DataError, match="out of range"):
        load_dataset("npz", write("nc", num_classes=np.array(1)))
    with pytest.raises(DataError, match="labels for"):
        load_dataset("npz", write("count", train_labels=np.zeros(3, np.int64)))
    with pytest.raises(DataError, match="shape"):
        load_dataset("npz", write("shape", train_images=np.zeros((4, 8), np.uint8)))
    with pytest.raises(DataError, match="differ"):
        load_dataset("npz", write("mismatch", test_images=np.zeros((4, 9, 9, 1), np.uint8)))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_dataset("npz", write("range", train_images=np.full((4, 8, 8, 1), 7.0, np.float32)))
    with pytest.raises(DataError, match="does not exist.*train_images"):
        load_dataset("npz", str(tmp_path / "nonexistent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="exactly one"):
        load_dataset("npz", str(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------------ augmentation

def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_augment_shapes_and_determinism():
    x = torch.rand(16, 3, 32, 32)
    aug = Augment.from_config({"crop": 4, "flip": True, "cutout": 16, "autoaugment": True}, mean=(0.5, 0.4, 0.3))
    a, b = aug(x, _g(1)), aug(x, _g(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, aug(x, _g(2)))
    assert Augment.from_config({}).is_identity and torch.equal(Augment()(x, _g()), x)
    state = torch.get_rng_state()
    aug(x, _g(3))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is never touched
    with pytest.raises(ValueError, match="unknown"):
        Augment.from_config({"rotate": 5})
    with pytest.raises(ValueError, match="Generator"):
        random_crop(x, 4, None)


def test_random_crop_is_a_shifted_window():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    out = random_crop(x, 2, _g(5))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6])]
        assert len(hits) == 1
    # over many draws every offset shows up, including the extremes
    many = random_crop(torch.ones(400, 1, 4, 4), 1, _g(0))
    zero_rows_top = (many[:, 0, 0, :].sum(1) == 0).sum()
    zero_rows_bottom = (many[:, 0, -1, :].sum(1) == 0).sum()
    assert 0 < zero_rows_top < 400 and 0 < zero_rows_bottom < 400
    assert torch.equal(random_crop(x, 0, _g()), x)


def test_random_hflip():
    x = torch.rand(200, 2, 5, 7)
    out = random_hflip(x, _g(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    same = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert torch.all(flipped ^ same)
    assert 60 < int(flipped.sum()) < 140


def test_cutout():
    x = torch.ones(50, 3, 32, 32)
    out = cutout(x, 16, _g(0))
    zeros = (out == 0).all(1)  # N,H,W: all channels cut together
    assert torch.equal((out == 0).any(1), zeros)
    counts = zeros.flatten(1).sum(1)
    assert counts.max() == 256 and counts.min() >= 64  # full square inside, clipped at borders (>= 8x8)
    for z in zeros:  # the cut region is an axis-aligned rectangle
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert int(z.sum()) == len(rows) * len(cols)
        assert len(rows) <= 16 and len(cols) <= 16
    assert torch.equal(cutout(x, 0, _g()), x)


def test_padding_and_cutout_fill_with_the_dataset_mean():
    """The paper's recipe fills padding, cutout and AutoAugment with the dataset mean (per channel)."""
    mean = (0.1, 0.2, 0.3)
    x = torch.ones(30, 3, 8, 8)
    out = random_crop(x, 4, _g(0), fill=mean)
    pad = out != 1
    assert pad.any()
    for c, m in enumerate(mean):
        assert torch.equal(out[:, c][pad[:, c]], torch.full_like(out[:, c][pad[:, c]], m))
    cut = cutout(x, 4, _g(1), fill=mean)
    for c, m in enumerate(mean):
        assert set(cut[:, c].unique().tolist()) == {1.0, torch.tensor(m).item()}
    aug = Augment.from_config({"crop": 4, "cutout": 4, "autoaugment": True}, mean=mean)
    assert aug.fill == mean and aug.config()["fill"] == "mean"
    # the recipe pads its 8-bit images with the level int(255 * mean) (25, 51, 76 of 255), as the original
    padded = Augment(crop=4, mean=mean)(x, _g(0))
    levels = [int(255 * torch.tensor(m, dtype=torch.float32)) for m in mean]
    assert levels == [25, 51, 76]
    for c, lv in enumerate(levels):
        assert set(padded[:, c].unique().tolist()) == {1.0, (torch.tensor(float(lv)) / 255).item()}
    assert Augment(crop=2, fill=0.0).fill == (0.0,)
    with pytest.raises(ValueError, match="dataset mean"):
        Augment(crop=2)
    with pytest.raises(ValueError, match="fill"):
        Augment(crop=2, fill=2.0)
    with pytest.raises(ValueError, match="policy"):
        Augment(autoaugment="imagenet", fill=0.0)


def test_batches():
    x, y = torch.arange(10).float()[:, None], torch.arange(10)
    got = list(batches(x, y, 4, shuffle=False))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in got]), y)
    assert [len(b[1]) for b in batches(x, y, 4, shuffle=False, drop_last=True)] == [4, 4]
    s1 = torch.cat([b[1] for b in batches(x, y, 3, shuffle=True, generator=_g(7))])
    s2 = torch.cat([b[1] for b in batches(x, y, 3, shuffle=True, generator=_g(7))])
    assert torch.equal(s1, s2) and sorted(s1.tolist()) == list(range(10)) and not torch.equal(s1, y)
    for bx, by in batches(x, y, 3, shuffle=True, generator=_g(1)):
        assert torch.equal(bx[:, 0].long(), by)
    with pytest.raises(ValueError):
        list(batches(x, y, 3, shuffle=True))
