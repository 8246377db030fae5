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
    assert kernels.hamming_distance(x, y, bits=m).tolist() == \
        [bin((pat(a, w) ^ pat(b, w)) & ((1 << m) - 1)).count("1") for a, b in zip(x.tolist(), y.tolist())]
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
