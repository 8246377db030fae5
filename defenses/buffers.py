"""A module's floating-point buffers as words in memory (batch-norm running statistics and the like).

The quantized memory holds the parameters only; a deployed model also keeps its buffers -- batch norm's
``running_mean`` / ``running_var`` (used in eval mode), a fixed whitening layer's ``mean`` / ``std`` -- in memory,
where bit errors reach them too. This module lays them out as words.

Which buffers: every floating-point buffer of the module in ``named_buffers()`` order (each once), flattened in C
order. Integer buffers (batch norm's ``num_batches_tracked``) are left out: the eval-mode forward does not read them.

Word format: a buffer is stored as the raw IEEE bits of its own dtype, exactly (no quantization, so the clean model
is unchanged): float32 as one 32-bit word per value (its ``int32`` bit pattern), float16 / bfloat16 as one 16-bit
word, float64 as two 32-bit words (low half first); bit 0 = LSB, every bit attackable. A flipped word decodes by
reinterpreting its bits, as the hardware would: an exponent flip can make a running variance huge, negative (a sign
flip), infinite or NaN.

Image layout: the buffer region follows the metadata region (:mod:`.metadata`): buffer word ``j`` has global index
``offset + j``, ``offset`` = the metadata region's offset + its word count; buffer ``b`` starts at
``offset + `` the words of the buffers before it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from bitbench.kernels import DTYPE_WIDTH, from_pattern, to_pattern, word_view

__all__ = ["BufferWords", "BufferRegion", "buffer_region"]


@dataclass
class BufferWords:
    """One buffer's words: ``name`` (as in ``named_buffers()``), ``words`` (the clean words, 1-D, an integer
    dtype), ``bits`` (per word), ``offset`` (global index of its first word), ``dtype`` / ``shape`` of the buffer."""

    name: str
    words: torch.Tensor
    bits: int
    offset: int
    dtype: torch.dtype
    shape: torch.Size

    @property
    def n_words(self) -> int:
        return self.words.numel()

    def values(self, words: torch.Tensor) -> torch.Tensor:
        """The buffer's values when it holds ``words`` (exact reinterpretation; the buffer's dtype and shape)."""
        if self.dtype == torch.float64:
            w = words.reshape(-1, 2)
            bits = w[:, 1].to(torch.int64) * (1 << 32) + to_pattern(w[:, 0])
            return bits.view(torch.float64).reshape(self.shape)
        return words.reshape(-1).contiguous().view(self.dtype).reshape(self.shape)


def _words_of(buf: torch.Tensor) -> tuple[torch.Tensor, int]:
    v = buf.detach().reshape(-1).contiguous()
    if v.dtype == torch.float64:
        u = v.view(torch.int64)
        halves = torch.stack([u & 0xFFFFFFFF, (u >> 32) & 0xFFFFFFFF], 1).reshape(-1)
        return from_pattern(halves, torch.int32), 32
    w = word_view(v)
    if w is v:
        raise TypeError(f"buffer dtype {buf.dtype} is not a float format with a word view")
    return w.clone(), DTYPE_WIDTH[w.dtype]


class BufferRegion:
    """The floating-point buffers of ``module`` as words from global index ``offset`` on (module docstring).

    ``entries``: one :class:`BufferWords` per buffer, in order; ``select(patterns)`` the entries whose names match
    fnmatch patterns."""

    def __init__(self, module: nn.Module, offset: int):
        self.offset = int(offset)
        self.entries: list[BufferWords] = []
        o = self.offset
        for name, buf in module.named_buffers():
            if not buf.is_floating_point():
                continue
            words, bits = _words_of(buf)
            self.entries.append(BufferWords(name, words, bits, o, buf.dtype, buf.shape))
            o += words.numel()
        self.end = o

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def n_words(self) -> int:
        return self.end - self.offset

    @property
    def n_bits(self) -> int:
        return sum(e.n_words * e.bits for e in self.entries)

    def select(self, patterns=None) -> list[BufferWords]:
        """The entries whose names match any fnmatch pattern (all for None)."""
        if patterns is None:
            return list(self.entries)
        return [e for e in self.entries if any(fnmatch.fnmatchcase(e.name, p) for p in patterns)]


def buffer_region(module: nn.Module, offset: int) -> BufferRegion:
    """The buffer region of ``module`` starting at global word ``offset``."""
    return BufferRegion(module, offset)
