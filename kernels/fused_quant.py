"""Fused quantize/dequantize of a flat float32 memory of segments (the C backend, CPU tensors only).

These are accelerators for ``defenses``' flat quantization path: each returns False (doing nothing) where it does
not apply (no C extension, not a CPU tensor, not float32 / 8-16-bit codes), and the caller then runs the torch
path, which gives the same bits. Segment ``s`` is ``[starts[s], starts[s+1])`` of the flat arrays.
"""

from __future__ import annotations

import os

import torch

from . import _c_backend

__all__ = ["fused_quant_dequant", "fused_dequant", "fused_segment_minmax", "fused_available"]

_OK_CODES = (torch.uint8, torch.int8, torch.int16)


def fused_available() -> bool:
    return _c_backend.available() and os.environ.get("BITBENCH_FUSED_QUANT", "1") != "0"


def _applies(*ts: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.is_contiguous() for t in ts)


def fused_quant_dequant(w: torch.Tensor, starts: torch.Tensor, mid: torch.Tensor, half: torch.Tensor,
                        lev: torch.Tensor, scale: torch.Tensor, *, rounding: bool, center: int,
                        codes: torch.Tensor, deq: torch.Tensor | None = None) -> bool:
    """``codes = T(clamp((w - mid)/half, -1, 1) * lev) + center`` and ``deq = (codes - center)*scale + mid`` per
    segment, in one pass (``deq`` may be ``w`` itself). Returns False when not applicable."""
    if not fused_available() or codes.dtype not in _OK_CODES or w.dtype != torch.float32:
        return False
    fl = (w, mid, half, lev, scale) + ((deq,) if deq is not None else ())
    if any(t.dtype != torch.float32 for t in fl) or not _applies(*fl, codes, starts) or starts.dtype != torch.int64:
        return False
    # the C loop always writes the dequantized values (one vectorized pass); without deq they go to scratch
    _c_backend.quant_dequant_f32(w, starts, mid, half, lev, scale, rounding, center, codes,
                                 deq if deq is not None else torch.empty_like(w))
    return True


def fused_dequant(codes: torch.Tensor, starts: torch.Tensor, mid: torch.Tensor, scale: torch.Tensor, *,
                  center: int, out: torch.Tensor) -> bool:
    """``out = (codes - center) * scale + mid`` per segment. Returns False when not applicable."""
    if not fused_available() or codes.dtype not in _OK_CODES:
        return False
    if any(t.dtype != torch.float32 for t in (mid, scale, out)) or not _applies(codes, starts, mid, scale, out):
        return False
    if starts.dtype != torch.int64:
        return False
    _c_backend.dequant_f32(codes, starts, mid, scale, center, out)
    return True


def fused_segment_minmax(w: torch.Tensor, starts: torch.Tensor, *, need_abs: bool):
    """Per-segment ``(lo, hi)`` (or ``max |w|`` with ``need_abs``) of a float32 CPU memory in one pass; None when
    not applicable (or a segment is empty)."""
    if not fused_available() or w.dtype != torch.float32 or not _applies(w, starts) or starts.dtype != torch.int64:
        return None
    nseg = starts.numel() - 1
    if nseg < 1:
        return None
    if need_abs:
        amax = torch.empty(nseg, dtype=torch.float32)
        return amax if _c_backend.minmax_f32(w, starts, None, None, amax) else None
    lo, hi = torch.empty(nseg, dtype=torch.float32), torch.empty(nseg, dtype=torch.float32)
    return (lo, hi) if _c_backend.minmax_f32(w, starts, lo, hi, None) else None
