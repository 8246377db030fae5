"""Argument checking and two's-complement helpers shared by every kernel.

Integer tensors are handled by their bit pattern: a word of width w (8, 16 or 32) is the unsigned integer
u in [0, 2^w) whose bits are stored in memory; for signed dtypes u is the two's-complement pattern (bit w-1 is the
sign bit). Internally patterns are held in int64 tensors, which represent every u exactly.
"""
from __future__ import annotations

import math
import numbers

import torch

#: Supported dtypes and their word width in bits. m-bit unsigned codes with m <= 8 live in uint8.
DTYPE_WIDTH = {
    torch.uint8: 8,
    torch.int8: 8,
    torch.int16: 16,
    torch.int32: 32,
}
SIGNED = {torch.int8, torch.int16, torch.int32}
#: Float dtypes flipped as raw bits: the integer dtype of the same width whose words they are viewed as.
FLOAT_WORDS = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float8_e4m3fn: torch.uint8,
    torch.float8_e5m2: torch.uint8,
}
_ALLOWED = "torch.uint8, torch.int8, torch.int16, torch.int32"


def check_tensor(x, name: str = "x") -> int:
    """Check that ``x`` is a tensor of a supported integer dtype; return its word width."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype {_ALLOWED}; got {type(x).__name__}")
    width = DTYPE_WIDTH.get(x.dtype)
    if width is None:
        raise TypeError(f"{name} has unsupported dtype {x.dtype}; allowed: {_ALLOWED}")
    return width


def word_view(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself for an integer tensor; a float tensor (:data:`FLOAT_WORDS`) viewed as the integer words of its
    raw bits (no copy: the same memory)."""
    if isinstance(x, torch.Tensor) and x.dtype in FLOAT_WORDS:
        return x.view(FLOAT_WORDS[x.dtype])
    return x


def check_dtype(dtype, name: str = "dtype") -> int:
    width = DTYPE_WIDTH.get(dtype)
    if width is None:
        raise TypeError(f"{name} {dtype!r} is not supported; allowed: {_ALLOWED}")
    return width


def check_same(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str, *, dtype: bool = True,
               shape: bool = True) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b} is on device {b.device} but {name_a} is on {a.device}; "
                         "tensors must be on the same device")
    if dtype and a.dtype != b.dtype:
        raise TypeError(f"{name_b} has dtype {b.dtype} but {name_a} has dtype {a.dtype}; dtypes must match")
    if shape and a.shape != b.shape:
        raise ValueError(f"{name_b} has shape {tuple(b.shape)} but {name_a} has shape {tuple(a.shape)}; "
                         "shapes must match")


def check_bits(bits, width: int, name: str = "bits") -> int:
    """Number of attackable low bits m: default ``width``; must be an int in 1..width."""
    if bits is None:
        return width
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"{name} must be an int in 1..{width} (or None for all {width} bits); got {bits!r}")
    bits = int(bits)
    if not 1 <= bits <= width:
        raise ValueError(f"{name}={bits} is outside 1..{width} for a {width}-bit dtype")
    return bits


def check_rate(p, name: str) -> float:
    """A bit error rate: a real number in [0, 1] (not NaN)."""
    if isinstance(p, torch.Tensor):
        if p.numel() != 1:
            raise TypeError(f"{name} must be a number in [0, 1]; got a tensor of shape {tuple(p.shape)}")
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1]; got {type(p).__name__}")
    p = float(p)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p!r} is not a rate in [0, 1]")
    return p


def check_uint(v, name: str, limit_bits: int) -> int:
    """A non-negative Python integer below 2^limit_bits."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2^{limit_bits}); got {v!r}")
    v = int(v)
    if v < 0:
        raise ValueError(f"{name}={v} is negative; it must be in [0, 2^{limit_bits})")
    if v >> limit_bits:
        raise ValueError(f"{name}={v} is too large; it must be in [0, 2^{limit_bits})")
    return v


def threshold(p: float) -> int:
    """Integer flip threshold T(p) = min(floor(p * 2^32), 2^32) (exact in double precision)."""
    p = check_rate(p, "p")
    return min(int(math.floor(p * 4294967296.0)), 1 << 32)


def thresholds(p) -> torch.Tensor:
    """Elementwise :func:`threshold` of a float array/tensor of rates (int64 tensor; every rate in [0, 1])."""
    t = torch.as_tensor(p, dtype=torch.float64)
    if t.numel() and (bool(torch.isnan(t).any()) or float(t.min()) < 0 or float(t.max()) > 1):
        raise ValueError("rates must be numbers in [0, 1]")
    return torch.floor(t * 4294967296.0).clamp_(max=4294967296.0).to(torch.int64)


def low_mask(bits: int) -> int:
    return (1 << bits) - 1


def int_pattern(mask, width: int, name: str = "mask") -> int:
    """A Python-int bit mask as a pattern in [0, 2^width).

    Accepts the unsigned pattern (0 .. 2^width-1) or its signed reading (-2^(width-1) .. -1)."""
    if isinstance(mask, bool) or not isinstance(mask, numbers.Integral):
        raise TypeError(f"{name} must be an int bit mask or an integer tensor; got {type(mask).__name__}")
    mask = int(mask)
    if not -(1 << (width - 1)) <= mask < (1 << width):
        raise ValueError(f"{name}={mask} does not fit a {width}-bit word; allowed: "
                         f"{-(1 << (width - 1))} .. {(1 << width) - 1}")
    return mask & low_mask(width)


def pattern_scalar(pattern: int, dtype: torch.dtype) -> int:
    """The Python int of ``dtype`` whose bit pattern is ``pattern`` (in [0, 2^width))."""
    width = DTYPE_WIDTH[dtype]
    if dtype in SIGNED and pattern >> (width - 1):
        return pattern - (1 << width)
    return pattern


def to_pattern(x: torch.Tensor) -> torch.Tensor:
    """int64 tensor of the unsigned bit patterns of ``x`` (values in [0, 2^width))."""
    width = DTYPE_WIDTH[x.dtype]
    u = x.to(torch.int64)
    if x.dtype in SIGNED:
        u = u & low_mask(width)
    return u


def from_pattern(u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`to_pattern`: int64 patterns in [0, 2^width) -> tensor of ``dtype``."""
    width = DTYPE_WIDTH[dtype]
    if dtype in SIGNED:
        u = u - ((u >> (width - 1)) & 1) * (1 << width)
    return u.to(dtype)


def mask_tensor(mask: torch.Tensor, x: torch.Tensor, width: int, name: str) -> torch.Tensor:
    """A per-word integer mask tensor of x's shape as a tensor of x's dtype with the same bit pattern."""
    if mask.dtype == torch.bool or mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"{name} must be an integer tensor (a bit mask per word); got dtype {mask.dtype}")
    check_same(x, mask, "x", name, dtype=False)
    return mask_like(mask, x, width, name)


def mask_like(mask: torch.Tensor, x: torch.Tensor, width: int, name: str) -> torch.Tensor:
    """An integer mask tensor as x's dtype with the same low ``width`` bits (values must fit a word)."""
    if mask.dtype == x.dtype:
        return mask
    m64 = mask.to(torch.int64)
    if m64.numel():
        lo, hi = int(m64.min()), int(m64.max())
        if lo < -(1 << (width - 1)) or hi >= (1 << width):
            raise ValueError(f"{name} has values outside a {width}-bit word ({lo} .. {hi})")
    return from_pattern(m64 & low_mask(width), x.dtype)
