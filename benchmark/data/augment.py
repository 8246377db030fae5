"""Data augmentation and batching in plain torch, on batch tensors N,C,H,W, with an explicit `torch.Generator`.

Nothing here touches the global random state. Random numbers are drawn on the generator's device and moved to the
data's device, so a CPU generator drives CUDA batches too (and gives the same augmentation on either).

The paper's CIFAR recipe is ``Augment.from_config({'crop': 4, 'flip': True, 'autoaugment': True, 'cutout': 16})``;
MNIST used no augmentation. Order of application: crop, flip, AutoAugment, cutout.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import torch

from bitbench.configs.errors import UsageError

__all__ = ["random_crop", "random_hflip", "cutout", "autoaugment", "Augment", "batches"]


def _check(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a batch N,C,H,W, got shape {tuple(x.shape)}")


def _gen_device(generator: torch.Generator | None) -> torch.device:
    if generator is None:
        raise ValueError("an explicit torch.Generator is required (the global RNG is never used)")
    return generator.device


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, *, fill: float = 0.0) -> torch.Tensor:
    """Zero-pad (``fill``) each image by ``padding`` pixels on every side and cut a random HxW window (per image,
    offsets uniform in 0..2*padding)."""
    _check(x)
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    dev = _gen_device(generator)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding), value=fill)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # N,H
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # N,W
    ni = torch.arange(n, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check(x)
    dev = _gen_device(generator)
    flip = (torch.rand(x.shape[0], generator=generator, device=dev) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator, *, fill: float = 0.0) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): per image, set a ``size`` x ``size`` square to ``fill``; its centre is
    uniform over all pixels, the square is clipped at the borders (rows cy - size//2 .. cy - size//2 + size - 1)."""
    _check(x)
    if size <= 0:
        return x
    n, _, h, w = x.shape
    dev = _gen_device(generator)
    cy = torch.randint(0, h, (n,), generator=generator, device=dev).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev).to(x.device)
    y0 = (cy - size // 2)[:, None]
    x0 = (cx - size // 2)[:, None]
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= y0) & (ys < y0 + size)  # N,H
    in_x = (xs >= x0) & (xs < x0 + size)  # N,W
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # N,1,H,W
    return x.masked_fill(mask, fill)


def _torchvision_autoaugment():
    try:
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy
    except ImportError:
        raise RuntimeError("AutoAugment needs torchvision, which is not installed; install torchvision or set "
                           "'autoaugment': False") from None
    except Exception as e:  # noqa: BLE001 - e.g. a torchvision built for another torch version
        raise RuntimeError(f"AutoAugment needs torchvision, which failed to import ({type(e).__name__}: {e}); "
                           "install the torchvision matching your torch, or set 'autoaugment': False") from None
    return AutoAugment, AutoAugmentPolicy


def autoaugment(x: torch.Tensor, generator: torch.Generator, policy: str = "cifar10") -> torch.Tensor:
    """torchvision's AutoAugment (CIFAR-10 policy by default), applied per image to float images in [0, 1].

    Only if torchvision is importable. torchvision draws from the global RNG, so this runs inside
    `torch.random.fork_rng` seeded from ``generator``: deterministic, and the global state is left untouched."""
    _check(x)
    AutoAugment, Policy = _torchvision_autoaugment()
    pol = {"cifar10": Policy.CIFAR10, "imagenet": Policy.IMAGENET, "svhn": Policy.SVHN}[policy.lower()]
    tf = AutoAugment(pol)
    dev = _gen_device(generator)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=dev).item())
    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        out = torch.stack([tf(img) for img in u8])
    return out.to(device=x.device, dtype=x.dtype).div_(255.0)


class Augment:
    """A composable augmentation: ``Augment(crop=4, flip=True, cutout=16, autoaugment=False)`` or
    ``Augment.from_config({...})``; call as ``aug(x, generator)``. All off = identity."""

    KEYS = ("crop", "flip", "autoaugment", "cutout", "fill")

    def __init__(self, crop: int = 0, flip: bool = False, cutout: int = 0, autoaugment: bool | str = False,
                 fill: float = 0.0):
        for k, v in (("crop", crop), ("cutout", cutout)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UsageError(f"augment: {k} must be a non-negative integer, got {v!r}")
        self.crop = int(crop)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        self.autoaugment = autoaugment if isinstance(autoaugment, str) else ("cifar10" if autoaugment else "")
        self.fill = float(fill)
        if self.autoaugment:
            _torchvision_autoaugment()  # fail early with a clear message

    @classmethod
    def from_config(cls, config: Mapping | None) -> "Augment":
        config = dict(config or {})
        unknown = sorted(set(config) - set(cls.KEYS))
        if unknown:
            raise UsageError(f"augment: unknown option(s) {unknown}; known: {list(cls.KEYS)}")
        norm = {k: (0 if v in (None, False) and k in ("crop", "cutout") else v) for k, v in config.items()}
        return cls(**norm)

    def config(self) -> dict:
        return {"crop": self.crop, "flip": self.flip, "cutout": self.cutout,
                "autoaugment": self.autoaugment or False, "fill": self.fill}

    @property
    def is_identity(self) -> bool:
        return not (self.crop or self.flip or self.cutout or self.autoaugment)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop:
            x = random_crop(x, self.crop, generator, fill=self.fill)
        if self.flip:
            x = random_hflip(x, generator)
        if self.autoaugment:
            x = autoaugment(x, generator, self.autoaugment)
        if self.cutout:
            x = cutout(x, self.cutout, generator, fill=self.fill)
        return x

    def __repr__(self) -> str:
        return "Augment(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None = None, drop_last: bool = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x[idx], y[idx])`` mini-batches; with ``shuffle`` a permutation from ``generator`` (required)."""
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"batches: {n} inputs but {y.shape[0]} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        dev = _gen_device(generator)
        order = torch.randperm(n, generator=generator, device=dev).to(x.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        if order is None:
            yield x[i:i + batch_size], y[i:i + batch_size]
        else:
            idx = order[i:i + batch_size]
            yield x[idx], y[idx.to(y.device)]
