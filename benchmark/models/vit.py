"""A small vision transformer (Dosovitskiy et al. 2021) for MNIST/CIFAR-size images."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from bitbench.configs.errors import UsageError

from .layers import Normalize

__all__ = ["ViT", "TransformerBlock", "VIT_NORMS"]

VIT_NORMS = {
    "rln": "reparameterized layer norm, scale = 1 + weight (defenses.norms.ReparamLayerNorm; for weight clipping)",
    "ln": "layer norm (torch.nn.LayerNorm, scale = weight)",
}


def _layer_norm(kind: str, dim: int) -> nn.LayerNorm:
    if kind == "ln":
        return nn.LayerNorm(dim)
    from bitbench.defenses.norms import ReparamLayerNorm

    return ReparamLayerNorm(dim)


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (MLP: linear - GELU - linear).
    The attention is ``nn.MultiheadAttention`` (its packed ``in_proj_weight`` [3*dim, dim] and ``out_proj``)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, norm: str):
        super().__init__()
        self.norm1 = _layer_norm(norm, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = _layer_norm(norm, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision transformer: patch embedding, learned positions, pre-norm attention blocks, mean-pooled head.

    The image (zero-padded to a multiple of ``patch``) is cut into patch x patch squares, each embedded by a
    strided convolution into ``dim`` features, plus learned position embeddings (a parameter, so part of the
    quantized memory); ``depth`` blocks of ``heads``-head self-attention and a GELU MLP of ``mlp_ratio * dim``
    hidden units follow, then a final layer norm, the mean over the tokens (global average pooling, which learns
    better than a class token from few images) and a linear classifier. Initialization: torch's defaults for the
    weights (uniform in +-1/sqrt(fan_in); Xavier uniform for the attention's input projection), zero biases,
    position embeddings truncated normal with std 0.02. At the defaults on 28 px digits: 16 patches, 71,818
    parameters for 10 classes.

    Args:
        num_classes: output classes.
        in_channels: image channels.
        image_size: image side in pixels (square images).
        patch: patch side in pixels.
        dim: embedding width (divisible by heads).
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden units per embedding feature.
        norm: 'rln' (reparameterized layer norm, scale = 1 + weight: survives weight clipping) or 'ln'.
        mean: per-channel mean of a fixed whitening layer (with std), or none.
        std: per-channel std of the whitening layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch: int = 7,
                 dim: int = 64, depth: int = 2, heads: int = 4, mlp_ratio: int = 2, norm: str = "rln",
                 mean=None, std=None):
        super().__init__()
        norm = (norm or "rln").lower()
        if norm not in VIT_NORMS:
            raise UsageError(f"ViT: unknown norm {norm!r}; choose one of {list(VIT_NORMS)}")
        for k, v in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads), ("mlp_ratio", mlp_ratio)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"ViT: {k} must be a positive integer, got {v!r}")
        if dim % heads:
            raise UsageError(f"ViT: dim ({dim}) must be divisible by heads ({heads})")
        side = math.ceil(image_size / patch)
        self.pad = side * patch - image_size
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio * dim, norm) for _ in range(depth)])
        self.norm = _layer_norm(norm, dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default weight initialization, zero biases, position embeddings N(0, 0.02) cut at 2 std.
        Uses the global RNG: `build_model(seed=...)` calls it inside a seeded fork."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.MultiheadAttention, nn.LayerNorm)):
                m._reset_parameters() if isinstance(m, nn.MultiheadAttention) else m.reset_parameters()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.pad:
            x = nn.functional.pad(x, (0, self.pad, 0, self.pad))
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed      # N, patches, dim
        return self.head(self.norm(self.blocks(x)).mean(1))
