"""A small GPT-style causal language model (decoder-only transformer) over byte tokens."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitbench.configs.errors import UsageError

from .vit import VIT_NORMS, _layer_norm

__all__ = ["GPT", "CausalSelfAttention", "GPTBlock"]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions 0..t: one linear layer ``qkv`` [3*dim, dim] for
    queries, keys and values, scaled dot-product attention with a causal mask, and the output projection ``proj``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)         # B, heads, T, d/heads
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GPTBlock(nn.Module):
    """Pre-norm decoder block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (MLP: linear - GELU - linear)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, norm: str):
        super().__init__()
        self.norm1 = _layer_norm(norm, dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.norm2 = _layer_norm(norm, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """GPT-style causal language model over byte tokens (defaults: 4 blocks of width 128, 875,520 parameters)

    Token and learned position embeddings, ``depth`` pre-norm decoder blocks (causal ``heads``-head self-attention, GELU MLP of ``mlp_ratio * width`` units), a final layer norm and a linear
    head giving next-token logits ``[N, T, vocabulary]`` for token ids ``[N, T]`` (T <= ``context``).

    Every parameter is in the quantized memory: both embeddings, the attention's ``qkv`` and ``proj``, the MLPs,
    the layer norms (reparameterized by default, scale = 1 + weight, so weight clipping bounds only its deviation
    from 1) and the head (not tied to the embedding: a bit error in one is not an error in the other).
    Initialization (GPT-2's): linear and embedding weights normal with std 0.02, the residual projections (``proj``
    and the MLP's second layer) 0.02 / sqrt(2 * depth), zero biases. The summed embeddings are multiplied by the
    constant sqrt(width) (as in Vaswani et al.): the residual stream starts at unit scale while the embedding
    weights stay small (clipping at w_max = 0.1 leaves them alone); unscaled, byte-level training sits on the
    unigram plateau (loss 3.0) for hundreds of steps. At the defaults with 256 byte tokens: 875,520 parameters.

    Args:
        num_classes: vocabulary size (from the dataset: 256 byte tokens).
        width: embedding width (divisible by heads).
        depth: number of decoder blocks.
        heads: attention heads.
        context: the longest input (position embeddings).
        mlp_ratio: MLP hidden units per embedding feature.
        norm: 'rln' (reparameterized layer norm, scale = 1 + weight: survives weight clipping) or 'ln'.
    """

    def __init__(self, num_classes: int = 256, width: int = 128, depth: int = 4, heads: int = 4, context: int = 128,
                 mlp_ratio: int = 4, norm: str = "rln"):
        super().__init__()
        norm = (norm or "rln").lower()
        if norm not in VIT_NORMS:
            raise UsageError(f"GPT: unknown norm {norm!r}; choose one of {list(VIT_NORMS)}")
        for k, v in (("num_classes", num_classes), ("width", width), ("depth", depth), ("heads", heads),
                     ("context", context), ("mlp_ratio", mlp_ratio)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"GPT: {k} must be a positive integer, got {v!r}")
        if width % heads:
            raise UsageError(f"GPT: width ({width}) must be divisible by heads ({heads})")
        self.context = context
        self.embed_scale = math.sqrt(width)
        self.tok_embed = nn.Embedding(num_classes, width)
        self.pos_embed = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[GPTBlock(width, heads, mlp_ratio * width, norm) for _ in range(depth)])
        self.norm = _layer_norm(norm, width)
        self.head = nn.Linear(width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialization (see the class doc); norms: their own reset. Uses the global RNG:
        `build_model(seed=...)` calls it inside a seeded fork."""
        depth = len(self.blocks)
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * depth) if name.endswith(("attn.proj", "mlp.2")) else 0.02
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
            raise UsageError(f"GPT: expected token ids of shape [N, T] (int64), got {x.dtype} {list(x.shape)}")
        t = x.shape[1]
        if t > self.context:
            raise UsageError(f"GPT: windows of {t} tokens exceed the model's context of {self.context} positions; "
                             f"build it with context >= {t} (gpt:context={t}) or use shorter windows "
                             f"(--dataset text:context={self.context})")
        h = (self.tok_embed(x) + self.pos_embed(torch.arange(t, device=x.device))) * self.embed_scale
        return self.head(self.norm(self.blocks(h)))
