"""Bit operations on integer tensors, checked against Python integer arithmetic on two's-complement patterns."""
import random

import pytest
import torch

from bitbench import kernels

DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32]
WIDTH = {torch.uint8: 8, torch.int8: 8, torch.int16: 16, torch.int32: 32}


def rand_words(shape, dtype, seed):
    w = WIDTH[dtype]
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-(1 << (w - 1)), 1 << (w - 1)) if dtype != torch.uint8 else (0, 256)
    x = torch.randint(lo, hi, shape, dtype=torch.int64, generator=g)
    x.view(-1)[:2] = torch.tensor([lo, hi - 1])  # extremes (most negative, most positive)
    return x.to(dtype)


def pat(v, w):
    return int(v) & ((1 << w) - 1)


def val(u, dtype):
    w = WIDTH[dtype]
    return u - (1 << w) if dtype != torch.uint8 and u >> (w - 1) else u


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_to_from_bits(dtype):
    w = WIDTH[dtype]
    x = rand_words((50, 3), dtype, 1)
    b = kernels.to_bits(x)
    assert b.dtype == torch.uint8 and b.shape == (50, 3, w)
    for v, bits in zip(x.flatten().tolist(), b.reshape(-1, w).tolist()):
        assert bits == [(pat(v, w) >> k) & 1 for k in range(w)]
    assert torch.equal(kernels.from_bits(b, dtype), x)
    assert torch.equal(kernels.from_bits(b.bool(), dtype), x)
    m = w // 2 + 1
    bm = kernels.to_bits(x, bits=m)
    assert bm.shape == (50, 3, m)
    assert [val(pat(v, w) & ((1 << m) - 1), dtype) for v in x.flatten().tolist()] == \
        kernels.from_bits(bm, dtype).flatten().tolist()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flip_deltas_flip_one_bit_and_patterns_against_python(dtype):
    """The value change of flipping bit b, read in the dtype (two's complement), and the word with it flipped."""
    w = WIDTH[dtype]
    x = rand_words((30,), dtype, 5)
    m = w - 1 if dtype == torch.int16 else w
    prot = 0b10 if m > 2 else 0
    d = kernels.flip_deltas(x, m, prot)
    assert d.dtype == torch.int64 and d.shape == (30, m)
    for j, v in enumerate(x.tolist()):
        for b in range(m):
            want = 0 if (prot >> b) & 1 else val(pat(v, w) ^ (1 << b), dtype) - v
            assert int(d[j, b]) == want, (j, b)
    bits = torch.tensor([j % m for j in range(30)])
    y = kernels.flip_one_bit(x, bits)
    assert y.dtype == dtype
    assert y.tolist() == [val(pat(v, w) ^ (1 << (j % m)), dtype) for j, v in enumerate(x.tolist())]
    assert kernels.to_pattern(x).tolist() == [pat(v, w) for v in x.tolist()]
    assert torch.equal(kernels.from_pattern(kernels.to_pattern(x), dtype), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_logic_ops_against_python(dtype):
    w = WIDTH[dtype]
    x = rand_words((200,), dtype, 2)
    y = rand_words((200,), dtype, 3)
    xs, ys = [pat(v, w) for v in x.tolist()], [pat(v, w) for v in y.tolist()]
    k = random.Random(0).randrange(1 << w)
    for fn, op in [(kernels.bit_and, lambda a, b: a & b), (kernels.bit_or, lambda a, b: a | b),
                   (kernels.bit_xor, lambda a, b: a ^ b), (kernels.flip_bits, lambda a, b: a ^ b),
                   (kernels.set_bits, lambda a, b: a | b),
                   (kernels.clear_bits, lambda a, b: a & ~b & ((1 << w) - 1))]:
        got = fn(x, y)
        assert got.dtype == dtype
        assert [pat(v, w) for v in got.tolist()] == [op(a, b) for a, b in zip(xs, ys)], fn.__name__
        got = fn(x, k)  # Python-int mask (unsigned pattern)
        assert [pat(v, w) for v in got.tolist()] == [op(a, k) for a in xs], fn.__name__
        got = fn(x, val(k, dtype))  # its signed reading is the same mask
        assert [pat(v, w) for v in got.tolist()] == [op(a, k) for a in xs], fn.__name__
        got = fn(x, y.to(torch.int64) & ((1 << w) - 1))  # mask tensor of another dtype, as patterns
        assert [pat(v, w) for v in got.tolist()] == [op(a, b) for a, b in zip(xs, ys)], fn.__name__
    assert torch.equal(x, rand_words((200,), dtype, 2))  # inputs unchanged


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hamming_popcount(dtype):
    w = WIDTH[dtype]
    x = rand_words((300,), dtype, 4)
    y = rand_words((300,), dtype, 5)
    want = [bin(pat(a, w) ^ pat(b, w)).count("1") for a, b in zip(x.tolist(), y.tolist())]
    h = kernels.hamming_distance(x, y)
    assert h.tolist() == want and h.shape == x.shape
    assert kernels.hamming_total(x, y) == sum(want)
    m = w - 3
    want_m = [bin((pat(a, w) ^ pat(b, w)) & ((1 << m) - 1)).count("1") for a, b in zip(x.tolist(), y.tolist())]
    assert kernels.hamming_distance(x, y, bits=m).tolist() == want_m
    assert kernels.hamming_total(x, y, bits=m) == sum(want_m)
    assert kernels.hamming_total(x[:0], y[:0]) == 0
    assert kernels.popcount(x).tolist() == [bin(pat(a, w)).count("1") for a in x.tolist()]


def _msb(d):
    return 1 << (d.bit_length() - 1) if d else 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_msb_projection(dtype):
    w = WIDTH[dtype]
    x = rand_words((400,), dtype, 6)
    y = rand_words((400,), dtype, 7)
    y[::5] = x[::5]  # some unchanged words
    for m in (w, w - 2):
        got = kernels.msb_projection(x, y, bits=m)
        want = [pat(a, w) ^ _msb((pat(a, w) ^ pat(b, w)) & ((1 << m) - 1)) for a, b in zip(x.tolist(), y.tolist())]
        assert [pat(v, w) for v in got.tolist()] == want
        assert int(kernels.hamming_distance(x, got).max()) <= 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_budget_projection(dtype):
    w = WIDTH[dtype]
    x = rand_words((20, 10), dtype, 8)
    y = rand_words((20, 10), dtype, 9)
    y[::3] = x[::3]
    xs, ys = [pat(v, w) for v in x.flatten().tolist()], [pat(v, w) for v in y.flatten().tolist()]
    msbs = [_msb(a ^ b) for a, b in zip(xs, ys)]
    cand = [i for i, v in enumerate(msbs) if v]
    for eps in (0, 1, 7, 50, 1000):
        got = kernels.budget_projection(x, y, eps)
        keep = sorted(cand, key=lambda i: (-msbs[i], i))[:eps]  # by msb value, ties to the lower index
        want = [a ^ (msbs[i] if i in keep else 0) for i, a in enumerate(xs)]
        assert [pat(v, w) for v in got.flatten().tolist()] == want, eps
        assert got.shape == x.shape and got.dtype == dtype
        h = kernels.hamming_distance(x, got)
        assert int((h > 0).sum()) == min(eps, len(cand)) and int(h.max()) <= 1
    # with a score: ranked by score (higher first), ties to the lower index
    score = torch.randint(0, 5, (20, 10), generator=torch.Generator().manual_seed(1)).float()
    sc = score.flatten().tolist()
    got = kernels.budget_projection(x, y, 13, score=score)
    keep = sorted(cand, key=lambda i: (-sc[i], i))[:13]
    want = [a ^ (msbs[i] if i in keep else 0) for i, a in enumerate(xs)]
    assert [pat(v, w) for v in got.flatten().tolist()] == want
    # only the low `bits` count
    got = kernels.budget_projection(x, y, 1000, bits=4)
    assert [pat(v, w) for v in got.flatten().tolist()] == [a ^ _msb((a ^ b) & 0xF) for a, b in zip(xs, ys)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flippable_against_python(dtype):
    """0-bits may flip where `up` allows, 1-bits where `down` allows; never protected bits or bits >= m."""
    w = WIDTH[dtype]
    x = rand_words((40,), dtype, 3)
    up = rand_words((40,), dtype, 4)
    down = rand_words((40,), dtype, 5)
    m, prot = w - 1, 0b100
    got = kernels.flippable(x, up, down, bits=m, protected=prot)
    assert got.dtype == dtype and got.shape == x.shape
    for v, u, d, g in zip(x.tolist(), up.tolist(), down.tolist(), got.tolist()):
        pv, pu, pd = pat(v, w), pat(u, w), pat(d, w)
        want = 0
        for b in range(m):
            bit = (pv >> b) & 1
            if not (prot >> b) & 1 and ((bit == 0 and (pu >> b) & 1) or (bit == 1 and (pd >> b) & 1)):
                want |= 1 << b
        assert pat(g, w) == want
    assert [pat(v, w) for v in kernels.flippable(x).tolist()] == [(1 << w) - 1] * 40   # default: every bit
    only_down = kernels.flippable(x, up=0)
    assert torch.equal(only_down, x)                            # exactly its 1-bits


def test_first_per_group_and_constrained_budget_projection():
    groups = torch.tensor([0, 0, 1, 2, 1, 2, 3])
    order = torch.tensor([4, 1, 2, 0, 5, 6, 3])
    keep = kernels.first_per_group(groups, order)
    assert keep.tolist() == [True, True, False, False, True, True, False]   # first of groups 1, 0, 2, 3
    assert kernels.first_per_group(groups, order[:0]).numel() == 0
    # projection: score order, only allowed bits count, at most one word per group
    x = torch.tensor([0b0000, 0b1111, 0b0101, 0b0000, 0b1000, 0b0011], dtype=torch.uint8)
    y = torch.tensor([0b1001, 0b0000, 0b1010, 0b0110, 0b0000, 0b0000], dtype=torch.uint8)
    score = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    allowed = kernels.flippable(x, up=0)                       # only 1 -> 0 flips
    got = kernels.budget_projection(x, y, 10, bits=4, score=score, allowed=allowed)
    # word 0 (0->1 only) and word 3 are not allowed; word 1: msb allowed changed bit 3; word 2: bit 2 (1->0)
    assert got.tolist() == [0b0000, 0b0111, 0b0001, 0b0000, 0b0000, 0b0001]
    grp = torch.tensor([0, 0, 0, 1, 1, 2])
    got = kernels.budget_projection(x, y, 10, bits=4, score=score, allowed=allowed, groups=grp)
    assert got.tolist() == [0b0000, 0b0111, 0b0101, 0b0000, 0b0000, 0b0001]   # word 2 shares group 0 with word 1
    got = kernels.budget_projection(x, y, 1, bits=4, score=score, allowed=allowed, groups=grp)
    assert kernels.hamming_total(x, got) == 1


def test_bitops_errors():
    x = torch.zeros(4, dtype=torch.int8)
    with pytest.raises(TypeError, match="x has unsupported dtype"):
        kernels.to_bits(torch.zeros(3))
    with pytest.raises(ValueError, match="bits"):
        kernels.to_bits(x, bits=9)
    with pytest.raises(TypeError, match="dtype"):
        kernels.from_bits(torch.zeros(3, 8, dtype=torch.uint8), torch.float32)
    with pytest.raises(ValueError, match="only 0 and 1"):
        kernels.from_bits(torch.full((3, 8), 2, dtype=torch.uint8), torch.uint8)
    with pytest.raises(ValueError, match=r"\[..., m\]"):
        kernels.from_bits(torch.zeros(3, 9, dtype=torch.uint8), torch.uint8)
    with pytest.raises(ValueError, match="mask"):
        kernels.bit_xor(x, 256)
    with pytest.raises(TypeError, match="mask"):
        kernels.bit_xor(x, 1.5)
    with pytest.raises(ValueError, match="mask"):
        kernels.bit_and(x, torch.zeros(5, dtype=torch.int8))
    with pytest.raises(TypeError, match="b has dtype"):
        kernels.hamming_distance(x, torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        kernels.hamming_distance(x, torch.zeros(5, dtype=torch.int8))
    with pytest.raises(ValueError, match="x_perturbed"):
        kernels.msb_projection(x, torch.zeros(4, dtype=torch.int8, device="meta"))
    with pytest.raises(ValueError, match="eps"):
        kernels.budget_projection(x, x, -1)
    with pytest.raises(ValueError, match="score"):
        kernels.budget_projection(x, x, 1, score=torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        kernels.budget_projection(x, x + 1, 1, score=torch.full((4,), float("nan")))
