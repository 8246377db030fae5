"""Random bit-flip patterns (docs/patterns.md): known answers, backend equality, statistics,
argument errors. GPU tests are marked `gpu` (skipped with "CUDA not available" where torch sees no GPU)."""
import math
import os

import pytest
import torch

from bitbench import kernels
from bitbench.kernels import _c_backend, _cupy_backend

DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32]
WIDTH = {torch.uint8: 8, torch.int8: 8, torch.int16: 16, torch.int32: 32}

# Random123 known-answer vectors for Philox4x32-10: (counter, key, output)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

needs_c = pytest.mark.skipif(not _c_backend.available(), reason=f"{_c_backend.error()}")


def rand_words(shape, dtype, gen=None, device="cpu"):
    w = WIDTH[dtype]
    lo, hi = (-(1 << (w - 1)), 1 << (w - 1)) if dtype != torch.uint8 else (0, 256)
    return torch.randint(lo, hi, shape, dtype=torch.int64, generator=gen).to(dtype).to(device)


def pattern(v, w):
    return int(v) & ((1 << w) - 1)


# ---------------------------------------------------------------- an independent pure-Python model of the spec

def py_philox(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    M = 0xFFFFFFFF
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M, (p0 >> 32) ^ c3 ^ k1, p0 & M
        k0, k1 = (k0 + 0x9E3779B9) & M, (k1 + 0xBB67AE85) & M
    return c0, c1, c2, c3


def py_flip_word(u, i, seed, m, p01, p10, protected=0):
    t01 = min(math.floor(p01 * 2**32), 2**32)
    t10 = min(math.floor(p10 * 2**32), 2**32)
    mask = 0
    for b in range(m):
        if (protected >> b) & 1:
            continue
        r = py_philox((i & 0xFFFFFFFF, i >> 32, b // 4, 0), (seed & 0xFFFFFFFF, seed >> 32))[b % 4]
        if r < (t10 if (u >> b) & 1 else t01):
            mask |= 1 << b
    return u ^ mask


def backends_cpu():
    out = ["torch"]
    if _c_backend.available():
        out.append("c")
    return out


# ---------------------------------------------------------------- Philox known answers

def test_philox_kat_torch():
    ctr = torch.tensor([c for c, _, _ in KAT], dtype=torch.int64)
    key = torch.tensor([k for _, k, _ in KAT], dtype=torch.int64)
    assert kernels.philox4x32_10(ctr, key).tolist() == [list(o) for _, _, o in KAT]
    for c, k, o in KAT:
        assert py_philox(c, k) == o


@needs_c
def test_philox_kat_c():
    for c, k, o in KAT:
        assert tuple(_c_backend.philox4x32_10(c, k)) == o


def test_threshold():
    assert kernels.threshold(0.0) == 0
    assert kernels.threshold(1.0) == 2**32
    assert kernels.threshold(0.5) == 2**31
    assert kernels.threshold(0.01) == math.floor(0.01 * 2**32)
    assert kernels.threshold(1 - 2**-40) == 2**32 - 1


# ---------------------------------------------------------------- the definition itself

@pytest.mark.parametrize("backend", ["torch", "c"])
def test_matches_pure_python_spec(backend):
    if backend == "c" and not _c_backend.available():
        pytest.skip(_c_backend.error())
    g = torch.Generator().manual_seed(1)
    for dtype, m, prot in [(torch.uint8, 8, 0), (torch.int8, 6, 0b100), (torch.int16, 13, 0x0F0),
                           (torch.int32, 32, 0x80000001)]:
        x = rand_words((40,), dtype, g)
        seed, offset = 2**64 - 3, 2**32 - 20  # word indices cross 2^32; both key halves nonzero
        y = kernels.random_flip(x, 0.3, 0.6, seed=seed, bits=m, protected=prot, offset=offset, backend=backend)
        w = WIDTH[dtype]
        for j in range(40):
            want = py_flip_word(pattern(x[j], w), offset + j, seed, m, 0.3, 0.6, prot)
            assert pattern(y[j], w) == want, (dtype, j)


def py_threshold_flip_word(u, i, seed, m, t01, t10, protected=0):
    """The flip rule with a threshold per bit (t01[b], t10[b]), straight from the definition."""
    mask = 0
    for b in range(m):
        if (protected >> b) & 1:
            continue
        r = py_philox((i & 0xFFFFFFFF, i >> 32, b // 4, 0), (seed & 0xFFFFFFFF, seed >> 32))[b % 4]
        if r < (t10[b] if (u >> b) & 1 else t01[b]):
            mask |= 1 << b
    return mask


@pytest.mark.parametrize("classes", [3, 40], ids=["few-classes-kernel-path", "many-classes-reference-path"])
def test_threshold_flip_mask_matches_pure_python_spec(classes):
    """Per-cell thresholds (profiled chips): every cell compared with its own threshold; a few distinct classes
    run on the fast backends, many on the torch reference -- both are the definition."""
    g = torch.Generator().manual_seed(3)
    for dtype, m, prot in [(torch.uint8, 8, 0), (torch.int8, 6, 0b100), (torch.int16, 13, 0x0F0),
                           (torch.int32, 32, 0x80000001)]:
        n = 60
        x = rand_words((n,), dtype, g)
        levels = torch.tensor([0, 2**32] + [int(v) for v in torch.randint(0, 2**32, (classes,), generator=g)])
        t01 = levels[torch.randint(0, levels.numel(), (n, m), generator=g)]
        t10 = levels[torch.randint(0, levels.numel(), (n, m), generator=g)] if classes > 3 else t01
        seed, offset = 2**64 - 5, 2**32 - 30
        mask = kernels.threshold_flip_mask(x, t01, t10, seed=seed, bits=m, protected=prot, offset=offset)
        assert mask.dtype == x.dtype and mask.shape == x.shape
        w = WIDTH[dtype]
        for j in range(n):
            want = py_threshold_flip_word(pattern(x[j], w), offset + j, seed, m, t01[j].tolist(), t10[j].tolist(),
                                          prot)
            assert pattern(mask[j], w) == want, (dtype, j)


def test_threshold_flip_mask_scalar_and_uniform_equal_random_flip_mask():
    g = torch.Generator().manual_seed(4)
    x = rand_words((5, 41), torch.int16, g)
    t = kernels.threshold(0.07)
    ref = kernels.random_flip_mask(x, 0.07, seed=9, bits=12, offset=123)
    assert torch.equal(kernels.threshold_flip_mask(x, t, seed=9, bits=12, offset=123), ref)
    full = torch.full((x.numel(), 12), t, dtype=torch.int64)
    assert torch.equal(kernels.threshold_flip_mask(x, full, full, seed=9, bits=12, offset=123), ref)
    assert torch.equal(kernels.thresholds(torch.tensor([0.0, 0.07, 1.0], dtype=torch.float64)),
                       torch.tensor([0, t, 2**32]))
    with pytest.raises(ValueError, match="thresholds must be integers in"):
        kernels.threshold_flip_mask(x, full + 2**32, seed=9, bits=12)


# ---------------------------------------------------------------- backend equality

def _cases(dtype, gen):
    w = WIDTH[dtype]
    ms = sorted({1, 3, 4, 5, w // 2, w - 1, w})
    shape = (37, 29)  # 1073 words: several SIMD blocks plus a ragged tail
    for m in ms:
        yield dict(bits=m, protected=None, offset=0)
    yield dict(bits=None, protected=0b1010_0101 & ((1 << w) - 1), offset=2**32 - 500)
    yield dict(bits=w - 1, protected=rand_words(shape, dtype, gen), offset=7 * 2**32 + 3)
    yield dict(bits=None, protected=rand_words(shape, dtype, gen).to(torch.int64), offset=2**40)
    yield dict(bits=None, protected=None, offset=2**63 - 37 * 29)  # the last representable words


@needs_c
@pytest.mark.parametrize("simd", [0, 1], ids=["best-simd", "avx2-or-baseline"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_c_equals_torch(dtype, simd):
    g = torch.Generator().manual_seed(10 + WIDTH[dtype])
    x = rand_words((37, 29), dtype, g)
    x0 = x.clone()
    _c_backend.set_simd(simd)
    try:
        for case in _cases(dtype, g):
            for p01, p10 in [(0.05, 0.3), (0.5, 0.5), (1.0, 0.0), (0.0, 0.2)]:
                kw = dict(seed=2**63 + 12345, **case)
                ref = kernels.random_flip(x, p01, p10, backend="torch", **kw)
                got = kernels.random_flip(x, p01, p10, backend="c", **kw)
                assert torch.equal(ref, got), (case, p01, p10)
                mask = kernels.random_flip_mask(x, p01, p10, backend="c", **kw)
                assert torch.equal(mask, kernels.random_flip_mask(x, p01, p10, backend="torch", **kw))
                assert torch.equal(x ^ mask, ref)
    finally:
        _c_backend.set_simd(0)
    assert torch.equal(x, x0)  # input unchanged


@needs_c
def test_c_threads_and_chunks_equal_torch():
    """Large enough for several OpenMP threads and chunks; the thread count does not change the result."""
    x = rand_words((600_001,), torch.uint8, torch.Generator().manual_seed(12))
    ref = kernels.random_flip(x, 0.02, 0.05, seed=77, offset=2**32 - 300_000, backend="torch")
    n_threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            got = kernels.random_flip(x, 0.02, 0.05, seed=77, offset=2**32 - 300_000, backend="c")
            assert torch.equal(got, ref), t
    finally:
        torch.set_num_threads(n_threads)


@pytest.mark.parametrize("backend", ["torch", "c"])
def test_out_noncontiguous_and_inplace(backend):
    if backend == "c" and not _c_backend.available():
        pytest.skip(_c_backend.error())
    g = torch.Generator().manual_seed(3)
    base = rand_words((64, 48), torch.int16, g)
    x = base.t()  # non-contiguous
    assert not x.is_contiguous()
    x0 = x.clone()
    kw = dict(seed=5, bits=12, offset=1000, backend=backend)
    want = kernels.random_flip(x.contiguous(), 0.2, **kw)
    got = kernels.random_flip(x, 0.2, **kw)
    assert torch.equal(got, want) and got.shape == x.shape and got.dtype == x.dtype
    assert torch.equal(x, x0)
    out = torch.empty_like(want)
    r = kernels.random_flip(x, 0.2, out=out, **kw)
    assert r is out and torch.equal(out, want)
    out_nc = torch.empty(64, 48, dtype=torch.int16).t()  # non-contiguous out
    assert kernels.random_flip(x, 0.2, out=out_nc, **kw) is out_nc and torch.equal(out_nc, want)
    y = x.contiguous()
    assert kernels.random_flip(y, 0.2, out=y, **kw) is y and torch.equal(y, want)  # in place
    m = kernels.random_flip_mask(x, 0.2, out=torch.zeros_like(want), **kw)
    assert torch.equal(x ^ m, want)
    # p = 0 shortcut with out
    o2 = torch.zeros_like(want)
    assert torch.equal(kernels.random_flip(x, 0.0, out=o2, **kw), x)


@pytest.mark.parametrize("backend", ["torch", "c"])
def test_offsets_make_one_memory(backend):
    """Flipping tensors at their offsets equals flipping their concatenation."""
    if backend == "c" and not _c_backend.available():
        pytest.skip(_c_backend.error())
    g = torch.Generator().manual_seed(4)
    parts = [rand_words((n,), torch.uint8, g) for n in (100, 1, 517, 3000)]
    whole = kernels.random_flip(torch.cat(parts), 0.1, seed=9, offset=2**32 - 1000, backend=backend)
    off, pieces = 2**32 - 1000, []
    for p in parts:
        pieces.append(kernels.random_flip(p, 0.1, seed=9, offset=off, backend=backend))
        off += p.numel()
    assert torch.equal(torch.cat(pieces), whole)


def test_low_bits_shared_across_m_and_dtypes():
    """Bits 0..3 of a 4-bit code get the same numbers as bits 0..3 of an 8-bit (or 32-bit) code."""
    x = torch.zeros(4000, dtype=torch.uint8)
    a = kernels.random_flip_mask(x, 0.2, seed=11, bits=4)
    b = kernels.random_flip_mask(x, 0.2, seed=11, bits=8)
    c = kernels.random_flip_mask(x.to(torch.int32), 0.2, seed=11)
    assert torch.equal(a, b & 0xF)
    assert torch.equal(b.to(torch.int32), c & 0xFF)
    assert not torch.equal(a, kernels.random_flip_mask(x, 0.2, seed=12, bits=4))


def test_auto_backend_and_env(monkeypatch):
    if os.environ.get("BITBENCH_REQUIRE_C", "") not in ("", "0"):  # e.g. in CI, where the install builds it
        assert _c_backend.available(), _c_backend.error()
    info = kernels.backends()
    assert set(info) >= {"cpu", "cuda", "available", "c_error", "cupy_error"}
    assert "torch" in info["available"]
    assert info["cpu"] == ("c" if _c_backend.available() else "torch")
    assert (info["c_error"] is None) == _c_backend.available()
    if not torch.cuda.is_available():
        assert info["cuda"] is None
    monkeypatch.setenv(kernels.ENV_BACKEND, "torch")
    assert kernels.backends()["cpu"] == "torch"
    assert kernels.resolve_backend("cpu") == "torch"
    monkeypatch.setenv(kernels.ENV_BACKEND, "bogus")
    with pytest.raises(ValueError, match="BITBENCH_KERNEL_BACKEND"):
        kernels.random_flip(torch.zeros(3, dtype=torch.uint8), 0.1, seed=0)


# ---------------------------------------------------------------- statistics

# Each bit flips independently with probability p (Philox output is uniform on [0, 2^32); T(p)/2^32 differs from
# p by < 2^-32), so the flip count over n bits is Binomial(n, p): mean n p, sd sqrt(n p (1 - p)). A correct kernel
# lands outside 5 sd with probability < 6e-7 per check, and the seeds are fixed, so these tests are deterministic;
# a wrong threshold, a dropped/duplicated bit or a reused counter shifts the count by far more than 5 sd at these n.

def _within(count, n, p, k=5.0):
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= k * sd + 1e-9


@pytest.mark.parametrize("backend", backends_cpu())
@pytest.mark.parametrize("p", [0.001, 0.01, 0.1, 0.5])
def test_flip_count_binomial(backend, p):
    n_words = 100_000
    x = rand_words((n_words,), torch.uint8, torch.Generator().manual_seed(5))
    y = kernels.random_flip(x, p, seed=100, backend=backend)
    n_bits = n_words * 8
    assert _within(kernels.hamming_total(x, y), n_bits, p)
    # per bit position too (catches a bit that never or always flips, or a mis-indexed group)
    per_bit = kernels.to_bits(x ^ y).sum(0)
    for b in range(8):
        assert _within(int(per_bit[b]), n_words, p), (b, int(per_bit[b]))


@pytest.mark.parametrize("backend", backends_cpu())
def test_asymmetric_rates(backend):
    n = 50_000
    zeros = torch.zeros(n, dtype=torch.int16)
    ones = torch.full((n,), -1, dtype=torch.int16)
    p01, p10 = 0.02, 0.2
    up = kernels.random_flip(zeros, p01, p10, seed=7, backend=backend)
    down = kernels.random_flip(ones, p01, p10, seed=7, backend=backend)
    assert _within(kernels.hamming_total(zeros, up), 16 * n, p01)
    assert _within(kernels.hamming_total(ones, down), 16 * n, p10)
    # a 0->1 flip never clears a bit, a 1->0 flip never sets one
    assert torch.equal(up & zeros, zeros) and torch.equal(down | ones, ones)


@pytest.mark.parametrize("backend", backends_cpu())
def test_nested_across_rates(backend):
    x = rand_words((20_000,), torch.int8, torch.Generator().manual_seed(6))
    masks = [kernels.random_flip_mask(x, p, seed=123, bits=7, offset=99, backend=backend)
             for p in (0.0, 0.001, 0.01, 0.05, 0.3, 1.0)]
    for lo, hi in zip(masks, masks[1:]):
        assert torch.equal(lo & hi, lo)  # errors at a lower rate are a subset of those at a higher rate
    assert int(masks[0].abs().sum()) == 0
    assert torch.equal(masks[-1], torch.full_like(x, 0x7F))  # p = 1: every attackable bit


@pytest.mark.parametrize("backend", backends_cpu())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_protected_and_extremes(backend, dtype):
    w = WIDTH[dtype]
    g = torch.Generator().manual_seed(8)
    x = rand_words((3000,), dtype, g)
    m = w - 2
    prot_int = 0b1001 | (1 << (w - 1))
    y = kernels.random_flip(x, 1.0, seed=1, bits=m, protected=prot_int, backend=backend)
    full = ((1 << m) - 1) & ~prot_int
    assert all(pattern(v, w) == full for v in (x ^ y).tolist())  # p = 1: exactly the attackable bits flip
    prot_t = rand_words((3000,), dtype, g)
    y = kernels.random_flip(x, 0.5, seed=2, protected=prot_t, backend=backend)
    assert int(((x ^ y) & prot_t).abs().sum()) == 0  # protected bits never flip
    y1 = kernels.random_flip(x, 1.0, seed=2, protected=prot_t, backend=backend)
    assert torch.equal(x ^ y1, ~prot_t)
    assert torch.equal(kernels.random_flip(x, 0.0, seed=3, backend=backend), x)  # p = 0: identical
    assert torch.equal(kernels.random_flip(x, 1.0, 0.0, seed=3, bits=1, backend=backend), x | 1)
    assert torch.equal(kernels.random_flip(x, 1.0, seed=3, protected=-1, backend=backend), x)
    assert kernels.random_flip(x[:0], 0.5, seed=3, backend=backend).numel() == 0


# ---------------------------------------------------------------- errors

def test_errors_name_the_argument():
    x = torch.zeros(10, dtype=torch.uint8)
    cases = [
        (dict(x=torch.zeros(3, dtype=torch.float64)), TypeError, "x"),  # float32/16/bf16/fp8: flipped as raw bits
        (dict(x=torch.zeros(3, dtype=torch.int64)), TypeError, "x has unsupported dtype"),
        (dict(x=[1, 2]), TypeError, "x must be a torch.Tensor"),
        (dict(p01=-0.1), ValueError, "p01"),
        (dict(p01=1.5), ValueError, "p01"),
        (dict(p01=float("nan")), ValueError, "p01"),
        (dict(p01="0.1"), TypeError, "p01"),
        (dict(p10=2.0), ValueError, "p10"),
        (dict(bits=0), ValueError, "bits"),
        (dict(bits=9), ValueError, "bits"),
        (dict(bits=2.5), TypeError, "bits"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(seed=1.0), TypeError, "seed"),
        (dict(offset=-5), ValueError, "offset"),
        (dict(offset=2**63 - 3), ValueError, "offset"),
        (dict(protected=256), ValueError, "protected"),
        (dict(protected=torch.zeros(9, dtype=torch.uint8)), ValueError, "protected"),
        (dict(protected=torch.zeros(10, dtype=torch.float32)), TypeError, "protected"),
        (dict(protected=torch.full((10,), 300)), ValueError, "protected"),
        (dict(protected=torch.zeros(10, dtype=torch.uint8, device="meta")), ValueError, "protected"),
        (dict(protected="x"), TypeError, "protected"),
        (dict(out=torch.zeros(10, dtype=torch.int8)), TypeError, "out"),
        (dict(out=torch.zeros(11, dtype=torch.uint8)), ValueError, "out"),
        (dict(out=torch.zeros(10, dtype=torch.uint8, device="meta")), ValueError, "out"),
        (dict(backend="fpga"), ValueError, "backend"),
        (dict(backend="cupy"), ValueError, "backend"),
    ]
    for kw, exc, msg in cases:
        args = dict(x=x, p01=0.1, seed=1)
        args.update(kw)
        xx = args.pop("x")
        p01 = args.pop("p01")
        with pytest.raises(exc, match=msg):
            kernels.random_flip(xx, p01, **args)
    with pytest.raises(TypeError):
        kernels.random_flip(x, 0.1)  # seed is required
    with pytest.raises(ValueError, match="counter"):
        kernels.philox4x32_10(torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))


def test_c_forced_without_extension(monkeypatch):
    monkeypatch.setattr(_c_backend, "_loaded", True)
    monkeypatch.setattr(_c_backend, "_lib", None)
    monkeypatch.setattr(_c_backend, "_error", "C extension kernels._cpu_flip is not available (test)")
    info = kernels.backends()
    assert info["cpu"] == "torch" and "c" not in info["available"] and "not available" in info["c_error"]
    x = torch.arange(100, dtype=torch.uint8)
    assert kernels.random_flip(x, 0.1, seed=1).shape == x.shape  # falls back to the reference
    with pytest.raises(RuntimeError, match="backend=.c. was requested but C extension"):
        kernels.random_flip(x, 0.1, seed=1, backend="c")


# ---------------------------------------------------------------- GPU

def _need_cupy():
    if not _cupy_backend.available():
        pytest.skip(f"CuPy backend not usable: {_cupy_backend.error()}")


@pytest.mark.gpu
def test_gpu_philox_kat():
    ctr = torch.tensor([c for c, _, _ in KAT], dtype=torch.int64, device="cuda")
    key = torch.tensor([k for _, k, _ in KAT], dtype=torch.int64, device="cuda")
    want = [list(o) for _, _, o in KAT]
    assert kernels.philox4x32_10(ctr, key).cpu().tolist() == want  # torch reference on the GPU
    _need_cupy()
    assert _cupy_backend.philox4x32_10(ctr, key).cpu().tolist() == want


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_backends_equal_cpu_reference(dtype):
    g = torch.Generator().manual_seed(20 + WIDTH[dtype])
    x = rand_words((37, 29), dtype, g)
    xg = x.cuda()
    x0 = xg.clone()
    cuda_backends = ["torch"] + (["cupy"] if _cupy_backend.available() else [])
    for case in _cases(dtype, g):
        for p01, p10 in [(0.05, 0.3), (1.0, 0.0)]:
            kw = dict(seed=2**63 + 12345, **case)
            ref = kernels.random_flip(x, p01, p10, backend="torch", **kw)
            kwg = dict(kw)
            if isinstance(kwg["protected"], torch.Tensor):
                kwg["protected"] = kwg["protected"].cuda()
            for be in cuda_backends:
                got = kernels.random_flip(xg, p01, p10, backend=be, **kwg)
                assert got.device.type == "cuda" and torch.equal(got.cpu(), ref), (be, case, p01, p10)
                mask = kernels.random_flip_mask(xg, p01, p10, backend=be, **kwg)
                assert torch.equal((xg ^ mask).cpu(), ref)
    assert torch.equal(xg, x0)


@pytest.mark.gpu
def test_gpu_cupy_out_noncontiguous_stream_and_large():
    _need_cupy()
    assert kernels.backends()["cuda"] == "cupy"
    g = torch.Generator().manual_seed(21)
    x = rand_words((64, 48), torch.int32, g).cuda().t()
    want = kernels.random_flip(x.cpu(), 0.1, 0.4, seed=3, offset=2**33, backend="torch")
    out = torch.empty(48, 64, dtype=torch.int32, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        r = kernels.random_flip(x, 0.1, 0.4, seed=3, offset=2**33, out=out)
    s.synchronize()
    assert r is out and torch.equal(out.cpu(), want)
    # a large tensor (grid-stride loop): CuPy equals the torch reference on the GPU
    big = torch.randint(0, 256, (3_000_000,), dtype=torch.uint8, device="cuda")
    a = kernels.random_flip(big, 0.01, seed=100, offset=2**32 - 1_000_000, backend="cupy")
    b = kernels.random_flip(big, 0.01, seed=100, offset=2**32 - 1_000_000, backend="torch")
    assert torch.equal(a, b)
    assert _within(kernels.hamming_total(big, a), big.numel() * 8, 0.01)
    with pytest.raises(ValueError, match="backend"):
        kernels.random_flip(big, 0.01, seed=1, backend="c")
    with pytest.raises(ValueError, match="protected"):
        kernels.random_flip(big, 0.01, seed=1, protected=torch.zeros(big.shape, dtype=torch.uint8))


# ---------------------------------------------------------------- the CUDA source, emulated on the host

_EMU = r"""
#include <cstdint>
struct bb_dim3_ { unsigned x, y, z; };
static bb_dim3_ blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
#include "flip_cuda.cu"
#define EMU(W, T)                                                                                            \
extern "C" void emu_flip_u##W(const void *x, void *out, const void *prot, int use_prot, unsigned attack,      \
                              long long n, unsigned long long offset, unsigned k0, unsigned k1, unsigned tm01, \
                              unsigned tm10, unsigned en01, unsigned en10, int mask_only, int grid, int block) { \
    gridDim.x = grid; blockDim.x = block;                                                                    \
    for (int b = 0; b < grid; ++b)                                                                           \
        for (int t = 0; t < block; ++t) {                                                                    \
            blockIdx.x = b; threadIdx.x = t;                                                                 \
            bb_flip_u##W((const T *)x, (T *)out, (const T *)prot, use_prot, attack, n, offset, k0, k1, tm01, \
                         tm10, en01, en10, mask_only);                                                       \
        }                                                                                                    \
}
EMU(8, bb_u8)
EMU(16, bb_u16)
EMU(32, bb_u32)
"""


def test_cuda_source_logic_on_host(tmp_path):
    """Compile kernels/flip_cuda.cu as host C++ (CUDA built-ins emulated, a small grid so that the grid-stride
    loop wraps) and compare it with the torch reference: checks the CUDA kernel's logic without a GPU."""
    import ctypes
    import shutil
    import subprocess

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "emu.cpp"
    src.write_text(_EMU)
    lib_path = tmp_path / "emu.so"
    kdir = os.path.dirname(os.path.abspath(kernels.__file__))
    subprocess.run([cxx, "-O1", "-shared", "-fPIC", "-w", f"-I{kdir}", str(src), "-o", str(lib_path)], check=True,
                   capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    g = torch.Generator().manual_seed(30)
    for dtype in DTYPES:
        w = WIDTH[dtype]
        x = rand_words((1000,), dtype, g)
        prot = rand_words((1000,), dtype, g)
        for bits, p_int, p_t, offset, p01, p10, mask_only in [
                (w, 0, None, 2**32 - 300, 0.1, 0.4, False), (w - 3, 0b110, None, 5, 1.0, 0.0, True),
                (w, 0, prot, 3 * 2**32 + 1, 0.3, 0.3, False), (1, 0, None, 0, 0.5, 0.5, False)]:
            seed = 2**64 - 77
            ref = (kernels.random_flip_mask if mask_only else kernels.random_flip)(
                x, p01, p10, seed=seed, bits=bits, protected=p_t if p_t is not None else p_int, offset=offset,
                backend="torch")
            out = torch.empty_like(x)
            t01, t10 = kernels.threshold(p01), kernels.threshold(p10)
            attack = ((1 << bits) - 1) & ~p_int
            fn = getattr(lib, f"emu_flip_u{w}")
            ctype = {"int32": ctypes.c_int, "uint32": ctypes.c_uint, "int64": ctypes.c_longlong,
                     "uint64": ctypes.c_ulonglong}
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctype[t] for t in _cupy_backend.SCALAR_TYPES] + [ctypes.c_int] * 2
            pt = p_t if p_t is not None else x
            scalars = _cupy_backend.kernel_scalars(p_t is not None, attack, x.numel(), offset, seed, t01, t10,
                                                   mask_only)  # what the CuPy backend passes
            fn(x.data_ptr(), out.data_ptr(), pt.data_ptr(), *scalars, 3, 64)
            assert torch.equal(out, ref), (dtype, bits, p_int, offset, mask_only)
