"""Bit errors in the quantization metadata (defenses.metadata, random_p{p}:meta=exposed|only), checked against numpy
decodes of the flipped bits and the flip rule written out (the philox_mask fixture)."""

import numpy as np
import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.attacks import SpecError, create_attack
from bitbench.defenses import QuantizedModel, QuantScheme, create_defense, rquant
from bitbench.defenses.float_formats import FloatFormat
from bitbench.defenses.metadata import metadata_fields, metadata_offset, metadata_region
from bitbench.evaluate import NONFINITE, evaluate_attack, predict


def _module(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m


SCHEMES = {
    "u4-group8": rquant(4, granularity="group:8"),                               # asymmetric: lo, hi
    "u8-tensor": rquant(8),
    "s8-channel": QuantScheme(bits=8, signed=True, granularity="channel"),       # symmetric: lo, hi, step
    "s32-tensor": QuantScheme(bits=32, signed=True),                             # float64 context: two words each
}


def _np_values(region, words):
    w = np.ascontiguousarray(words.cpu().numpy().astype(np.int32))
    return w.view(np.float32 if region.per_value == 1 else np.float64).reshape(-1, len(region.fields))


def _np_decode(qm, lo, hi, step):
    """The decode formulas of defenses/quantization.py in numpy, one operation at a time in the compute dtype, with
    numpy's clamps (np.minimum(np.maximum(t, lo), hi): NaN propagates)."""
    s = qm.scheme
    dt = np.float32 if s.compute_dtype == torch.float32 else np.float64
    seg = qm.segments.ids().numpy()
    q = s.code_values(qm.codes).to(torch.int64).numpy()
    t = (q - s.center).astype(dt)
    lo, hi, step = (np.asarray(v, dtype=dt) for v in (lo, hi, step))
    with np.errstate(all="ignore"):
        if s.asymmetric:
            t = t * step[0]
            t = np.minimum(np.maximum(t, dt(-1)), dt(1))
            t = t + dt(1)
            t = t / dt(2)
            t = t * (hi - lo)[seg]
            t = t + lo[seg]
        else:
            t = t * step[seg]
        return np.minimum(np.maximum(t, lo[seg]), hi[seg])


def _same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_metadata_words_hold_the_context_bits(name):
    qm = QuantizedModel.from_module(_module(), SCHEMES[name])
    r = metadata_region(qm)
    ctx = qm.context
    assert r.fields == metadata_fields(qm.scheme) == (("lo", "hi") if qm.scheme.asymmetric else ("lo", "hi", "step"))
    assert r.offset == qm.n_words == metadata_offset(qm) and r.bits == 32
    assert r.n_words == len(qm.segments) * len(r.fields) * (2 if name == "s32-tensor" else 1)
    vals = _np_values(r, r.words)                                   # segment-major, the fields in order
    for i, f in enumerate(r.fields):
        assert _same(vals[:, i], getattr(ctx, f).numpy())
    # the clean words give back the stored context exactly
    back = r.context(r.words)
    assert all(torch.equal(getattr(back, f).view(-1), getattr(ctx, f).view(-1)) for f in ("lo", "hi", "step"))
    # each tensor's segments are one contiguous run of words
    k = r.words_per_segment
    for t in range(len(qm.names)):
        segs = qm.segments.segment_of(t, torch.arange(qm.lengths[t])).unique()
        a, n = r.segment_range(t)
        assert (a, n) == (int(segs.min()) * k, segs.numel() * k)


def test_metadata_follows_the_check_words_of_a_protected_memory():
    m = _module()
    pm = create_defense("rquant:granularity=group:8+secded").quantize(m)
    r = metadata_region(pm)
    assert r.offset == pm.image_words == pm.n_words + sum(c.n_words for c in pm.check_regions) > pm.n_words


def test_float_formats_have_no_metadata():
    qm = QuantizedModel.from_module(_module(), FloatFormat("bfloat16"))
    r = metadata_region(qm)
    assert r.n_words == 0 and r.fields == ()
    pert = next(create_attack("random_p0.01:meta=exposed,patterns=1").perturbations(qm))
    assert pert.context is None and "meta_flips" not in pert.info


@pytest.mark.parametrize("bit", [0, 22, 23, 30, 31])
def test_flipped_group_range_changes_exactly_that_group(bit):
    """A known flip of one group's hi word (per-group int4, asymmetric) decodes as numpy decodes the flipped bits;
    every weight outside the group keeps its value bit for bit."""
    qm = QuantizedModel.from_module(_module(), SCHEMES["u4-group8"])
    r = metadata_region(qm)
    s = qm.segments.tensors[0][0] + 5                  # a group of the first weight matrix
    words = r.words.numpy().copy()
    words.view(np.uint32)[r.word(s, "hi")] ^= np.uint32(1 << bit)
    ctx = r.context(torch.from_numpy(words))
    got = qm.dequantize(context=ctx).numpy()
    vals = _np_values(r, torch.from_numpy(words))
    ref = _np_decode(qm, vals[:, 0], vals[:, 1], qm.context.step.numpy())
    assert _same(got, ref)
    clean = qm.dequantize().numpy()
    seg = qm.segments.ids().numpy()
    changed = ~((got == clean) | (np.isnan(got) & np.isnan(clean)))
    assert not changed[seg != s].any()
    assert _same(got[seg != s], clean[seg != s])
    assert changed[seg == s].any()


def test_flipped_channel_step_of_a_symmetric_scheme():
    qm = QuantizedModel.from_module(_module(), SCHEMES["s8-channel"])
    r = metadata_region(qm)
    s = qm.segments.tensors[2][0] + 3                  # row 3 of the second weight matrix
    for bit in (23, 31):                               # x2 (saturates at the range), sign (mirrors the weights)
        words = r.words.numpy().copy()
        words.view(np.uint32)[r.word(s, "step")] ^= np.uint32(1 << bit)
        got = qm.dequantize(context=r.context(torch.from_numpy(words))).numpy()
        vals = _np_values(r, torch.from_numpy(words))
        assert _same(got, _np_decode(qm, vals[:, 0], vals[:, 1], vals[:, 2]))
        seg = qm.segments.ids().numpy()
        clean = qm.dequantize().numpy()
        assert np.array_equal(got[seg != s], clean[seg != s]) and not np.array_equal(got[seg == s], clean[seg == s])


def test_float64_context_words():
    qm = QuantizedModel.from_module(_module(), SCHEMES["s32-tensor"])
    r = metadata_region(qm)
    words = r.words.numpy().copy()
    words.view(np.uint32)[r.word(1, "hi", half=1)] ^= np.uint32(1 << 20)   # a mantissa bit of the high half
    vals = _np_values(r, torch.from_numpy(words))
    ctx = r.context(torch.from_numpy(words))
    assert float(ctx.hi[1]) == float(vals[1, 1]) != float(qm.context.hi[1])
    assert _same(qm.dequantize(context=ctx, dtype=torch.float64).numpy(), _np_decode(qm, *vals.T))


def test_nonfinite_ranges_decode_as_numpy_and_count_as_nonfinite():
    """A range word flipped to NaN or inf never crashes: the group's weights decode as numpy says (NaN / inf), the
    logits go non-finite and those inputs count as errors."""
    m = _module()
    qm = QuantizedModel.from_module(m, SCHEMES["u4-group8"])
    r = metadata_region(qm)
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(1))
    for value in (np.float32("nan"), np.float32("inf"), np.float32("-inf")):
        words = r.words.numpy().copy()
        words.view(np.float32)[r.word(2, "lo")] = value             # group 2 of the first layer
        ctx = r.context(torch.from_numpy(words))
        assert r.nonfinite(torch.from_numpy(words)) == 1
        vals = _np_values(r, torch.from_numpy(words))
        got = qm.dequantize(context=ctx).numpy()
        assert _same(got, _np_decode(qm, vals[:, 0], vals[:, 1], qm.context.step.numpy()))
        assert not np.isfinite(got[qm.segments.ids().numpy() == 2]).all()
        qm.load_into(m, context=ctx)
        pred = predict(m, x)
        with torch.no_grad():
            bad = ~torch.isfinite(m(x)).all(1)
        assert bad.any() and torch.equal(pred == NONFINITE, bad)
    qm.load_into(m)


def _flipped(words, offset, seed, p, philox_mask, bits=range(32)):
    mask = philox_mask(offset + torch.arange(words.numel()), seed, p, list(bits))
    return kernels.from_pattern(kernels.to_pattern(words) ^ mask, words.dtype)


@pytest.mark.parametrize("defense", ["rquant:bits=4,granularity=group:8", "rquant:bits=4,granularity=group:8+secded"])
def test_random_meta_exposed_follows_the_flip_rule(defense, philox_mask):
    qm = create_defense(defense).quantize(_module())
    r = metadata_region(qm)
    plain = list(create_attack("random_p0.05:patterns=3,base_seed=11").perturbations(qm))
    exposed = list(create_attack("random_p0.05:patterns=3,base_seed=11,meta=exposed").perturbations(qm))
    only = list(create_attack("random_p0.05:patterns=3,base_seed=11,meta=only").perturbations(qm))
    for a, b, c in zip(plain, exposed, only):
        assert a.context is None                              # default: the ranges are protected, as before
        assert torch.equal(a.codes, b.codes)                   # the data chip is the same chip
        assert (a.check is None) == (b.check is None) and all(torch.equal(x, y) for x, y in
                                                               zip(a.check or [], b.check or []))
        want = _flipped(r.words, r.offset, b.seed, 0.05, philox_mask)
        assert b.info["meta_flips"] == kernels.hamming_total(r.words, want) > 0
        ctx = r.context(want)
        for ctx_got in (b.context, c.context):
            for f in ("lo", "hi", "step"):
                assert torch.equal(getattr(ctx_got, f).view(torch.int32), getattr(ctx, f).view(torch.int32))
        assert torch.equal(c.codes, qm.codes) and c.check is None and c.info["flips"] == 0
        assert b.info["meta_nonfinite"] == r.nonfinite(want)


def test_meta_errors_nested_layers_and_msb(philox_mask):
    qm = QuantizedModel.from_module(_module(), SCHEMES["u4-group8"])
    r = metadata_region(qm)

    def words(spec):
        pert = next(create_attack(spec).perturbations(qm))
        return r.words if pert.context is None else torch.stack(
            [pert.context.lo, pert.context.hi], 1).reshape(-1).view(torch.int32)

    lo, hi = words("random_p0.01:patterns=1,meta=only"), words("random_p0.05:patterns=1,meta=only")
    m_lo, m_hi = kernels.to_pattern(lo ^ r.words), kernels.to_pattern(hi ^ r.words)
    assert int((m_lo & ~m_hi).count_nonzero()) == 0 and int(m_lo.count_nonzero()) < int(m_hi.count_nonzero())
    # layers: only the segments of the selected tensor take errors, exactly the full pattern's flips there
    sel = kernels.to_pattern(words("random_p0.05:patterns=1,meta=only,layers=2.weight") ^ r.words)
    a, n = r.segment_range(qm.index("2.weight"))
    assert int(sel[:a].count_nonzero()) == 0 and int(sel[a + n:].count_nonzero()) == 0
    assert torch.equal(sel[a:a + n], m_hi[a:a + n])
    # MSB only: bit 31 (the sign) of the metadata words, the same Philox numbers
    msb = kernels.to_pattern(words("random_msb_p0.05:patterns=1,meta=only") ^ r.words)
    assert torch.equal(msb, m_hi & (1 << 31))
    # bit=: one position only
    b23 = kernels.to_pattern(words("random_p0.05:patterns=1,meta=only,bit=23") ^ r.words)
    assert torch.equal(b23, m_hi & (1 << 23))


def test_meta_exposed_costs_on_group_int4_and_counts_nonfinite():
    """End to end: the flipped ranges reach the evaluation; non-finite logits are counted per pattern."""
    m = _module()
    qm = QuantizedModel.from_module(m, SCHEMES["u4-group8"])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 24, generator=g)
    qm.load_into(m)
    y = predict(m, x)                                          # labels: the clean predictions (clean error 0)
    prot = evaluate_attack(m, qm, create_attack("random_p0.05:patterns=4"), x, y)
    exp = evaluate_attack(m, qm, create_attack("random_p0.05:patterns=4,meta=exposed"), x, y)
    assert prot.clean_err == exp.clean_err == 0
    r = metadata_region(qm)
    for pr, pe in zip(prot.patterns, exp.patterns):
        pert = next(create_attack("random_p0.05:patterns=4,meta=exposed").perturbations(qm, indices=[pe.index]))
        qm.load_into(m, pert.codes, context=pert.context)
        with torch.no_grad():
            logits = m(x)
        bad = ~torch.isfinite(logits).all(1)
        assert pe.nonfinite == int(bad.sum())
        wrong = torch.where(bad, torch.full_like(y, NONFINITE), logits.argmax(1)) != y
        assert pe.err == wrong.sum().item() / 200
        words = torch.stack([pert.context.lo, pert.context.hi], 1).reshape(-1).view(torch.int32)
        assert pe.info["meta_nonfinite"] == r.nonfinite(words)
    assert sum(exp.per_pattern_err) > sum(prot.per_pattern_err)
    qm.load_into(m)


def test_meta_spec_errors():
    with pytest.raises(SpecError, match="meta must be one of protected, exposed, only"):
        create_attack("random_p0.01:meta=yes")
    qm = QuantizedModel.from_module(_module(), rquant(4))
    with pytest.raises(SpecError, match="bit=40"):
        create_attack("random_p0.01:bit=40").check(qm)
    create_attack("random_p0.01:bit=20,meta=only").check(qm)     # a metadata word has 32 bits
