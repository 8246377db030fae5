"""Reparameterized normalization layers for weight clipping (pure torch; no other project imports).

Weight clipping clamps every trainable parameter to [-w_max, w_max] after each step (w_max = 0.1 typical). A plain
group/batch norm with scale gamma = weight would then be capped at |gamma| <= w_max, crushing activations. These
layers use the effective scale ``gamma = 1 + weight`` with ``weight`` initialized to 0 (and ``bias`` to 0), so
clipping bounds only the *deviation* of the scale from 1. The forward pass equals the plain layer whose weight is
``weight + 1``.

The classes subclass their plain torch counterparts (same state-dict keys, same buffers, ``isinstance`` with
``nn.GroupNorm`` / ``nn.BatchNorm2d`` holds), and carry ``scale_offset = 1.0``: code that folds or inspects the
scale must use `effective_weight` (weight + scale_offset), never ``weight`` alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ReparamGroupNorm", "ReparamBatchNorm1d", "ReparamBatchNorm2d", "ReparamLayerNorm", "is_reparam_norm",
           "effective_weight"]


class ReparamGroupNorm(nn.GroupNorm):
    """Group norm with effective scale ``1 + weight`` (weight, bias initialized to 0)."""

    scale_offset = 1.0

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        if not affine:
            raise ValueError("ReparamGroupNorm needs affine=True (without it, use nn.GroupNorm)")
        super().__init__(num_groups, num_channels, eps=eps, affine=True, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.group_norm(input, self.num_groups, self.weight + self.scale_offset, self.bias, self.eps)


class ReparamLayerNorm(nn.LayerNorm):
    """Layer norm with effective scale ``1 + weight`` (weight, bias initialized to 0): the transformers' norm."""

    scale_offset = 1.0

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        if not elementwise_affine:
            raise ValueError("ReparamLayerNorm needs elementwise_affine=True (without it, use nn.LayerNorm)")
        super().__init__(normalized_shape, eps=eps, elementwise_affine=True, bias=bias, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight + self.scale_offset, self.bias, self.eps)


class _ReparamBatchNormMixin:
    """Batch norm with effective scale ``1 + weight``; running statistics behave exactly as in torch's batch norm
    (momentum, or a cumulative average when momentum is None; ``track_running_stats``)."""

    scale_offset = 1.0

    def _init_check(self) -> None:
        if not self.affine:
            raise ValueError(f"{type(self).__name__} needs affine=True (without it, use the plain batch norm)")

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        update = not self.training or self.track_running_stats
        return F.batch_norm(input,
                            self.running_mean if update else None,
                            self.running_var if update else None,
                            self.weight + self.scale_offset, self.bias, use_batch_stats, factor, self.eps)


class ReparamBatchNorm2d(_ReparamBatchNormMixin, nn.BatchNorm2d):
    """`nn.BatchNorm2d` with effective scale ``1 + weight`` (weight, bias initialized to 0)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        nn.BatchNorm2d.__init__(self, num_features, eps=eps, momentum=momentum, affine=affine,
                                track_running_stats=track_running_stats, device=device, dtype=dtype)
        self._init_check()


class ReparamBatchNorm1d(_ReparamBatchNormMixin, nn.BatchNorm1d):
    """`nn.BatchNorm1d` with effective scale ``1 + weight`` (weight, bias initialized to 0)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        nn.BatchNorm1d.__init__(self, num_features, eps=eps, momentum=momentum, affine=affine,
                                track_running_stats=track_running_stats, device=device, dtype=dtype)
        self._init_check()


def is_reparam_norm(module: nn.Module) -> bool:
    return isinstance(module, (ReparamGroupNorm, ReparamLayerNorm, _ReparamBatchNormMixin))


def effective_weight(module: nn.Module) -> torch.Tensor | None:
    """The scale a norm layer actually applies: ``weight + 1`` for the reparameterized layers, ``weight`` else."""
    w = getattr(module, "weight", None)
    if w is None:
        return None
    return w + getattr(module, "scale_offset", 0.0) if is_reparam_norm(module) else w
