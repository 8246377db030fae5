"""Quantization numerics (defenses/quantization.py) against independent references, on every backend.

Two references are written here, from the formulas of docs/numerics.md:

* ``real_codes``: the formulas in exact rational arithmetic (``fractions.Fraction``, epsilon exactly 1/1000) on the
  exact values of the float inputs. The implementation computes in float32 (float64 for 32-bit codes), so a code
  may differ by one where the exact value lies within the float error of a rounding boundary; elsewhere it must
  be equal.
* ``Emu``: the same formulas with every operation rounded to the compute dtype (round to nearest even), in the
  documented order (module docstring of defenses/quantization.py); the range parameters in binary64, rounded once. Codes, contexts and decoded values must equal
  it bit for bit, boundaries included, on the torch path and on the C path.

Grids hit every boundary: exact multiples and halves of the step (the float nearest to each, and its two float
neighbours), the clamp edges and beyond, negative off-grid values, constant and one-element tensors.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

from bitbench.defenses.quantization import (QuantContext, QuantScheme, Rounding, Segments, dequantize_tensor,
                                            normal, quantize_tensor, rquant, scheme_from_dict)
from bitbench.kernels import fused_quant

EPS = Fraction(1, 1000)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


# ------------------------------------------------------------------------------------- float emulation in Fraction

def rnd(q: Fraction, bits: int = 32) -> Fraction:
    """``q`` rounded to the nearest binary32 (``bits=32``) or binary64 value, ties to even (no overflow here)."""
    p, emin = (24, -126) if bits == 32 else (53, -1022)
    q = Fraction(q)
    if q == 0:
        return Fraction(0)
    s = -1 if q < 0 else 1
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, emin)
    scale = Fraction(2) ** (p - 1 - e)
    n, r = divmod(a * scale, 1)
    n = int(n)
    if r > Fraction(1, 2) or (r == Fraction(1, 2) and n % 2 == 1):
        n += 1
    return s * n / scale


def d64(q: Fraction) -> Fraction:
    """``q`` rounded to the nearest binary64 value (a Python float operation's result)."""
    return rnd(q, 64)


def half_even(x: Fraction) -> int:
    fl = math.floor(x)
    r = x - fl
    if r > Fraction(1, 2) or (r == Fraction(1, 2) and fl % 2 == 1):
        return fl + 1
    return fl


def clamp(x, a, b):
    return a if x < a else (b if x > b else x)


class Emu:
    """The documented operation order with correctly rounded float32 (float64 for 32-bit) operations."""

    def __init__(self, s: QuantScheme):
        self.s = s
        self.b = 64 if s.bits > 16 else 32
        self.L = s.levels
        self.c = s.center

    def r(self, q):
        return rnd(q, self.b)

    def const(self, v: float):
        return self.r(Fraction(v))  # a Python float (binary64) cast to the compute dtype

    def context(self, values):
        """The range parameters in binary64 (Python floats: the exact statistic, + the double nearest 0.001, the
        cap, / L; each correctly rounded to binary64), then rounded once to the compute dtype."""
        s, r = self.s, self.r
        eps = Fraction(0.001)  # the binary64 value of 0.001
        L = self.L
        if s.asymmetric:
            if s.range == "fixed":
                lo = self.const(-s.q_max if s.q_min is None else s.q_min)
                hi = self.const(s.q_max)
            else:
                lo, hi = min(values), max(values)
                if s.range == "clipped":
                    w = self.const(s.w_max)
                    lo, hi = clamp(lo, -w, w), clamp(hi, -w, w)
            return lo, hi, r(d64(d64(1 + eps) / L))
        if s.range == "fixed":
            q = self.const(s.q_max)
            return -q, q, r(d64(d64(Fraction(s.q_max) + eps) / L))
        r64 = d64(max(abs(v) for v in values) + eps)
        if s.range == "clipped":
            r64 = min(r64, Fraction(s.w_max))
        return -r(r64), r(r64), r(d64(r64 / L))

    def T(self, x):
        return half_even(x) if self.s.rounding == "round" else math.trunc(x)

    def encode(self, w, ctx):
        s, r = self.s, self.r
        lo, hi, step = ctx
        if s.asymmetric:
            span = r(hi - lo)
            live, div = (1, span) if span > 0 else (0, Fraction(1))
            y = r(r(r(r(w - lo) / div) * 2) - 1) * live
            v = clamp(y, Fraction(-1), Fraction(1))
        else:
            v = clamp(w, lo, hi)
        x = clamp(r(r(v / step) + self.c), s.code_min, s.code_max)
        return self.T(x)

    def decode(self, q, ctx):
        s, r = self.s, self.r
        lo, hi, step = ctx
        t = r((clamp(q, s.code_min, s.code_max) - self.c) * step)
        if s.asymmetric:
            t = clamp(t, Fraction(-1), Fraction(1))
            t = r(r(r(t + 1) / 2) * r(hi - lo))
            t = r(t + lo)
        return clamp(t, lo, hi)


def real_codes(values, s: QuantScheme):
    """Exact real formulas: (codes, x before T) per value."""
    L, c = s.levels, s.center
    if s.asymmetric:
        if s.range == "fixed":
            lo, hi = Fraction(-s.q_max if s.q_min is None else s.q_min), Fraction(s.q_max)
        else:
            lo, hi = min(values), max(values)
            if s.range == "clipped":
                W = Fraction(s.w_max)
                lo, hi = clamp(lo, -W, W), clamp(hi, -W, W)
        step = (1 + EPS) / L
        out = []
        for w in values:
            y = 2 * (w - lo) / (hi - lo) - 1 if hi > lo else Fraction(0)
            out.append(clamp(y, Fraction(-1), Fraction(1)) / step + c)
    else:
        if s.range == "fixed":
            rr, step = Fraction(s.q_max), (Fraction(s.q_max) + EPS) / L
        else:
            rr = max(abs(v) for v in values) + EPS
            if s.range == "clipped":
                rr = min(rr, Fraction(s.w_max))
            step = rr / L
        out = [clamp(w, -rr, rr) / step + c for w in values]
    xs = [clamp(x, Fraction(s.code_min), Fraction(s.code_max)) for x in out]
    return [half_even(x) if s.rounding == "round" else math.trunc(x) for x in xs], xs


# ---------------------------------------------------------------------------------------------- the scheme grid

def family_schemes():
    out = []
    for bits, signed in [(2, False), (4, False), (8, False), (8, True), (16, True)]:
        for rng, asym in [("fixed", False), ("adaptive", False), ("clipped", False), ("adaptive", True),
                          ("clipped", True), ("fixed", True)]:
            for rounding in ("round", "trunc"):
                kw = dict(bits=bits, signed=signed, range=rng, asymmetric=asym, rounding=rounding)
                if rng == "fixed":
                    kw.update(q_max=0.5, q_min=-0.25 if asym else None)
                if rng == "clipped":
                    kw.update(w_max=0.25)
                out.append(QuantScheme(**kw))
    return out


SCHEMES = family_schemes()


def nextafter32(v: float, d: float) -> float:
    return float(np.nextafter(np.float32(v), np.float32(d)))


def f32(v) -> float:
    return float(np.float32(v))


def boundary_grid(s: QuantScheme, anchors: list[float]) -> list[float]:
    """Anchor values (which fix the range) + the floats nearest every multiple and half of the step (in weight
    space) and their neighbours, + values beyond the range and off-grid negatives."""
    e = Emu(s)
    lo, hi, step = e.context([Fraction(f32(a)) for a in anchors])
    L = s.levels
    ks = range(-2 * L - 3, 2 * L + 4)
    if s.bits > 8:  # 16 bits: the ends, the middle and a sample in between
        rng = np.random.default_rng(s.bits)
        ks = sorted(set(list(range(-2 * L - 3, -2 * L + 40)) + list(range(-40, 41)) + list(range(2 * L - 40, 2 * L + 4))
                        + [int(k) for k in rng.integers(-2 * L, 2 * L, 200)]))
    vals = []
    for k in ks:
        t = Fraction(k, 2) * step  # k/2 steps from the center, in the scheme's inner scale
        w = (t + 1) / 2 * (hi - lo) + lo if s.asymmetric else t
        v = f32(float(w))
        vals += [v, nextafter32(v, math.inf), nextafter32(v, -math.inf)]
    width = float(hi - lo)
    vals += [float(lo) - width, float(hi) + width, float(lo) - 1e-3, f32(float(hi) * 1.5 + 0.1), -0.3333, -0.0071,
             -1e-6, 0.0, 1e-7]
    return anchors + vals


def memory_for(s: QuantScheme):
    """A flat memory of tensors: a boundary grid, constants (0 and not), one-element tensors, a clipped range that
    collapses (every value beyond w_max), a tiny-range tensor."""
    parts = [boundary_grid(s, [-0.2, 0.15]), [0.0] * 5, [0.3] * 3, [-0.7], [0.0], [0.6, 0.9, 0.7],
             [1e-3 * v for v in (-1.5, 0.25, 0.7, 1.0)]]
    return [torch.tensor(p, dtype=torch.float32) for p in parts]


_EMU_CACHE: dict = {}


def emulated(s: QuantScheme):
    if s not in _EMU_CACHE:
        e = Emu(s)
        out = []
        for t in memory_for(s):
            vals = [Fraction(v) for v in t.tolist()]
            ctx = e.context(vals)
            codes = [e.encode(v, ctx) for v in vals]
            out.append((ctx, codes, [e.decode(c, ctx) for c in codes]))
        _EMU_CACHE[s] = out
    return _EMU_CACHE[s]


@pytest.fixture(params=["torch", "c"])
def backend(request, monkeypatch):
    """The torch path, or the C path (required to be built under BITBENCH_REQUIRE_C=1)."""
    if request.param == "c":
        if not fused_quant.fused_available():
            if os.environ.get("BITBENCH_REQUIRE_C") == "1":
                pytest.fail("the C extension is required (BITBENCH_REQUIRE_C=1) but not built")
            pytest.skip("C extension not built")
        monkeypatch.setenv("BITBENCH_FUSED_QUANT", "1")
    else:
        monkeypatch.setenv("BITBENCH_FUSED_QUANT", "0")
    return request.param


# --------------------------------------------------------------------------------------------- known answers

@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_known_answers_bit_exact(scheme, backend):
    """Codes, contexts and decoded values equal the float emulation of the formulas bit for bit (flat memory of
    several tensors and tensor by tensor), on the torch path and on the C path."""
    if backend == "c":
        assert fused_quant.supports(scheme)  # the C path really runs
    tensors = memory_for(scheme)
    segs = Segments([t.numel() for t in tensors])
    flat = torch.cat(tensors)
    codes, ctx, _ = scheme.quantize(flat, segs)
    deq = torch.empty_like(flat)
    codes2, _, done = scheme.quantize(flat, segs, deq_out=deq)  # the fused quantize+decode pass
    assert torch.equal(codes, codes2)
    if not done:
        deq = scheme.decode(codes, ctx, segs)
    assert torch.equal(deq, scheme.decode(codes, ctx, segs))
    o = 0
    for t, w, (ectx, ecodes, edeq) in zip(range(len(tensors)), tensors, emulated(scheme)):
        n = w.numel()
        assert [Fraction(float(v)) for v in (ctx.lo[t], ctx.hi[t], ctx.step[t])] == list(ectx), (scheme, t)
        got = codes[o:o + n].tolist()
        assert got == ecodes, (scheme, t, [(i, a, b) for i, (a, b) in enumerate(zip(got, ecodes)) if a != b][:5])
        assert [Fraction(v) for v in deq[o:o + n].tolist()] == edeq, (scheme, t)
        c1, ctx1 = quantize_tensor(w, scheme)  # one tensor alone: the same
        assert c1.tolist() == ecodes and ctx1.equal(ctx[t:t + 1])
        assert torch.equal(dequantize_tensor(c1, ctx1, scheme), deq[o:o + n])
        o += n


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_codes_follow_the_exact_real_formulas(scheme):
    """Against the formulas in exact real arithmetic: equal wherever the exact value is not within the float
    error of a rounding boundary; one code off at most there; the ambiguous cases are few."""
    ambiguous = total = 0
    for w in memory_for(scheme):
        vals = [Fraction(v) for v in w.tolist()]
        ref, xs = real_codes(vals, scheme)
        got = quantize_tensor(w, scheme)[0].tolist()
        tol = 8 * 2.0 ** -23 * max(abs(float(x)) for x in xs + [Fraction(1)])
        for c, r, x in zip(got, ref, xs):
            total += 1
            frac = x - math.floor(x)
            dist = float(min(frac, 1 - frac)) if scheme.rounding == "trunc" else float(abs(frac - Fraction(1, 2)))
            if dist > tol:
                assert c == r, (scheme, float(x), c, r)
            else:
                ambiguous += 1
                assert abs(c - r) <= 1, (scheme, float(x), c, r)
    # the grid puts 3 values at each boundary: about 2/3 of them are ambiguous, nothing else is
    assert ambiguous <= 0.75 * total


# ---------------------------------------------------------------------------------------------- by hand

HAND = [
    # normal u8: step = 1.001/127 = 0.0078819; x = clamp(w, -1, 1)/step + 128, floor: -1.5 -> 1.127 -> 1;
    # -0.5 -> 64.56 -> 64; -0.001 -> 127.87 -> 127 (floor, not toward zero); 0 -> 128; 0.1 -> 140.69 -> 140;
    # 0.5 -> 191.44 -> 191; 1 -> 254.87 -> 254; 2 -> 254.
    (normal(8), [-1.5, -0.5, -0.001, 0.0, 0.1, 0.5, 1.0, 2.0], [1, 64, 127, 128, 140, 191, 254, 254]),
    # rquant u8 adaptive: lo = -0.5, hi = 1: y = 2(w + 0.5)/1.5 - 1 = -1, -2/3, -1/3, 0, 1; x = y/step + 128:
    # 1.13 -> 1, 43.42 -> 43, 85.71 -> 86, 128, 254.87 -> 255.
    (rquant(8), [-0.5, -0.25, 0.0, 0.25, 1.0], [1, 43, 86, 128, 255]),
    # u2 symmetric adaptive, trunc: r = 1 + 0.001, step = r, L = 1: x = w/1.001 + 2: -1 -> 1.001 -> 1;
    # -0.5 -> 1.5 -> 1; -0.0001 -> 1.9999 -> 1; 0 -> 2; 0.5 -> 2.5 -> 2; 1 -> 2.999 -> 2.
    (QuantScheme(bits=2, rounding="trunc"), [-1.0, -0.5, -0.0001, 0.0, 0.5, 1.0], [1, 1, 1, 2, 2, 2]),
    # s8 symmetric clipped at 0.25, round: r = min(1 + 0.001, 0.25) = 0.25 (the epsilon before the clip),
    # step = 0.25/127: -1 -> clamp -0.25 -> -127; 0.1 -> 50.8 -> 51; 0 -> 0; 0.25 -> 127.
    (QuantScheme(bits=8, signed=True, range="clipped", w_max=0.25), [-1.0, 0.1, 0.0, 0.25], [-127, 51, 0, 127]),
]


@pytest.mark.parametrize("scheme,values,expected", HAND, ids=[str(h[0]) for h in HAND])
def test_known_answer_by_hand(scheme, values, expected):
    w = torch.tensor(values, dtype=torch.float32)
    codes, ctx = quantize_tensor(w, scheme)
    assert codes.tolist() == expected
    assert codes.tolist() == real_codes([Fraction(v) for v in w.tolist()], scheme)[0]


def test_dequantization_clamps_to_the_range_examples():
    """Unsigned code 0 decodes to -r (not -128/127 r); a protected high bit set decodes into the range; signed
    -128 to -r; an asymmetric range to [min, max]."""
    s = QuantScheme(bits=8, range="fixed", q_max=1.0)
    ctx = s.context(torch.zeros(1))
    assert s.decode(torch.tensor([0, 1, 255], dtype=torch.uint8), ctx).tolist()[0] == -1.0
    assert s.decode(torch.tensor([255], dtype=torch.uint8), ctx).tolist() == [1.0]
    s4 = QuantScheme(bits=4)
    w = torch.tensor([-0.3, 0.1, 0.2])
    c, ctx4 = quantize_tensor(w, s4)
    r = float(ctx4.hi[0])
    d = dequantize_tensor(torch.tensor([0, 0b1111_0111, 0xFF, 0b0001_0000], dtype=torch.uint8), ctx4, s4)
    assert d.tolist() == [-r, r, r, r]
    s8 = QuantScheme(bits=8, signed=True)
    c, ctx8 = quantize_tensor(w, s8)
    assert dequantize_tensor(torch.tensor([-128], dtype=torch.int8), ctx8, s8).item() == -float(ctx8.hi[0])
    sa = rquant(8)
    c, cta = quantize_tensor(w, sa)
    d = dequantize_tensor(torch.tensor([0, 255], dtype=torch.uint8), cta, sa)
    assert d[0].item() == float(w.min()) and float(w.max()) - 2e-7 <= d[1].item() <= float(w.max())


CODE_SCHEMES = [s for s in SCHEMES if s.rounding == "round"] + [QuantScheme(bits=3), QuantScheme(bits=6,
                                                                                                    asymmetric=True)]


@pytest.mark.parametrize("scheme", CODE_SCHEMES, ids=str)
def test_every_code_decodes_inside_the_range(scheme, backend):
    """Every storage value (all 2^8 / 2^16 words, protected bits included) of every tensor decodes into its
    [lo, hi]; constant tensors decode to their constant under every code (with or without bit errors)."""
    tensors = memory_for(scheme)
    width = 16 if scheme.bits == 16 else 8
    if width == 16:
        words = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)
    else:
        words = torch.arange(256, dtype=torch.int32).to(scheme.dtype)
    for w in tensors:
        _, ctx = quantize_tensor(w, scheme)
        d = dequantize_tensor(words, ctx, scheme)
        lo, hi = float(ctx.lo[0]), float(ctx.hi[0])
        assert float(d.min()) >= lo and float(d.max()) <= hi, (scheme, w.tolist()[:3])
        if scheme.asymmetric and scheme.range != "fixed" and w.min() == w.max():
            # a constant tensor decodes to its constant (clipped: to the constant clamped to [-w_max, w_max])
            const = float(w[0]) if scheme.range == "adaptive" else max(-f32(scheme.w_max), min(f32(scheme.w_max),
                                                                                              float(w[0])))
            assert lo == hi and set(d.tolist()) == {const}
        if scheme.asymmetric and scheme.range == "clipped" and bool((w > scheme.w_max).all()):
            assert set(d.tolist()) == {f32(scheme.w_max)}  # a collapsed clipped range: its bound


def test_constant_tensor_codes_and_zero_bias_under_msb_flip():
    """A zero-initialized bias does not move under an MSB flip with RQuant (the original's behaviour), while a
    symmetric adaptive range keeps its 0.001 half-width."""
    z = torch.zeros(4)
    for s in (rquant(8), rquant(4, 0.1), QuantScheme(bits=8, signed=True, asymmetric=True)):
        c, ctx = quantize_tensor(z, s)
        assert set(c.tolist()) == {s.center}
        flipped = c ^ torch.tensor(1 << (s.bits - 1), dtype=torch.int32).to(c.dtype)
        assert dequantize_tensor(flipped, ctx, s).tolist() == [0.0] * 4
    s = QuantScheme(bits=8)
    c, ctx = quantize_tensor(z, s)
    assert float(ctx.hi[0]) == f32(0.001)
    assert abs(dequantize_tensor(c ^ 0x80, ctx, s)).max() <= f32(0.001)


def test_frozen_context():
    """Quantizing with a given (frozen) context uses its ranges, not the tensor's."""
    s = rquant(8)
    a = torch.tensor([-1.0, 0.0, 1.0])
    _, ctx = quantize_tensor(a, s)
    b = torch.tensor([-2.0, 0.5, 3.0])  # beyond the frozen range: clamped to it
    cb, ctxb = quantize_tensor(b, s, context=ctx)
    assert ctxb.equal(ctx)
    assert cb.tolist() == [1, quantize_tensor(torch.tensor([-1.0, 0.5, 1.0]), s)[0][1].item(), 255]
    assert dequantize_tensor(cb, ctx, s).tolist()[::2] == [-1.0, 1.0]
    with pytest.raises(ValueError, match="segments"):
        s.quantize(torch.zeros(4), Segments([2, 2]), context=ctx)


def test_fixed_asymmetric_range():
    s = QuantScheme(bits=8, range="fixed", asymmetric=True, q_min=-0.25, q_max=0.5)
    c, ctx = quantize_tensor(torch.tensor([-1.0, -0.25, 0.125, 0.5, 2.0]), s)
    assert (float(ctx.lo[0]), float(ctx.hi[0])) == (-0.25, 0.5)
    assert c.tolist() == [1, 1, 128, 255, 255]
    assert "fixed[-0.25,0.5]" in s.name


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_range_parameters_in_binary64_rounded_once(bits, backend):
    """The symmetric adaptive / clipped range and step: max|w| (exact) plus the binary64 epsilon, capped at w_max,
    divided by L, each a binary64 operation, then rounded once to float32 (as the original computes them with
    Python floats); the fixed and the asymmetric inner step likewise ((q_max + eps) / L, (1 + eps) / L). Checked in
    exact rational arithmetic on 2000 random tensors' maxima, with the codes on the torch and the C path; computing
    the step in float32 instead (a different rounding) would fail on some of them."""
    gen = np.random.default_rng(bits)
    maxima = [f32(v) for v in np.concatenate([gen.uniform(1e-4, 2.0, 1500), 10.0 ** gen.uniform(-6, 1, 500)])]
    L = 2 ** (bits - 1) - 1
    eps = Fraction(0.001)
    schemes = [QuantScheme(bits=bits), QuantScheme(bits=bits, range="clipped", w_max=0.3),
               QuantScheme(bits=bits, signed=True, range="clipped", w_max=1.0)]
    float32_step_differs = 0
    for s in schemes:
        if backend == "c" and s.native:
            assert fused_quant.supports(s)
        w = torch.tensor([[-m, m / 3, 0.25 * m] for m in maxima], dtype=torch.float32).reshape(-1)
        codes, ctx, _ = s.quantize(w, Segments([3] * len(maxima)))
        for i, m in enumerate(maxima):
            r64 = d64(Fraction(m) + eps)
            if s.range == "clipped":
                r64 = min(r64, Fraction(s.w_max))
            want_r, want_step = rnd(r64), rnd(d64(r64 / L))
            assert (Fraction(float(ctx.hi[i])), Fraction(float(ctx.step[i]))) == (want_r, want_step), (s, m)
            assert float(ctx.lo[i]) == -float(ctx.hi[i])
            r32 = rnd(rnd(Fraction(m)) + rnd(eps))
            if s.range == "clipped":
                r32 = min(r32, rnd(Fraction(s.w_max)))
            float32_step_differs += rnd(r32 / L) != want_step
        e = Emu(s)
        for i in range(0, len(maxima), 97):  # the codes follow the context (bit for bit, both backends)
            vals = [Fraction(v) for v in w[3 * i:3 * i + 3].tolist()]
            c = e.context(vals)
            assert s.code_values(codes[3 * i:3 * i + 3]).tolist() == [e.encode(v, c) for v in vals], (s, i)
    assert float32_step_differs > 0, "the float32 rounding of the step agrees everywhere: the test is not sensitive"
    for q_max in (1.0, 0.5, 0.1):
        fixed = QuantScheme(bits=bits, range="fixed", q_max=q_max)
        assert Fraction(float(fixed.context(torch.zeros(2)).step[0])) == rnd(d64(d64(Fraction(q_max) + eps) / L))
    inner = rquant(bits).context(torch.tensor([-0.5, 0.25]))
    assert Fraction(float(inner.step[0])) == rnd(d64(d64(1 + eps) / L))


def test_float64_for_32_bit_codes():
    s = QuantScheme(bits=32, signed=True, range="fixed", q_max=float(2 ** 31 - 1) - 0.001)  # step exactly 1
    w = torch.tensor([1.0, -5.0, 123456789.0, -7.5, 1e12], dtype=torch.float64)
    codes, ctx = quantize_tensor(w, s)
    assert codes.dtype == torch.int32 and ctx.step.dtype == torch.float64 and float(ctx.step[0]) == 1.0
    assert codes.tolist()[:4] == [1, -5, 123456789, -8]
    assert not fused_quant.supports(s)  # C declares it does not handle 32-bit codes: the torch path runs


# ---------------------------------------------------------------------------------------------- scheme object

@pytest.mark.parametrize("bits,signed,dtype", [(b, True, torch.int8) for b in range(2, 9)]
                         + [(b, True, torch.int16) for b in range(9, 17)] + [(32, True, torch.int32)]
                         + [(b, False, torch.uint8) for b in range(2, 9)]
                         + [(b, False, torch.int16) for b in range(9, 17)])
def test_scheme_properties(bits, signed, dtype):
    s = QuantScheme(bits=bits, signed=signed)
    width = {torch.uint8: 8, torch.int8: 8, torch.int16: 16, torch.int32: 32}[dtype]
    assert s.dtype == dtype and s.width == width
    assert s.levels == 2 ** (bits - 1) - 1
    assert s.center == (0 if signed else 2 ** (bits - 1))
    assert (s.code_min, s.code_max) == ((-2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1))
    assert s.protected == (2 ** width - 1) & ~(2 ** bits - 1)  # the container bits above the m-bit word
    assert s.native == (dtype == torch.uint8 or (signed and bits == width))
    assert s.compute_dtype == (torch.float64 if bits == 32 else torch.float32)
    assert scheme_from_dict(s.to_dict()) == s


def test_presets():
    n = normal(8)
    assert (n.bits, n.signed, n.range, n.q_max, n.asymmetric, n.rounding) == (8, False, "fixed", 1.0, False, "trunc")
    assert n.rounding_mode is Rounding.TRUNCATE and rquant(8).rounding_mode is Rounding.NEAREST_EVEN
    r = rquant(8)
    assert (r.bits, r.signed, r.range, r.asymmetric, r.rounding) == (8, False, "adaptive", True, "round")
    rc = rquant(4, 0.1)
    assert (rc.bits, rc.range, rc.w_max, rc.asymmetric, rc.rounding) == (4, "clipped", 0.1, True, "round")
    assert "normal" in n.name and "rquant" in r.name and str(rc) == rc.name
    assert rquant(8) == QuantScheme(bits=8, asymmetric=True)  # the label is not part of equality


def test_accelerator_declares_what_it_handles(monkeypatch):
    """The C path is chosen by supports(): a scheme with a rounding mode it does not know runs the torch path."""
    class Fake:
        family, dtype, compute_dtype = "symmetric", torch.uint8, torch.float32
        rounding_mode = 7
    assert not fused_quant.supports(Fake())
    assert not fused_quant.supports(QuantScheme(bits=32, signed=True))
    if fused_quant.fused_available():
        assert fused_quant.supports(rquant(8)) and fused_quant.supports(normal(4))
        assert fused_quant.supports(QuantScheme(bits=16, signed=True, rounding="trunc"))
        # and the C function itself refuses an unknown mode instead of computing something else
        from bitbench.kernels import _c_backend
        w = torch.zeros(3)
        ctx = QuantContext(torch.zeros(1), torch.ones(1), torch.ones(1))
        with pytest.raises(RuntimeError, match="rounding 7"):
            _c_backend.encode_f32(w, torch.tensor([0, 3]), 0, ctx, 7, 0, 0, 255, torch.empty(3, dtype=torch.uint8),
                                  torch.empty(3))
    monkeypatch.setenv("BITBENCH_FUSED_QUANT", "0")
    assert not fused_quant.supports(rquant(8))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(bits=17, signed=False), ValueError, "2..16"),
    (dict(bits=32, signed=False), ValueError, "32-bit codes are signed"),
    (dict(bits=1, signed=False), ValueError, "2..16"),
    (dict(bits=1, signed=True), ValueError, "2..16 .or 32"),
    (dict(bits=24, signed=True), ValueError, "2..16 .or 32"),
    (dict(granularity="row"), ValueError, "granularity must be"),
    (dict(granularity="group:0"), ValueError, "granularity must be"),
    (dict(granularity="group:x"), ValueError, "granularity must be"),
    (dict(bits=8.0), ValueError, "bits must be an integer"),
    (dict(bits=True), ValueError, "bits must be an integer"),
    (dict(range="clipped", w_max=0.0), ValueError, "w_max"),
    (dict(range="clipped"), ValueError, "w_max"),
    (dict(range="clipped", w_max=float("nan")), ValueError, "w_max"),
    (dict(range="clipped", w_max=float("inf")), ValueError, "w_max"),
    (dict(range="adaptive", w_max=-0.1), ValueError, "w_max"),
    (dict(range="fixed", q_max=0.0), ValueError, "q_max"),
    (dict(range="fixed", q_max=float("nan")), ValueError, "q_max"),
    (dict(range="fixed", asymmetric=True, q_min=0.5, q_max=0.5), ValueError, "q_min < q_max"),
    (dict(range="fixed", q_min=-1.0), ValueError, "asymmetric"),
    (dict(range="adaptive", asymmetric=True, q_min=-1.0), ValueError, "q_min"),
    (dict(range="global"), ValueError, "range must be one of"),
    (dict(rounding="floor"), ValueError, "rounding must be one of"),
])
def test_invalid_schemes_refused(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        QuantScheme(**kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_refused(bad):
    w = torch.tensor([0.1, bad, -0.2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_tensor(w, rquant(8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        rquant(8).quantize(w)


def test_integer_weights_refused():
    with pytest.raises(TypeError, match="floating point"):
        quantize_tensor(torch.arange(4), rquant(8))


# ------------------------------------------------------------------------------ flat (segmented) == per tensor

def _many_range_tensors(gen):
    """Tensors of very different ranges and shapes, like a network's weights, biases and norm parameters."""
    return [torch.randn(6, 1, 5, 5, generator=gen) * 0.3, torch.zeros(6),
            torch.randn(16, 6, 3, 3, generator=gen) * 0.02, torch.full((16,), 0.7),
            torch.rand(120, 40, generator=gen) * 5 + 3, torch.randn(84, generator=gen) * 1e-4 - 2e-3,
            torch.randn(10, 84, generator=gen) * 2.0, torch.tensor(0.25), torch.randn(3, generator=gen) * 50,
            torch.empty(0)]


ALL_SCHEMES = SCHEMES + [QuantScheme(bits=32, signed=True), QuantScheme(bits=32, signed=True, asymmetric=True,
                                                                        rounding="trunc"),
                         QuantScheme(bits=3, range="clipped", w_max=0.5, asymmetric=True), normal(8), rquant(8, 0.1)]


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=str)
def test_flat_equals_per_tensor(scheme, backend):
    gen = torch.Generator().manual_seed(7)
    tensors = _many_range_tensors(gen)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    segs = Segments([t.numel() for t in tensors])
    codes, ctx, _ = scheme.quantize(flat, segs)
    deq = scheme.decode(codes, ctx, segs)
    o = 0
    for i, t in enumerate(tensors):
        n = t.numel()
        if n == 0:
            continue
        rc, rctx = quantize_tensor(t, scheme)
        assert torch.equal(codes[o:o + n], rc.reshape(-1)), (scheme, i)
        assert rctx.equal(ctx[i:i + 1])
        assert torch.equal(deq[o:o + n], dequantize_tensor(rc, rctx, scheme).reshape(-1)), (scheme, i)
        o += n


def test_flat_on_a_model():
    """QuantizedModel.from_module (the flat path) == quantize_tensor/dequantize_tensor tensor by tensor."""
    from bitbench.defenses.quantized_model import QuantizedModel
    from bitbench.models import build_model

    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28, norm="rgn", mean=(0.13,),
                        std=(0.31,), seed=3)
    for scheme in [normal(8), rquant(8), rquant(4, 0.05), QuantScheme(bits=32, signed=True, rounding="trunc")]:
        qm = QuantizedModel.from_module(model, scheme)
        deq = qm.dequantize_tensors()
        for t, (name, p) in enumerate(model.named_parameters()):
            rc, rctx = quantize_tensor(p, scheme)
            assert torch.equal(qm.tensor(name), rc), (scheme, name)
            assert rctx.equal(qm.context[t:t + 1])
            assert torch.equal(deq[name], dequantize_tensor(rc, rctx, scheme)), (scheme, name)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s.bits in (4, 8, 16)][::3]
                         + [QuantScheme(bits=32, signed=True)], ids=str)
def test_gpu_torch_path_equals_cpu(scheme):
    """The GPU (torch) path gives the same codes, contexts and values as the CPU path."""
    tensors = memory_for(scheme) if scheme.bits <= 16 else _many_range_tensors(torch.Generator().manual_seed(1))
    flat = torch.cat([t.reshape(-1) for t in tensors])
    segs = Segments([t.numel() for t in tensors])
    codes, ctx, _ = scheme.quantize(flat, segs)
    deq = scheme.decode(codes, ctx, segs)
    gc, gctx, _ = scheme.quantize(flat.cuda(), segs)
    assert torch.equal(gc.cpu(), codes) and gctx.to("cpu").equal(ctx)
    assert torch.equal(scheme.decode(gc, gctx, segs).cpu(), deq)
