"""The quantization metadata as words in memory: the per-segment ranges of an affine memory format.

An affine memory (:class:`~.quantization.QuantScheme`) keeps one :class:`~.quantization.QuantContext` per segment
(per tensor, output channel or group, :mod:`.layout`) beside its codes. On an accelerator those ranges sit in
memory too, where bit errors reach them; this module defines them as words.

Word format. Each value is stored as the IEEE bits of the scheme's compute dtype: a float32 value is one 32-bit word
(its ``int32`` bit pattern, bit 0 = the mantissa's LSB, bit 31 = the sign); a float64 value (32-bit codes) is two
32-bit words, its low half first. Per segment ``s`` the stored fields are those the decoder reads per segment:

* asymmetric schemes (RQuant): ``lo``, ``hi`` (the range ``[min, max]``; the step ``(1 + eps) / L`` on the [-1, 1]
  scale is a constant of the format, the same for every segment, and not stored);
* symmetric schemes (Normal, clipping, ``quant:signed=true``): ``lo``, ``hi``, ``step`` (``-r``, ``r`` and ``r / L``).

There are no integer zero points: the zero point of an asymmetric segment is where ``[lo, hi]`` puts 0. Words are
segment-major: value ``f`` (in the order above) of segment ``s`` is value ``K * s + f`` of the region (``K`` fields),
so the words of one tensor's segments are contiguous. Float formats have no ranges: their metadata region is empty.

Image layout: the metadata region follows the data words and the stored check regions of a protection
(:mod:`.protection.base`): its word ``j`` has global index ``offset + j`` with ``offset`` = the image's word count
without it (``qm.image_words``, or ``N`` when unprotected), whether or not an attack lets errors reach it, so
adding it changes no other word's index. Protections cover the data words only.

Decoding a perturbed region is exact: every word is reinterpreted as the bits of its float (numpy's
``np.frombuffer(..., np.float32)`` of the same bits), and the codes decode with that context through the
reference path (:meth:`QuantScheme.decode` with ``reference=True``: clamps are ``min(max(t, lo), hi)``, NaN
propagating). A NaN or infinite range makes that segment's weights NaN or infinite (or clamped to an infinite
bound): the logits become non-finite and the evaluation counts those inputs as errors.
"""

from __future__ import annotations

import torch

from bitbench.kernels import from_pattern, to_pattern

from .quantization import QuantContext

__all__ = ["META_BITS", "MetadataRegion", "metadata_fields", "metadata_region", "metadata_offset"]

META_BITS = 32  # bits per metadata word


def metadata_fields(scheme) -> tuple[str, ...]:
    """The per-segment fields stored in memory (module docstring); ``()`` for a format without ranges."""
    if not getattr(scheme, "has_context", False):
        return ()
    return ("lo", "hi") if scheme.asymmetric else ("lo", "hi", "step")


def metadata_offset(qm) -> int:
    """Global index of the metadata region's first word: after the data words and the stored check words."""
    return int(getattr(qm, "image_words", qm.n_words))


def _values_to_words(v: torch.Tensor) -> torch.Tensor:
    """float32 / float64 values (1-D) -> int32 words (1 or 2 per value, low half first)."""
    v = v.contiguous()
    if v.dtype == torch.float32:
        return v.view(torch.int32).clone()
    if v.dtype == torch.float64:
        u = v.view(torch.int64)
        halves = torch.stack([u & 0xFFFFFFFF, (u >> 32) & 0xFFFFFFFF], 1).reshape(-1)
        return from_pattern(halves, torch.int32)
    raise TypeError(f"metadata values must be float32 or float64, got {v.dtype}")


def _words_to_values(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`_values_to_words`."""
    w = w.contiguous()
    if dtype == torch.float32:
        return w.view(torch.float32).clone()
    w = w.view(-1, 2)
    bits = w[:, 1].to(torch.int64) * (1 << 32) + to_pattern(w[:, 0])   # the 64-bit pattern (two's complement)
    return bits.view(torch.float64).clone()


class MetadataRegion:
    """The metadata words of an affine quantized memory ``qm`` (module docstring).

    Attributes:
        fields: the stored fields per segment (``('lo', 'hi')`` or ``('lo', 'hi', 'step')``).
        words: int32 ``[S * K * w]``: the clean words (``w`` = 1 for float32 contexts, 2 for float64).
        bits: 32 bits per word (all attackable).
        offset: global index of the first word in the memory image.
    """

    def __init__(self, qm):
        self.qm = qm
        self.fields = metadata_fields(qm.scheme)
        self.offset = metadata_offset(qm)
        self.bits = META_BITS
        ctx = qm.context
        if not self.fields or ctx is None:
            self.dtype = torch.float32
            self.per_value = 1
            self.words = torch.zeros(0, dtype=torch.int32, device=qm.codes.device)
            return
        self.dtype = ctx.lo.dtype
        self.per_value = 1 if self.dtype == torch.float32 else 2
        vals = torch.stack([getattr(ctx, f).reshape(-1) for f in self.fields], 1).reshape(-1)
        self.words = _values_to_words(vals).to(qm.codes.device)

    @property
    def n_words(self) -> int:
        return self.words.numel()

    @property
    def n_bits(self) -> int:
        return self.n_words * self.bits

    @property
    def words_per_segment(self) -> int:
        return len(self.fields) * self.per_value

    def segment_range(self, t: int) -> tuple[int, int]:
        """``(first, count)``: the region-local word range of tensor ``t``'s segments (contiguous)."""
        segs = self.qm.segments
        if segs.tensors is None:
            first, n = int(t), 1
        else:
            first, _, _, per_row = segs.tensors[t]
            rows = self.qm.lengths[t] // segs.tensors[t][1] if segs.tensors[t][1] else 0
            n = rows * per_row
        k = self.words_per_segment
        return first * k, n * k

    def word(self, segment: int, field: str, half: int = 0) -> int:
        """Region-local index of value ``field`` of ``segment`` (``half`` 1: the high word of a float64)."""
        return (segment * len(self.fields) + self.fields.index(field)) * self.per_value + half

    def context(self, words: torch.Tensor) -> QuantContext:
        """The context the memory decodes with when the region holds ``words`` (exact bit reinterpretation; the
        unstored asymmetric step stays the format's)."""
        if not self.fields:
            raise ValueError(f"format {self.qm.scheme.name} has no metadata (no ranges)")
        if words.dtype != torch.int32 or words.numel() != self.n_words:
            raise ValueError(f"words must be {self.n_words} int32 words, got {words.numel()} of {words.dtype}")
        vals = _words_to_values(words.reshape(-1), self.dtype).view(-1, len(self.fields))
        ctx = self.qm.context
        got = {f: vals[:, i].to(ctx.lo.device) for i, f in enumerate(self.fields)}
        return QuantContext(got["lo"], got["hi"], got.get("step", ctx.step))

    def nonfinite(self, words: torch.Tensor) -> int:
        """How many stored values the words decode to NaN or +-inf."""
        if not self.fields:
            return 0
        vals = _words_to_values(words.reshape(-1), self.dtype)
        return int((~torch.isfinite(vals)).sum().item())


def metadata_region(qm) -> MetadataRegion:
    """The metadata region of ``qm`` (empty for a float format)."""
    return MetadataRegion(qm)
