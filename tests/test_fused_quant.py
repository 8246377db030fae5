"""The C fused quantizer (CPU) against the torch path of defenses.quantization: the same bits."""

from __future__ import annotations

import pytest
import torch

from bitbench import kernels
from bitbench.defenses.quantization import QuantScheme, normal, quantize_flat_fused, rquant, segment_ids, segment_starts

pytestmark = pytest.mark.skipif(not kernels.fused_available(),
                                reason=f"C extension not built: {kernels.backends()['c_error']}")

SCHEMES = [rquant(8), rquant(8, 0.1), rquant(4, 0.05), rquant(2), normal(8), normal(3),
           QuantScheme(bits=8, signed=True), QuantScheme(bits=8, signed=True, range="clipped", w_max=0.2,
                                                         rounding="trunc"),
           QuantScheme(bits=16, signed=True, asymmetric=True), QuantScheme(bits=6, rounding="trunc")]


def memory(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = [1, 7, 300, 5000, 70_000, 3, 2]
    parts = [torch.randn(n, generator=g) * s for n, s in zip(lengths, [0.3, 1.0, 0.05, 0.2, 0.01, 5.0, 0.0])]
    parts[3][:10] = 0.5  # ties at .5 codes appear through the scaling as well
    parts.append(torch.full((64,), 0.7))  # all beyond w_max: a degenerate clipped range
    lengths.append(64)
    return torch.cat(parts), lengths


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_equals_torch_path(scheme, seed):
    w, lengths = memory(seed)
    seg = segment_ids(lengths)
    starts = segment_starts(lengths)
    ref_codes, ref_scale, ref_mid, done = quantize_flat_fused(w, seg, len(lengths), scheme, lengths=lengths)
    assert not done
    deq = torch.empty_like(w)
    codes, scale, mid, done = quantize_flat_fused(w, seg, len(lengths), scheme, lengths=lengths, starts=starts,
                                                  deq_out=deq)
    assert done
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale) and torch.equal(mid, ref_mid)
    # dequantization: fused C == torch expression (code - center) * scale + mid
    ref = (ref_codes.to(torch.float32) - scheme.center) * ref_scale[seg] + ref_mid[seg]
    assert torch.equal(deq, ref)
    out = torch.empty_like(w)
    assert kernels.fused_dequant(codes, starts, mid, scale, center=scheme.center, out=out)
    assert torch.equal(out, ref)


def test_not_applicable_returns_false():
    w = torch.randn(10, dtype=torch.float64)
    st = segment_starts([10])
    one = torch.ones(1, dtype=torch.float64)
    assert not kernels.fused_quant_dequant(w, st, one, one, one, one, rounding=True, center=0,
                                           codes=torch.empty(10, dtype=torch.int32))
    assert kernels.fused_segment_minmax(torch.randn(5), segment_starts([5, 0]), need_abs=True) is None


def test_fused_without_dequantized_output_and_in_place():
    w, lengths = memory(3)
    scheme = rquant(8, 0.1)
    seg, starts = segment_ids(lengths), segment_starts(lengths)
    ref = quantize_flat_fused(w, seg, len(lengths), scheme, lengths=lengths)
    codes, *_ , done = quantize_flat_fused(w, seg, len(lengths), scheme, lengths=lengths, starts=starts)
    assert not done and torch.equal(codes, ref[0])
    buf = w.clone()  # in place: the dequantized values overwrite the weights they come from
    codes2, scale, mid, done = quantize_flat_fused(buf, seg, len(lengths), scheme, lengths=lengths, starts=starts,
                                                   deq_out=buf)
    assert done and torch.equal(codes2, ref[0])
    assert torch.equal(buf, (ref[0].float() - scheme.center) * ref[1][seg] + ref[2][seg])
