"""Bit operations on integer tensors (uint8, int8, int16, int32), on their two's-complement bit patterns.

Bit 0 is the least significant bit; for signed dtypes bit width-1 is the sign bit. ``bits`` (m) restricts an
operation to the m low bits where it applies (default: the whole word). Masks are a Python int (applied to every
word; the unsigned pattern or its signed reading) or an integer tensor broadcastable to x (same dtype not needed).
Inputs are never modified.
"""
from __future__ import annotations

import numbers

import torch

from ._common import (check_bits, check_dtype, check_same, check_tensor, from_pattern, int_pattern,
                      low_mask, mask_like, pattern_scalar, to_pattern)

__all__ = [
    "to_bits", "from_bits", "bit_and", "bit_or", "bit_xor", "flip_bits", "set_bits", "clear_bits", "popcount",
    "hamming_distance", "hamming_total", "msb_value", "msb_projection", "budget_projection", "flip_deltas",
    "flip_one_bit", "flippable", "first_per_group", "to_pattern", "from_pattern",
]


def to_bits(x: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """uint8 tensor [..., m] of 0/1: element [..., b] is bit b of x (bit 0 = LSB; m = bits, default the width)."""
    width = check_tensor(x, "x")
    m = check_bits(bits, width)
    shifts = torch.arange(m, dtype=x.dtype, device=x.device)
    # (x >> b) & 1 is bit b of the pattern also for signed x (arithmetic shift only fills bits above b).
    return ((x.unsqueeze(-1) >> shifts) & 1).to(torch.uint8)


def from_bits(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`to_bits`: 0/1 tensor [..., m] (m <= width; missing high bits are 0) -> tensor of dtype."""
    width = check_dtype(dtype)
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch.Tensor of 0/1 values; got {type(b).__name__}")
    if b.is_floating_point() or b.is_complex():
        raise TypeError(f"b must be an integer or bool tensor of 0/1 values; got dtype {b.dtype}")
    if b.dim() == 0 or not 1 <= b.shape[-1] <= width:
        raise ValueError(f"b must have shape [..., m] with 1 <= m <= {width} for {dtype}; got {tuple(b.shape)}")
    b64 = b.to(torch.int64)
    if b.dtype != torch.bool and b64.numel() and bool(((b64 != 0) & (b64 != 1)).any()):
        raise ValueError("b must contain only 0 and 1")
    shifts = torch.arange(b.shape[-1], dtype=torch.int64, device=b.device)
    return from_pattern((b64 << shifts).sum(-1), dtype)


def _mask_operand(x: torch.Tensor, mask, width: int, name: str = "mask"):
    """A mask as a Python scalar of x's dtype or a tensor of x's dtype (same bit pattern)."""
    if isinstance(mask, torch.Tensor):
        if mask.dtype == torch.bool or mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"{name} must be an integer tensor or an int; got dtype {mask.dtype}")
        check_same(x, mask, "x", name, dtype=False, shape=False)
        try:
            torch.broadcast_shapes(x.shape, mask.shape)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to x's shape "
                             f"{tuple(x.shape)}") from None
        return mask_like(mask, x, width, name)
    if isinstance(mask, numbers.Integral) and not isinstance(mask, bool):
        return pattern_scalar(int_pattern(mask, width, name), x.dtype)
    raise TypeError(f"{name} must be an int bit mask or an integer tensor; got {type(mask).__name__}")


def bit_and(x: torch.Tensor, mask) -> torch.Tensor:
    """x & mask (mask: int or integer tensor broadcastable to x)."""
    width = check_tensor(x, "x")
    return torch.bitwise_and(x, _mask_operand(x, mask, width))


def bit_or(x: torch.Tensor, mask) -> torch.Tensor:
    """x | mask."""
    width = check_tensor(x, "x")
    return torch.bitwise_or(x, _mask_operand(x, mask, width))


def bit_xor(x: torch.Tensor, mask) -> torch.Tensor:
    """x ^ mask."""
    width = check_tensor(x, "x")
    return torch.bitwise_xor(x, _mask_operand(x, mask, width))


def flip_deltas(x: torch.Tensor, bits: int | None = None, protected: int = 0) -> torch.Tensor:
    """int64 ``[n, m]``: the change of each word's integer value (as x's dtype reads it) when bit b is flipped.

    ``+2^b`` for a 0->1 flip, ``-2^b`` for 1->0; for signed (two's complement) dtypes the sign bit has weight
    ``-2^(width-1)``; 0 for the bits set in ``protected``. ``n = x.numel()`` (C order), m = bits."""
    width = check_tensor(x, "x")
    m = check_bits(bits, width)
    prot = int_pattern(protected, width, "protected")
    u = to_pattern(x.reshape(-1))
    b = torch.arange(m, dtype=torch.int64, device=x.device)
    q = from_pattern(u, x.dtype).to(torch.int64)
    flipped = _value(u.unsqueeze(1) ^ (1 << b), x.dtype)
    d = flipped - q.unsqueeze(1)
    keep = torch.tensor([not (prot >> i) & 1 for i in range(m)], dtype=torch.bool, device=x.device)
    return d * keep


def _value(u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int64 patterns -> int64 values as ``dtype`` reads them (two's complement for signed dtypes)."""
    width = check_dtype(dtype)
    if dtype in (torch.int8, torch.int16, torch.int32):
        return u - ((u >> (width - 1)) & 1) * (1 << width)
    return u


def flip_one_bit(x: torch.Tensor, bit: torch.Tensor) -> torch.Tensor:
    """x with bit ``bit[i]`` of element i flipped (``bit``: an integer tensor of x's shape, values in 0..width-1)."""
    width = check_tensor(x, "x")
    b = bit.to(device=x.device, dtype=torch.int64)
    if b.numel() and (int(b.min()) < 0 or int(b.max()) >= width):
        raise ValueError(f"bit indices must be in 0..{width - 1}")
    return from_pattern(to_pattern(x) ^ (torch.ones_like(b) << b), x.dtype)


def flip_bits(x: torch.Tensor, mask) -> torch.Tensor:
    """Flip the bits set in mask (x ^ mask)."""
    return bit_xor(x, mask)


def set_bits(x: torch.Tensor, mask) -> torch.Tensor:
    """Set the bits set in mask to 1 (x | mask)."""
    return bit_or(x, mask)


def clear_bits(x: torch.Tensor, mask) -> torch.Tensor:
    """Clear the bits set in mask to 0 (x & ~mask)."""
    width = check_tensor(x, "x")
    return torch.bitwise_and(x, torch.bitwise_not(torch.as_tensor(_mask_operand(x, mask, width), dtype=x.dtype,
                                                                  device=x.device)))


_LUT: dict = {}


def _lut(device) -> torch.Tensor:
    """int64 [256]: the number of set bits of each byte value (one table per device)."""
    lut = _LUT.get(device)
    if lut is None:
        lut = torch.tensor([bin(v).count("1") for v in range(256)], dtype=torch.int64, device=device)
        _LUT[device] = lut
    return lut


def _popcount_patterns(u: torch.Tensor, width: int) -> torch.Tensor:
    lut = _lut(u.device)
    count = lut[u & 0xFF]
    for k in range(1, width // 8):
        count = count + lut[(u >> (8 * k)) & 0xFF]
    return count


def popcount(x: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """int64 tensor: number of set bits among the m low bits of each element."""
    width = check_tensor(x, "x")
    m = check_bits(bits, width)
    return _popcount_patterns(to_pattern(x) & low_mask(m), width)


def _diff(a: torch.Tensor, b: torch.Tensor, bits, names=("a", "b")):
    width = check_tensor(a, names[0])
    check_tensor(b, names[1])
    check_same(a, b, names[0], names[1])
    m = check_bits(bits, width)
    return (to_pattern(a) ^ to_pattern(b)) & low_mask(m), width


def hamming_distance(a: torch.Tensor, b: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """int64 tensor of a's shape: number of differing bits (among the m low bits) per element."""
    d, width = _diff(a, b, bits)
    return _popcount_patterns(d, width)


def hamming_total(a: torch.Tensor, b: torch.Tensor, bits: int | None = None) -> int:
    """Total number of differing bits (among the m low bits of every element). One pass in the words' own dtype
    (xor, mask, a byte histogram): no int64 patterns, as it runs on the whole memory once per pattern."""
    width = check_tensor(a, "a")
    check_tensor(b, "b")
    check_same(a, b, "a", "b")
    m = check_bits(bits, width)
    d = torch.bitwise_xor(a, b)
    if m < width:  # low_mask(m) < 2^(width-1): the same value in the signed dtypes
        d = torch.bitwise_and(d, low_mask(m))
    counts = torch.bincount(d.contiguous().view(-1).view(torch.uint8), minlength=256)
    return int((counts * _lut(counts.device)).sum())


def msb_value(u: torch.Tensor) -> torch.Tensor:
    """For int64 patterns u in [0, 2^32): 2^(index of the highest set bit), 0 where u == 0."""
    s = u | (u >> 1)
    s = s | (s >> 2)
    s = s | (s >> 4)
    s = s | (s >> 8)
    s = s | (s >> 16)
    return s - (s >> 1)


def msb_projection(x_clean: torch.Tensor, x_perturbed: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """Codes that differ from x_clean in at most one bit per word: the most significant bit (among the m low
    bits) in which x_perturbed differs from x_clean is flipped; every other difference is undone."""
    d, _ = _diff(x_clean, x_perturbed, bits, ("x_clean", "x_perturbed"))
    return from_pattern(to_pattern(x_clean) ^ msb_value(d), x_clean.dtype)


def flippable(x: torch.Tensor, up=None, down=None, bits: int | None = None, protected: int = 0) -> torch.Tensor:
    """The bits of each word of x that may flip now (x's dtype and shape): its 0-bits set in ``up`` (0->1 flips
    allowed) and its 1-bits set in ``down`` (1->0 allowed), among the m low bits, never a ``protected`` bit.

    ``up`` / ``down``: None (every bit), an int mask for every word, or an integer tensor of x's shape (one mask per
    word, e.g. the cells of an error map); ``0`` forbids that direction (Rowhammer cells flip one way only)."""
    width = check_tensor(x, "x")
    m = check_bits(bits, width)
    keep = low_mask(m) & ~int_pattern(protected, width, "protected")
    u = to_pattern(x)

    def mask(v, name):
        if v is None:
            return low_mask(width)
        if isinstance(v, torch.Tensor):
            check_same(x, v, "x", name, dtype=False)
            return to_pattern(mask_like(v, x, width, name))
        return int_pattern(v, width, name)

    out = ((~u & mask(up, "up")) | (u & mask(down, "down"))) & keep
    return from_pattern(out, x.dtype)


def first_per_group(groups: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Of the candidates ``order`` (indices, best first), those that come first in their group: bool mask over
    ``order``. ``groups``: int64 group id of every index (e.g. the memory page of a word)."""
    if order.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=order.device)
    g = groups.reshape(-1)[order]
    uniq, inv = torch.unique(g, return_inverse=True)
    pos = torch.arange(order.numel(), device=order.device)
    first = torch.full((uniq.numel(),), order.numel(), dtype=torch.int64, device=order.device)
    first.scatter_reduce_(0, inv, pos, "amin")
    return first[inv] == pos


def budget_projection(x_clean: torch.Tensor, x_perturbed: torch.Tensor, eps: int, bits: int | None = None,
                      score: torch.Tensor | None = None, allowed: torch.Tensor | None = None,
                      groups: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``eps`` words whose codes changed most, one bit each; reset every other word to x_clean.

    Only words that differ from x_clean in their m low bits are candidates. They are ranked by ``score``
    (a real tensor of x's shape, higher first; e.g. the caller's |dequantized change|) if given, else by the value
    of their most significant changed bit; ties go to the lower (C-order) index. Each kept word gets only its most
    significant changed bit (as :func:`msb_projection`). At most eps words differ from x_clean in the result,
    each in exactly one bit. Deterministic.

    Constraints: ``allowed`` (x's dtype and shape, e.g. from :func:`flippable`) restricts the changes that count
    to its bits (a word keeps its most significant changed *allowed* bit); ``groups`` (int64 of x's shape) keeps at
    most one word per group, the best ranked (e.g. one flip per memory page)."""
    d, width = _diff(x_clean, x_perturbed, bits, ("x_clean", "x_perturbed"))
    if allowed is not None:
        check_same(x_clean, allowed, "x_clean", "allowed")
        d = d & to_pattern(allowed)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Integral) or eps < 0:
        raise ValueError(f"eps must be a non-negative int (number of words); got {eps!r}")
    v = msb_value(d).reshape(-1)
    cand = torch.nonzero(v, as_tuple=True)[0]  # ascending indices
    if score is not None:
        if not isinstance(score, torch.Tensor):
            raise TypeError(f"score must be a tensor of x's shape (or None); got {type(score).__name__}")
        if score.is_complex() or score.dtype == torch.bool:
            raise TypeError(f"score must be a real tensor; got dtype {score.dtype}")
        check_same(x_clean, score, "x_clean", "score", dtype=False)
        key = score.reshape(-1)[cand].to(torch.float64)
        if bool(torch.isnan(key).any()):
            raise ValueError("score is NaN for a changed word")
    else:
        key = v[cand]
    order = torch.sort(key, descending=True, stable=True).indices
    if groups is not None:
        if not isinstance(groups, torch.Tensor) or groups.is_floating_point() or groups.dtype == torch.bool:
            raise TypeError("groups must be an integer tensor of x's shape (a group id per word)")
        check_same(x_clean, groups, "x_clean", "groups", dtype=False)
        order = order[first_per_group(groups.reshape(-1)[cand], order)]
    keep = cand[order[: int(eps)]]
    u = to_pattern(x_clean).reshape(-1)
    u[keep] ^= v[keep]
    return from_pattern(u, x_clean.dtype).reshape(x_clean.shape)
