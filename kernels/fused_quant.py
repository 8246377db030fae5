"""The C accelerator of the quantization schemes (``bitbench.defenses.QuantScheme``): encode, decode and the
per-segment min/max of flat float32 CPU memories, one vectorized pass each.

It declares what it handles, :func:`supports`, checked on the scheme's fields: the formula family, the rounding
mode (a :class:`Rounding`, passed to C as an enum value; a mode C does not know is refused, never replaced), the
code dtype (uint8, int8, int16, holding codes as their own values) and the compute dtype (float32). Every other scheme, device or dtype runs the
scheme's torch path, which gives the same bits (tested). Segment ``s`` is ``[starts[s], starts[s+1])`` of the flat
arrays; a context has per-segment ``lo``, ``hi``, ``step`` (float32 ``[S]``).
"""

from __future__ import annotations

import enum
import os

import torch

from . import _c_backend

__all__ = ["Rounding", "Family", "supports", "encode", "decode", "segment_minmax", "fused_available"]


class Rounding(enum.IntEnum):
    """How an encoded value ``x`` (after the offset) becomes an integer code."""

    NEAREST_EVEN = 0  #: round to nearest, ties to even
    TRUNCATE = 1      #: the cast to the integer type: toward zero (offset codes: x >= 0, so floor)


class Family(enum.IntEnum):
    """The formula families of the quantization module (its docstring has the formulas)."""

    SYMMETRIC = 0
    ASYMMETRIC = 1


_FAMILIES = {"symmetric": Family.SYMMETRIC, "asymmetric": Family.ASYMMETRIC}
_ROUNDINGS = (Rounding.NEAREST_EVEN, Rounding.TRUNCATE)  # the modes quant_cpu.c implements
_CODE_DTYPES = (torch.uint8, torch.int8, torch.int16)


def fused_available() -> bool:
    """The C extension is built and not switched off (``BITBENCH_FUSED_QUANT=0``)."""
    return _c_backend.available() and os.environ.get("BITBENCH_FUSED_QUANT", "1") != "0"


def supports(scheme) -> bool:
    """Whether the C path computes ``scheme`` (fields used: ``family``, ``rounding_mode``, ``dtype``, ``native``
    (codes stored as the container's own value), ``compute_dtype``, ``center``, ``code_min``, ``code_max``).
    Any number of segments (per tensor, channel or group) is handled."""
    return (fused_available() and getattr(scheme, "family", None) in _FAMILIES
            and getattr(scheme, "rounding_mode", None) in _ROUNDINGS
            and getattr(scheme, "dtype", None) in _CODE_DTYPES
            and getattr(scheme, "native", False) is True
            and getattr(scheme, "compute_dtype", None) == torch.float32)


def _ok(*ts: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.is_contiguous() for t in ts)


def _ctx_ok(ctx, nseg: int) -> bool:
    return all(t.dtype == torch.float32 and t.shape == (nseg,) and _ok(t) for t in (ctx.lo, ctx.hi, ctx.step))


def encode(scheme, w: torch.Tensor, starts: torch.Tensor, ctx, codes: torch.Tensor,
           deq: torch.Tensor | None = None) -> bool:
    """Codes of ``w`` (float32) into ``codes`` and, with ``deq`` (may be ``w`` itself), the decoded values, in one
    pass. Returns False (doing nothing) when not applicable."""
    if not supports(scheme) or w.dtype != torch.float32 or codes.dtype != scheme.dtype:
        return False
    nseg = starts.numel() - 1
    if starts.dtype != torch.int64 or not _ok(w, codes, starts) or not _ctx_ok(ctx, nseg):
        return False
    if deq is not None and (deq.dtype != torch.float32 or not _ok(deq) or deq.numel() != w.numel()):
        return False
    # the C loop always writes the decoded values (one vectorized pass); without deq they go to scratch
    _c_backend.encode_f32(w, starts, int(_FAMILIES[scheme.family]), ctx, int(scheme.rounding_mode),
                          scheme.center, scheme.code_min, scheme.code_max, codes,
                          deq if deq is not None else torch.empty_like(w))
    return True


def decode(scheme, codes: torch.Tensor, starts: torch.Tensor, ctx, out: torch.Tensor) -> bool:
    """Decoded values of ``codes`` into ``out`` (float32). Returns False when not applicable."""
    if not supports(scheme) or codes.dtype != scheme.dtype or out.dtype != torch.float32:
        return False
    nseg = starts.numel() - 1
    if starts.dtype != torch.int64 or not _ok(codes, starts, out) or not _ctx_ok(ctx, nseg):
        return False
    _c_backend.decode_f32(codes, starts, int(_FAMILIES[scheme.family]), ctx, scheme.center, scheme.code_min,
                          scheme.code_max, out)
    return True


def segment_minmax(w: torch.Tensor, starts: torch.Tensor, *, need_abs: bool):
    """Per-segment ``(lo, hi)`` (or ``max |w|`` with ``need_abs``) of a float32 CPU memory in one pass; None when
    not applicable (or a segment is empty)."""
    if not fused_available() or w.dtype != torch.float32 or not _ok(w, starts) or starts.dtype != torch.int64:
        return None
    nseg = starts.numel() - 1
    if nseg < 1:
        return None
    if need_abs:
        amax = torch.empty(nseg, dtype=torch.float32)
        return amax if _c_backend.minmax_f32(w, starts, None, None, amax) else None
    lo, hi = torch.empty(nseg, dtype=torch.float32), torch.empty(nseg, dtype=torch.float32)
    return (lo, hi) if _c_backend.minmax_f32(w, starts, lo, hi, None) else None
