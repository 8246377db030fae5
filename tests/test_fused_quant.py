"""The C accelerator (CPU) against the torch path of the quantization schemes: the same bits, on memories large
enough for the chunked, multi-threaded loops (the known-answer grids of test_quantization.py run both paths too)."""

from __future__ import annotations

import pytest
import torch

from bitbench.defenses.quantization import QuantContext, QuantScheme, Segments, normal, rquant
from bitbench.kernels import fused_quant

pytestmark = pytest.mark.skipif(not fused_quant.fused_available(), reason="C extension not built")

SCHEMES = [rquant(8), rquant(8, 0.1), rquant(4, 0.05), rquant(2), normal(8), normal(3),
           QuantScheme(bits=8, signed=True), QuantScheme(bits=8, signed=True, range="clipped", w_max=0.2,
                                                         rounding="trunc"),
           QuantScheme(bits=16, signed=True, asymmetric=True), QuantScheme(bits=6, rounding="trunc"),
           QuantScheme(bits=8, range="fixed", asymmetric=True, q_min=-0.1, q_max=0.3, rounding="trunc")]


def memory(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = [1, 7, 300, 5000, 140_000, 3, 2]
    parts = [torch.randn(n, generator=g) * s for n, s in zip(lengths, [0.3, 1.0, 0.05, 0.2, 0.01, 5.0, 0.0])]
    parts[3][:10] = 0.5
    parts.append(torch.full((64,), 0.7))  # all beyond w_max: a degenerate clipped range
    lengths.append(64)
    return torch.cat(parts), Segments(lengths)


def torch_path(monkeypatch, fn):
    monkeypatch.setenv("BITBENCH_FUSED_QUANT", "0")
    try:
        return fn()
    finally:
        monkeypatch.setenv("BITBENCH_FUSED_QUANT", "1")


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_c_equals_torch_path(scheme, threads, monkeypatch):
    w, segs = memory(threads)
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert fused_quant.supports(scheme)
        deq = torch.empty_like(w)
        codes, ctx, done = scheme.quantize(w, segs, deq_out=deq)
        assert done
        rc, rctx, rdone = torch_path(monkeypatch, lambda: scheme.quantize(w, segs, deq_out=torch.empty_like(w)))
        assert not rdone
        assert torch.equal(codes, rc) and ctx.equal(rctx)
        ref = torch_path(monkeypatch, lambda: scheme.decode(rc, rctx, segs))
        assert torch.equal(deq, ref)
        # bit errors everywhere (every storage value): C decoding == torch decoding
        noisy = torch.randint(0, 256, (w.numel(),), dtype=torch.int32).to(scheme.dtype)
        assert torch.equal(scheme.decode(noisy, ctx, segs),
                           torch_path(monkeypatch, lambda: scheme.decode(noisy, ctx, segs)))
    finally:
        torch.set_num_threads(n)


def test_in_place_decode_into_the_weights():
    w, segs = memory(3)
    scheme = rquant(8, 0.1)
    ref_codes, ctx, _ = scheme.quantize(w, segs)
    buf = w.clone()  # the decoded values overwrite the weights they come from
    codes, _, done = scheme.quantize(buf, segs, deq_out=buf)
    assert done and torch.equal(codes, ref_codes) and torch.equal(buf, scheme.decode(codes, ctx, segs))


def test_not_applicable_returns_false():
    w = torch.randn(10, dtype=torch.float64)
    st = Segments([10]).starts()
    ctx = QuantContext(*(torch.ones(1, dtype=torch.float64) for _ in range(3)))
    assert not fused_quant.encode(rquant(8), w, st, ctx, torch.empty(10, dtype=torch.uint8))
    assert not fused_quant.decode(QuantScheme(bits=32, signed=True), torch.zeros(10, dtype=torch.int32), st, ctx,
                                  torch.empty(10))
    assert fused_quant.segment_minmax(torch.randn(5), Segments([5, 0]).starts(), need_abs=True) is None
