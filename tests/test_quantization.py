"""Quantization into real integers (defenses/quantization.py).

Every expected code here comes from an independent reference: the formulas of shared/design/paper-protocol.md
evaluated in exact rational arithmetic (fractions.Fraction) on the exact values of the float inputs, plus a few
literal tables worked out by hand (the arithmetic is in the comments). The implementation runs in floating point,
so random inputs are compared with an error bound derived from the number of rounded operations (see `_tolerance`).
"""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch

from bitbench.defenses.quantization import (QuantScheme, dequantize_flat, dequantize_tensor, normal, quantize_flat,
                                   quantize_tensor, rquant, scheme_from_dict, segment_ids)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


# ----------------------------------------------------------------------------------------------- the reference

def _round_half_even(x: Fraction) -> int:
    fl = math.floor(x)
    r = x - fl
    if r > Fraction(1, 2):
        return fl + 1
    if r < Fraction(1, 2):
        return fl
    return fl if fl % 2 == 0 else fl + 1


def exact_range(values, s: QuantScheme):
    """(mid, half) of one tensor by the paper's formulas, exactly (half == 0 kept: the degenerate case)."""
    ws = [Fraction(v) for v in values]
    if s.range == "fixed":
        return Fraction(0), Fraction(s.q_max)
    if s.asymmetric:
        lo, hi = min(ws), max(ws)
        if s.range == "clipped":
            W = Fraction(s.w_max)
            lo, hi = max(-W, min(W, lo)), max(-W, min(W, hi))
        return (hi + lo) / 2, (hi - lo) / 2
    half = max(abs(v) for v in ws)
    if s.range == "clipped":
        half = min(half, Fraction(s.w_max))
    return Fraction(0), half


def exact_codes(values, s: QuantScheme):
    """Exact codes, the exact value (w - mid) / half * L of each word before clamping, and (mid, half)."""
    L = (1 << (s.bits - 1)) - 1
    center = 0 if s.signed else 1 << (s.bits - 1)
    mid, half = exact_range(values, s)
    codes, xs = [], []
    for v in values:
        if half == 0:  # constant tensor (or a clipped asymmetric range collapsed to one bound): the center code
            x = Fraction(0)
        else:
            x = (Fraction(v) - mid) / half * L  # before the clamp to [-L, L]
        xc = max(Fraction(-L), min(Fraction(L), x))
        c = _round_half_even(xc) if s.rounding == "round" else math.trunc(xc)
        codes.append(c + center)
        xs.append(x)
    return codes, xs, mid, half


def boundary_distance(x: Fraction, rounding: str, L: int) -> float:
    """Distance of the exact, unclamped x*L to the nearest point where clamp-then-round changes its result.

    Beyond +-L the clamp gives exactly +-L whatever the rounding error, so only the boundary at +-L counts."""
    if abs(x) >= L:
        return float(abs(x) - L) if rounding == "trunc" else float(abs(x) - L + Fraction(1, 2))
    if rounding == "round":
        return float(abs((x - math.floor(x)) - Fraction(1, 2)))
    # truncation toward zero is constant on (-1, 1); its boundaries are the non-zero integers
    fl, ce = math.floor(x), math.ceil(x)
    cands = [abs(x - k) for k in (fl, ce, fl - 1, ce + 1) if k != 0]
    return float(min(cands))


def _tolerance(s: QuantScheme, mid: Fraction, half: Fraction) -> float:
    """Bound on |x*L computed in the compute dtype - exact x*L| (in code units).

    The float path rounds: the range statistics (mid = (hi+lo)/2, half, q_max/w_max cast to the compute dtype),
    w - mid, the division by half and the product with L: each a relative error <= eps/2 of the quantity rounded.
    Relative to x that is at most about (3 + 2|mid|/half) * eps/2 (|w - mid| <= half + rounding for unclamped
    words); times L it is in code units. A factor 2 of slack on top keeps the bound honest but not tight.
    """
    eps = torch.finfo(s.compute_dtype).eps
    L = (1 << (s.bits - 1)) - 1
    ratio = float(abs(mid) / half) if half else 0.0
    return 2 * (3 + 2 * ratio) * eps / 2 * L


def _f32(values):
    """The float32 values (exact) that the test feeds in."""
    return torch.tensor(values, dtype=torch.float32)


ALL_SCHEMES = []
for _bits, _signed in [(8, True), (16, True), (32, True)] + [(b, False) for b in range(2, 9)]:
    for _rng in ("fixed", "adaptive", "clipped"):
        for _asym in (False, True):
            if _rng == "fixed" and _asym:
                continue
            for _r in ("round", "trunc"):
                ALL_SCHEMES.append(QuantScheme(bits=_bits, signed=_signed, range=_rng, q_max=0.5,
                                               w_max=0.25 if _rng == "clipped" else None, asymmetric=_asym,
                                               rounding=_r))
ALL_SCHEMES += [normal(8), normal(4), rquant(8), rquant(4), rquant(8, 0.125), rquant(2, 0.25)]


def _sid(s):
    return s.name


# ------------------------------------------------------------------------------------------- scheme basics

@pytest.mark.parametrize("bits,signed,dtype", [(8, True, torch.int8), (16, True, torch.int16),
                                                (32, True, torch.int32)] + [(b, False, torch.uint8)
                                                                             for b in range(2, 9)])
def test_scheme_properties(bits, signed, dtype):
    s = QuantScheme(bits=bits, signed=signed)
    assert s.dtype == dtype
    assert s.levels == 2 ** (bits - 1) - 1
    assert s.center == (0 if signed else 2 ** (bits - 1))
    assert (s.code_min, s.code_max) == ((-2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1))
    assert s.protected == (0 if signed else (0xFF & ~(2 ** bits - 1)))
    assert s.compute_dtype == (torch.float64 if bits == 32 else torch.float32)
    assert scheme_from_dict(s.to_dict()) == s


def test_presets():
    n = normal(8)
    assert (n.bits, n.signed, n.range, n.q_max, n.asymmetric, n.rounding) == (8, False, "fixed", 1.0, False, "trunc")
    r = rquant(8)
    assert (r.bits, r.signed, r.range, r.asymmetric, r.rounding) == (8, False, "adaptive", True, "round")
    rc = rquant(4, 0.1)
    assert (rc.bits, rc.range, rc.w_max, rc.asymmetric, rc.rounding) == (4, "clipped", 0.1, True, "round")
    assert "normal" in n.name and "rquant" in r.name and str(rc) == rc.name
    assert rquant(8) == QuantScheme(bits=8, asymmetric=True)  # the label is not part of equality


# ---------------------------------------------------------------------------------- known answers, by hand

# (scheme, inputs, expected codes). Arithmetic in the comments: x = clamp((w - mid) / half, -1, 1) * L.
HAND = [
    # Normal u8: q_max = 1, L = 127, trunc, +128. x = w*127: -190.5->-127 (clamped), -127, -63.5->-63,
    # -31.75->-31, 0, 12.7->12, 63.5->63, 125.73->125, 127, 254->127.
    (normal(8), [-1.5, -1.0, -0.5, -0.25, 0.0, 0.1, 0.5, 0.99, 1.0, 2.0],
     [1, 1, 65, 97, 128, 140, 191, 253, 255, 255]),
    # RQuant u8: lo = -0.5, hi = 1, mid = 0.25, half = 0.75; x = -127, -84.67->-85, -42.33->-42, 0, 127; +128.
    (rquant(8), [-0.5, -0.25, 0.0, 0.25, 1.0], [1, 43, 86, 128, 255]),
    # s8 fixed q_max = 0.5, round: x = w/0.5*127: -190.5->-127, -127, -32.004->-32, 0, 0.254->0,
    # 63.5 -> 64 (tie to even), 127, 762->127.
    (QuantScheme(bits=8, signed=True, range="fixed", q_max=0.5, rounding="round"),
     [-0.75, -0.5, -0.126, 0.0, 0.001, 0.25, 0.5, 3.0], [-127, -127, -32, 0, 0, 64, 127, 127]),
    # u4 adaptive symmetric trunc: half = 0.8, L = 7: x = -7, -2.625->-2, 0, 3.0625->3, 3.5->3; +8.
    (QuantScheme(bits=4, range="adaptive", rounding="trunc"), [-0.8, -0.3, 0.0, 0.35, 0.4], [1, 6, 8, 11, 11]),
    # s16 clipped symmetric round, w_max = 0.25: half = min(1, 0.25); L = 32767: x = -32767 (clamped), -32767,
    # -16383.5 -> -16384 (tie to even), 0, 8191.75->8192, 26213.6->26214.
    (QuantScheme(bits=16, signed=True, range="clipped", w_max=0.25),
     [-1.0, -0.25, -0.125, 0.0, 0.0625, 0.2], [-32767, -32767, -16384, 0, 8192, 26214]),
    # s32 adaptive asymmetric trunc: lo = -1, hi = 3, mid = 1, half = 2, L = 2^31 - 1:
    # x = -L, -L/2 = -1073741823.5 -> -1073741823, -L/4 -> -536870911, L.
    (QuantScheme(bits=32, signed=True, asymmetric=True, rounding="trunc"), [-1.0, 0.0, 0.5, 3.0],
     [-2147483647, -1073741823, -536870911, 2147483647]),
    # u2 adaptive symmetric round: L = 1, center 2, half = 1: x = -1, -0.5 -> 0 (tie), 0, 0.49->0, 0.5->0, 1.
    (QuantScheme(bits=2), [-1.0, -0.5, 0.0, 0.49, 0.5, 1.0], [1, 2, 2, 2, 2, 3]),
    # u8 clipped asymmetric round, w_max = 0.5: [lo, hi] = [-2, 0.25] clamped to [-0.5, 0.25]: mid = -0.125,
    # half = 0.375: x = -127 (clamped), -127, 42.33->42, 127, 127 (clamped); +128.
    (rquant(8, 0.5), [-2.0, -0.5, 0.0, 0.25, 0.25], [1, 1, 170, 255, 255]),
]


@pytest.mark.parametrize("scheme,values,expected", HAND, ids=[h[0].name for h in HAND])
def test_known_answer_by_hand(scheme, values, expected):
    w = _f32(values)
    ref, _, mid, half = exact_codes(w.tolist(), scheme)
    assert ref == expected  # the hand table agrees with the exact reference
    codes, scale, m = quantize_tensor(w, scheme)
    assert codes.dtype == scheme.dtype and codes.shape == w.shape
    assert codes.tolist() == expected
    if half:
        # scale = half / L (the step delta), correctly rounded to the compute dtype
        exact_scale = half / scheme.levels
        assert scale.dtype == scheme.compute_dtype
        assert abs(Fraction(float(scale)) - exact_scale) <= exact_scale * torch.finfo(scheme.compute_dtype).eps / 2
        assert float(m) == float(mid)
    # dequantization: (code - center) * scale + mid, checked against the exact value
    deq = dequantize_tensor(codes, scale, m, scheme, dtype=torch.float64)
    for c, d in zip(expected, deq.tolist()):
        exact = (c - scheme.center) * (half / scheme.levels) + mid
        assert abs(Fraction(d) - exact) <= 4 * torch.finfo(scheme.compute_dtype).eps * (half + abs(mid))


# inputs whose statistics are exact in float32 (dyadic), covering both range ends, zero, negatives and values
# beyond the fixed / clipped ranges
KA_VALUES = [-3.0, -0.5, -0.375, -0.25, -0.1, 0.0, 0.03125, 0.2, 0.25, 0.3, 0.5, 1.75]


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=_sid)
def test_known_answer_exact_every_scheme(scheme):
    """Every scheme: codes equal the exact reference, except (at most one code off) where the exact x*L is within
    the float error bound of a rounding boundary; ends of the range are hit exactly."""
    for values in (KA_VALUES, [v / 8 for v in KA_VALUES], [0.0625, 0.125, 0.5, 0.75]):
        w = _f32(values)
        ref, xs, mid, half = exact_codes(w.tolist(), scheme)
        codes, scale, m = quantize_tensor(w, scheme)
        tol = _tolerance(scheme, mid, half)
        got = codes.tolist()
        for v, c, r, x in zip(values, got, ref, xs):
            if boundary_distance(x, scheme.rounding, scheme.levels) > tol:
                assert c == r, (scheme.name, v, c, r, float(x))
            else:
                assert abs(c - r) <= 1, (scheme.name, v, c, r)
        assert min(got) >= scheme.code_min and max(got) <= scheme.code_max
        # the range ends (exact in float for these dyadic inputs) map to the extreme codes +-L
        if scheme.range == "adaptive" or (scheme.range == "clipped" and max(abs(v) for v in values) <= 0.25):
            lo_i, hi_i = values.index(min(values)), values.index(max(values))
            if scheme.asymmetric:
                assert got[lo_i] == scheme.center - scheme.levels and got[hi_i] == scheme.center + scheme.levels
            else:
                big = max(range(len(values)), key=lambda i: abs(values[i]))
                assert abs(got[big] - scheme.center) == scheme.levels
        # values beyond the range are clamped to the extreme codes
        if scheme.range != "adaptive":
            bound = float(half)
            for v, c in zip(values, got):
                if not scheme.asymmetric and abs(v) > bound:
                    assert c - scheme.center == math.copysign(scheme.levels, v)


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=_sid)
@pytest.mark.parametrize("const", [0.0, 0.3, -0.7])
def test_constant_tensor(scheme, const):
    """A constant tensor (e.g. a zero-initialised bias) gives no NaN and the exact reference codes; for a
    per-tensor range it is the center code and dequantizes exactly to the constant (or its clipped bound)."""
    w = torch.full((7,), const)
    codes, scale, mid = quantize_tensor(w, scheme)
    assert torch.isfinite(scale) and torch.isfinite(mid) and float(scale) > 0
    ref, _, emid, ehalf = exact_codes(w.tolist(), scheme)
    assert codes.tolist() == ref
    deq = dequantize_tensor(codes, scale, mid, scheme)
    assert torch.isfinite(deq).all()
    if scheme.range != "fixed" and scheme.asymmetric:
        assert set(ref) == {scheme.center}
        expect = float(torch.tensor(const).clamp(-scheme.w_max, scheme.w_max)) if scheme.range == "clipped" \
            else float(torch.tensor(const))
        assert deq.tolist() == [expect] * 7  # exactly mid
    if const == 0.0:
        assert set(codes.tolist()) == {scheme.center}
        assert deq.tolist() == [0.0] * 7


def test_clipped_asymmetric_all_beyond_bound():
    """Regression: when every weight lies beyond +w_max (or -w_max), the clipped asymmetric range collapses to
    the bound; all words must dequantize to that bound (not to a value on an arbitrary unit scale)."""
    s = rquant(8, 0.1)
    for w, bound in ((torch.tensor([0.2, 0.3, 0.5]), 0.1), (torch.tensor([-0.2, -0.7]), -0.1),
                     (torch.ones(4), 0.1)):
        codes, scale, mid = quantize_tensor(w, s)
        assert codes.tolist() == [s.center] * w.numel()
        assert torch.equal(dequantize_tensor(codes, scale, mid, s), torch.full_like(w, bound))
        seg = torch.zeros(w.numel(), dtype=torch.long)
        fc, fs, fm = quantize_flat(w, seg, 1, s)
        assert torch.equal(fc, codes) and torch.equal(fs[0], scale) and torch.equal(fm[0], mid)


# ------------------------------------------------------------------------------------- random vs exact reference

def _random_tensors(gen, n_tensors=5, size=40):
    out = []
    for k in range(n_tensors):
        scale = 10.0 ** float(torch.randint(-3, 1, (1,), generator=gen))
        shift = float(torch.randn(1, generator=gen)) * scale * (k % 3 == 2)
        out.append(torch.randn(size, generator=gen) * scale + shift)
    return out


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=_sid)
def test_random_inputs_match_exact_reference(scheme):
    gen = torch.Generator().manual_seed(1234 + scheme.bits)
    n_ambiguous = n_total = 0
    for w in _random_tensors(gen):
        ref, xs, mid, half = exact_codes(w.tolist(), scheme)
        tol = _tolerance(scheme, mid, half)
        got = quantize_tensor(w, scheme)[0].tolist()
        for c, r, x in zip(got, ref, xs):
            n_total += 1
            if boundary_distance(x, scheme.rounding, scheme.levels) > tol:
                assert c == r, (scheme.name, c, r, float(x), tol)
            else:
                n_ambiguous += 1
                assert abs(c - r) <= 1
    # the bound is not so loose that the comparison becomes vacuous
    assert n_ambiguous <= 0.1 * n_total, (n_ambiguous, n_total)


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=_sid)
def test_round_trip_error_range_dtype(scheme):
    """|w_hat - clamp(w)| <= delta/2 (round) or < delta (trunc), up to float error; codes in range, right dtype,
    protected (upper) bits zero for m < 8."""
    gen = torch.Generator().manual_seed(99)
    for w in _random_tensors(gen, n_tensors=4, size=300) + [_f32(KA_VALUES)]:
        codes, scale, mid = quantize_tensor(w, scheme)
        assert codes.dtype == scheme.dtype
        c64 = codes.to(torch.int64)
        assert int(c64.min()) >= scheme.code_min and int(c64.max()) <= scheme.code_max
        # quantization never produces the most negative code (range is symmetric in code space: +-L)
        assert int((c64 - scheme.center).abs().max()) <= scheme.levels
        if not scheme.signed:
            assert int((c64 & scheme.protected).max()) == 0
            assert int(c64.max()) < 2 ** scheme.bits
        deq = dequantize_tensor(codes, scale, mid, scheme, dtype=torch.float64)
        wd = w.to(torch.float64)
        half = float(scale) * scheme.levels
        lo, hi = float(mid) - half, float(mid) + half
        target = wd.clamp(lo, hi)
        delta = float(scale)
        eps = torch.finfo(scheme.compute_dtype).eps
        ref_mid, ref_half = exact_range(w.tolist(), scheme)
        # float slack: misrounding by at most `_tolerance` codes, plus the rounding of the dequantization itself
        slack = _tolerance(scheme, ref_mid, ref_half or Fraction(1)) * delta + 4 * eps * (abs(float(mid)) + half)
        err = (deq - target).abs().max().item()
        bound = delta / 2 if scheme.rounding == "round" else delta
        assert err <= bound + slack, (scheme.name, err, bound, slack)
        # and truncation moves toward the center: |w_hat - mid| <= |w - mid| (+ slack)
        if scheme.rounding == "trunc":
            assert bool(((deq - float(mid)).abs() <= (target - float(mid)).abs() + slack).all())


def test_rounding_is_round_half_even_and_trunc_toward_zero():
    # u2 fixed q_max = 1 (L = 1): x = w exactly; ties at +-0.5
    r = QuantScheme(bits=2, range="fixed", q_max=1.0, rounding="round")
    t = QuantScheme(bits=2, range="fixed", q_max=1.0, rounding="trunc")
    w = _f32([-1.0, -0.75, -0.5, -0.25, 0.25, 0.5, 0.75, 1.0])
    assert quantize_tensor(w, r)[0].tolist() == [1, 1, 2, 2, 2, 2, 3, 3]
    assert quantize_tensor(w, t)[0].tolist() == [1, 2, 2, 2, 2, 2, 2, 3]
    # s8 fixed q_max = 127 (scale 1): ties 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2
    s = QuantScheme(bits=8, signed=True, range="fixed", q_max=127.0)
    assert quantize_tensor(_f32([0.5, 1.5, 2.5, -2.5, -3.5]), s)[0].tolist() == [0, 2, 2, -2, -4]
    st = QuantScheme(bits=8, signed=True, range="fixed", q_max=127.0, rounding="trunc")
    assert quantize_tensor(_f32([0.5, 1.5, 2.9, -2.9, -3.5]), st)[0].tolist() == [0, 1, 2, -2, -3]


def test_float64_input_and_32_bit_precision():
    """32-bit codes are computed in float64: steps of one code (2^-31 of the range) are resolved exactly."""
    s = QuantScheme(bits=32, signed=True, range="fixed", q_max=float(2 ** 31 - 1))  # scale exactly 1
    w = torch.tensor([1.0, -5.0, 123456789.0, 2147483646.0, -2147483647.0, 1e12], dtype=torch.float64)
    codes, scale, mid = quantize_tensor(w, s)
    assert codes.dtype == torch.int32 and float(scale) == 1.0
    assert codes.tolist() == [1, -5, 123456789, 2147483646, -2147483647, 2147483647]
    assert dequantize_tensor(codes, scale, mid, s, dtype=torch.float64).tolist() == \
        [1.0, -5.0, 123456789.0, 2147483646.0, -2147483647.0, 2147483647.0]


# ----------------------------------------------------------------------------------------------- invalid input

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(bits=16, signed=False), ValueError, "uint8"),
    (dict(bits=9, signed=False), ValueError, "2 <= bits <= 8"),
    (dict(bits=1, signed=False), ValueError, "2 <= bits <= 8"),
    (dict(bits=0, signed=False), ValueError, "2 <= bits <= 8"),
    (dict(bits=12, signed=True), ValueError, "int8/int16/int32"),
    (dict(bits=64, signed=True), ValueError, "int8/int16/int32"),
    (dict(bits=4, signed=True), ValueError, "int8/int16/int32"),
    (dict(bits=8.0), TypeError, "bits must be an int"),
    (dict(bits=True), TypeError, "bits must be an int"),
    (dict(range="clipped", w_max=0.0), ValueError, "w_max"),
    (dict(range="clipped", w_max=-1.0), ValueError, "w_max"),
    (dict(range="clipped"), ValueError, "w_max"),
    (dict(range="clipped", w_max=float("nan")), ValueError, "w_max"),
    (dict(range="clipped", w_max=float("inf")), ValueError, "w_max"),
    (dict(range="adaptive", w_max=-0.1), ValueError, "w_max"),
    (dict(range="fixed", q_max=0.0), ValueError, "q_max"),
    (dict(range="fixed", q_max=-1.0), ValueError, "q_max"),
    (dict(range="fixed", q_max=float("nan")), ValueError, "q_max"),
    (dict(range="fixed", asymmetric=True), ValueError, "asymmetric"),
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
        quantize_flat(w, torch.zeros(3, dtype=torch.long), 1, rquant(8))


def test_integer_weights_refused():
    with pytest.raises(TypeError, match="floating point"):
        quantize_tensor(torch.arange(4), rquant(8))


# ------------------------------------------------------------------------------ flat (segmented) == reference

def test_segment_ids():
    assert segment_ids([2, 0, 3, 1]).tolist() == [0, 0, 2, 2, 2, 3]
    assert segment_ids([]).tolist() == []


def _check_flat_equals_reference(tensors, scheme):
    flat = torch.cat([t.reshape(-1) for t in tensors])
    seg = segment_ids([t.numel() for t in tensors])
    codes, scale, mid = quantize_flat(flat, seg, len(tensors), scheme)
    assert codes.dtype == scheme.dtype and codes.shape == flat.shape
    assert scale.shape == mid.shape == (len(tensors),)
    deq = dequantize_flat(codes, seg, scale, mid, scheme)
    o = 0
    for i, t in enumerate(tensors):
        rc, rs, rm = quantize_tensor(t, scheme)
        n = t.numel()
        assert torch.equal(codes[o:o + n], rc.reshape(-1)), (scheme.name, i)
        assert torch.equal(scale[i], rs) and torch.equal(mid[i], rm), (scheme.name, i)
        rd = dequantize_tensor(rc, rs, rm, scheme)
        assert torch.equal(deq[o:o + n], rd.reshape(-1)), (scheme.name, i)  # bit-identical values
        o += n


def _many_range_tensors(gen):
    """Tensors of very different ranges and shapes, like a network's weights, biases and norm parameters."""
    return [torch.randn(6, 1, 5, 5, generator=gen) * 0.3,
            torch.zeros(6),                                       # zero-initialised bias
            torch.randn(16, 6, 3, 3, generator=gen) * 0.02,
            torch.full((16,), 0.7),                               # constant (e.g. a norm scale)
            torch.rand(120, 40, generator=gen) * 5 + 3,           # all positive, far from 0
            torch.randn(84, generator=gen) * 1e-4 - 2e-3,         # tiny range, negative offset
            torch.randn(10, 84, generator=gen) * 2.0,
            torch.tensor(0.25),                                   # a 0-dim parameter
            torch.randn(3, generator=gen) * 50]


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=_sid)
def test_flat_equals_reference_many_tensors(scheme):
    gen = torch.Generator().manual_seed(7)
    _check_flat_equals_reference(_many_range_tensors(gen), scheme)


def test_flat_equals_reference_random_stress():
    gen = torch.Generator().manual_seed(2024)
    schemes = [s for s in ALL_SCHEMES if s.bits in (2, 3, 8, 16, 32)]
    for trial in range(6):
        tensors = []
        for k in range(int(torch.randint(1, 12, (1,), generator=gen))):
            n = int(torch.randint(0, 200, (1,), generator=gen))  # empty tensors included
            s = 10.0 ** float(torch.empty(1).uniform_(-5, 2, generator=gen))
            tensors.append(torch.randn(n, generator=gen) * s + float(torch.randn(1, generator=gen)) * s)
        dtype = torch.float64 if trial % 2 else torch.float32
        tensors = [t.to(dtype) for t in tensors]
        for scheme in schemes:
            _check_flat_equals_reference(tensors, scheme)


def test_flat_equals_reference_on_a_model():
    """QuantizedModel.from_module (the flat path) == quantize_tensor/dequantize_tensor tensor by tensor."""
    from bitbench.models import build_model
    from bitbench.defenses.quantized_model import QuantizedModel

    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28, norm="rgn", mean=(0.13,),
                        std=(0.31,), seed=3)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # spread the ranges: every tensor its own scale and offset
        for i, p in enumerate(model.parameters()):
            p.mul_(10.0 ** (i % 5 - 2)).add_(torch.randn((), generator=gen) * 0.01 * (i % 3))
    for scheme in [normal(8), rquant(8), rquant(4, 0.05), QuantScheme(bits=16, signed=True, range="clipped",
                                                                      w_max=0.5, asymmetric=True),
                   QuantScheme(bits=32, signed=True, rounding="trunc")]:
        qm = QuantizedModel.from_module(model, scheme)
        deq = qm.dequantize_tensors()
        for t, (name, p) in enumerate(model.named_parameters()):
            rc, rs, rm = quantize_tensor(p, scheme)
            assert qm.names[t] == name
            assert torch.equal(qm.tensor(name), rc), (scheme.name, name)
            assert torch.equal(qm.scale[t], rs) and torch.equal(qm.mid[t], rm)
            assert torch.equal(deq[name], dequantize_tensor(rc, rs, rm, scheme)), (scheme.name, name)


def test_dequantize_flat_out_argument():
    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(5, generator=gen), torch.randn(3, generator=gen) * 4]
    flat = torch.cat(ts)
    seg = segment_ids([5, 3])
    codes, scale, mid = quantize_flat(flat, seg, 2, rquant(8))
    out = torch.empty(8)
    res = dequantize_flat(codes, seg, scale, mid, rquant(8), out=out)
    assert res is out and torch.equal(out, dequantize_flat(codes, seg, scale, mid, rquant(8)))


def test_schemes_cover_the_grid():
    # the parametrized grid really includes every combination the issue names
    names = {(s.bits, s.signed, s.range, s.asymmetric, s.rounding) for s in ALL_SCHEMES}
    for bits, signed in [(8, True), (16, True), (32, True)] + [(b, False) for b in range(2, 9)]:
        for rng, asym, rnd in itertools.product(("fixed", "adaptive", "clipped"), (False, True), ("round", "trunc")):
            if rng == "fixed" and asym:
                continue
            assert (bits, signed, rng, asym, rnd) in names
