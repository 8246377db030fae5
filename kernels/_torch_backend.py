"""Torch reference backend: Philox4x32-10 on int64 tensors and the random flip mask.

This is the oracle for every other backend (see docs/patterns.md). It runs on any device
torch supports. uint32 values are held in int64 tensors; the 32x32 -> 64 bit products are formed from 16-bit
limbs of the (constant) multiplier so that no intermediate exceeds 2^49.
"""
from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85

#: Words processed per chunk: on the CPU small enough that the int64 temporaries stay in cache, on GPUs large
#: enough to amortize kernel launches (a few hundred MB of temporaries at most).
CHUNK = 1 << 16
CHUNK_CUDA = 1 << 22


def _mulhilo(a: torch.Tensor, m: int):
    """(hi, lo) 32-bit halves of a * m for int64 tensor a in [0, 2^32) and a 32-bit constant m."""
    p0 = a * (m & 0xFFFF)            # < 2^48
    p1 = a * (m >> 16)               # < 2^48
    s = p0 + ((p1 & 0xFFFF) << 16)   # < 2^49
    return (s >> 32) + (p1 >> 16), s & M32


def _rounds(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds; counters are int64 tensors in [0, 2^32), keys ints or broadcastable tensors."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & M32
        k1 = (k1 + PHILOX_W1) & M32
    return c0, c1, c2, c3


def philox4x32_10(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 (reference): counter [..., 4], key [..., 2] (broadcastable), uint32 values held in int64
    tensors (any integer dtype is accepted and read modulo 2^32) -> int64 tensor [..., 4] of uint32 values."""
    if not isinstance(counter, torch.Tensor) or not isinstance(key, torch.Tensor):
        raise TypeError("counter and key must be integer torch.Tensors (uint32 values, e.g. in int64)")
    for name, t, k in (("counter", counter, 4), ("key", key, 2)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor; got dtype {t.dtype}")
        if t.dim() == 0 or t.shape[-1] != k:
            raise ValueError(f"{name} must have shape [..., {k}]; got {tuple(t.shape)}")
    if counter.device != key.device:
        raise ValueError(f"key is on {key.device} but counter is on {counter.device}")
    c = counter.to(torch.int64) & M32
    k = key.to(torch.int64) & M32
    out = _rounds(c[..., 0], c[..., 1], c[..., 2], c[..., 3], k[..., 0], k[..., 1])
    return torch.stack(torch.broadcast_tensors(*out), dim=-1)


def _bit_numbers(n: int, device, attack: int, offset: int, seed: int):
    """Yield (b, u) for every attackable bit b of ``attack``: u (int64 [n]) is the Philox number that decides bit b
    of words offset .. offset+n-1 (group g = b // 4 of counter (word index, g), lane b % 4)."""
    k0, k1 = seed & M32, seed >> 32
    idx = offset + torch.arange(n, dtype=torch.int64, device=device)
    c0, c1 = idx & M32, idx >> 32
    zero = torch.zeros_like(c0)
    for g in range((attack.bit_length() + 3) // 4):
        if not (attack >> (4 * g)) & 0xF:
            continue  # every bit of this group is protected: its numbers are never used
        outs = _rounds(c0, c1, torch.full_like(c0, g), zero, k0, k1)
        for k in range(4):
            b = 4 * g + k
            if (attack >> b) & 1:
                yield b, outs[k]


def flip_mask_patterns(xu: torch.Tensor, prot: torch.Tensor | None, attack: int, offset: int, seed: int,
                       t01: int, t10: int) -> torch.Tensor:
    """Xor mask (int64 patterns) for flat int64 patterns ``xu`` of words offset .. offset+n-1.

    ``attack`` is the constant attackable-bit mask (low m bits minus the constant protected bits);
    ``prot`` an optional int64 per-word protected mask (patterns)."""
    mask = torch.zeros_like(xu)
    for b, u in _bit_numbers(xu.numel(), xu.device, attack, offset, seed):
        bit = ((xu >> b) & 1).bool()
        mask |= (u < torch.where(bit, t10, t01)).to(torch.int64) << b
    mask &= attack
    if prot is not None:
        mask &= ~prot
    return mask


def threshold_mask_patterns(xu: torch.Tensor, t01: torch.Tensor, t10: torch.Tensor, attack: int, offset: int,
                            seed: int) -> torch.Tensor:
    """Xor mask (int64 patterns) with per-bit thresholds ``t01``/``t10`` (int64 [n, m], m = attack.bit_length())
    for flat int64 patterns ``xu`` of words offset .. offset+n-1: the same Philox numbers as
    :func:`flip_mask_patterns`, compared bit by bit with the word's own thresholds."""
    mask = torch.zeros_like(xu)
    for b, u in _bit_numbers(xu.numel(), xu.device, attack, offset, seed):
        bit = ((xu >> b) & 1).bool()
        mask |= (u < torch.where(bit, t10[:, b], t01[:, b])).to(torch.int64) << b
    return mask & attack


def flip(x: torch.Tensor, out: torch.Tensor, prot: torch.Tensor | None, attack: int, offset: int, seed: int,
         t01: int, t10: int, mask_only: bool) -> None:
    """Write x ^ mask (or the mask) into ``out``; x, out, prot are contiguous, same dtype/shape/device."""
    from ._common import from_pattern, to_pattern

    xf, of = x.reshape(-1), out.view(-1)
    pf = prot.reshape(-1) if prot is not None else None
    n = xf.numel()
    chunk = CHUNK if x.device.type == "cpu" else CHUNK_CUDA
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xu = to_pattern(xf[s:e])
        pu = to_pattern(pf[s:e]) if pf is not None else None
        mask = flip_mask_patterns(xu, pu, attack, offset + s, seed, t01, t10)
        of[s:e] = from_pattern(mask if mask_only else xu ^ mask, x.dtype)
