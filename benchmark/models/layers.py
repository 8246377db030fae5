"""Shared building blocks: the fixed whitening layer, the normalization factory, weight initialization."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from bitbench.configs.errors import UsageError

__all__ = ["Normalize", "NORMS", "make_norm", "group_count", "init_weights", "scaled"]

NORMS = {
    "none": "no normalization (conv/linear layers keep their biases)",
    "bn": "batch norm (torch.nn.BatchNorm)",
    "gn": "group norm (torch.nn.GroupNorm; groups: see group_count)",
    "rbn": "reparameterized batch norm, scale = 1 + weight (defenses.norms.ReparamBatchNorm*)",
    "rgn": "reparameterized group norm, scale = 1 + weight (defenses.norms.ReparamGroupNorm); the paper's choice",
}


class Normalize(nn.Module):
    """Fixed per-channel whitening ``(x - mean) / std``, the model's first layer. mean/std are BUFFERS (saved in the
    state dict, moved with ``.to()``), never parameters: they are not trained, clipped, quantized or attacked."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(f"Normalize: mean ({mean_t.numel()}) and std ({std_t.numel()}) need the same, "
                             "non-zero length (one value per channel)")
        if not torch.all(std_t > 0):
            raise ValueError(f"Normalize: std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return (x - self.mean) / self.std
        if x.dim() == 2:  # flattened single-channel input (e.g. an MLP fed N,D)
            return (x - self.mean.view(1, -1)) / self.std.view(1, -1)
        raise ValueError(f"Normalize expects N,C,H,W (or N,D) input, got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.flatten().tolist()]}, " \
               f"std={[round(v, 4) for v in self.std.flatten().tolist()]}"


def group_count(channels: int, max_groups: int = 32) -> int:
    """Number of groups for group norm: the largest divisor of ``channels`` that is at most
    ``min(max_groups, channels // 2)`` (so every group has >= 2 channels; 1 group for a single channel).
    64 -> 32, 128 -> 32, 16 -> 8, 6 -> 3."""
    limit = max(1, min(max_groups, channels // 2))
    for g in range(limit, 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """A normalization layer for ``channels`` features: ``dims`` 2 for N,C,H,W maps, 1 for N,C vectors."""
    kind = (kind or "none").lower()
    if kind == "none":
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "gn":
        return nn.GroupNorm(group_count(channels), channels)
    if kind in ("rbn", "rgn"):
        from bitbench.defenses.norms import ReparamBatchNorm1d, ReparamBatchNorm2d, ReparamGroupNorm
        if kind == "rgn":
            return ReparamGroupNorm(group_count(channels), channels)
        return ReparamBatchNorm2d(channels) if dims == 2 else ReparamBatchNorm1d(channels)
    raise UsageError(f"unknown norm {kind!r}; choose one of {list(NORMS)}")


def check_norm(kind: str) -> str:
    kind = (kind or "none").lower()
    if kind not in NORMS:
        raise UsageError(f"unknown norm {kind!r}; choose one of {list(NORMS)}")
    return kind


def scaled(base: int, width: int | None, ref: int) -> int:
    """Channel count ``base`` scaled by ``width / ref`` (rounded, at least 1); ``width=None`` keeps ``base``."""
    if width is None:
        return base
    return max(1, int(round(base * width / ref)))


def init_weights(module: nn.Module) -> None:
    """Initialize a model: conv weights Kaiming-normal (fan-in, ReLU gain, keeps the signal scale through deep
    norm-free stacks), linear weights as torch's default (uniform in +-1/sqrt(fan_in)), all biases zero; norm layers
    get their own reset_parameters (scale 1, or for the reparameterized ones weight 0; bias 0; running stats reset).
    Uses the global RNG: `benchmark.models.build_model(seed=...)` calls it inside a seeded fork."""
    for m in module.modules():
        if isinstance(m, (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_parameters()
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)
