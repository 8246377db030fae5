"""Memory formats (issue 17): float formats as raw IEEE bits, per-channel and group-wise affine codes, 2..16 bits.

References are independent of the implementation: numpy's float32/float16 views and casts, bfloat16 as the top
16 bits of a float32 (numpy bit arithmetic), fp8 decoded by the bit formula in exact ``Fraction`` arithmetic and
encoded by brute-force nearest search, and the affine formulas of docs/numerics.md in exact
``Fraction`` arithmetic per group. Flip deltas are checked against decoding the whole flipped memory (the path
``load_into`` takes), random flips of float tensors against the kernels' flips of their integer views.
"""
from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bitbench import kernels
from bitbench.attacks import create_attack
from bitbench.configs.record import RecordError, ResultRecord
from bitbench.configs.spec import SpecError
from bitbench.data import load_dataset
from bitbench.defenses import QuantizedModel, QuantScheme, TrainConfig, create_defense, evaluate_error, rquant
from bitbench.defenses.float_formats import FLOAT_KINDS, FloatFormat
from bitbench.defenses.layout import Segments
from bitbench.defenses.qat import FlatQuantizer
from bitbench.models import build_model

KINDS = list(FLOAT_KINDS)


# tiny models: one intra-op thread is as fast and far more robust on a loaded 2-core machine (conftest)
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- float references
def fp_ref(u: int, e_bits: int, m_bits: int, fn: bool) -> Fraction | float:  # float: +-0, inf, NaN
    """The value of the float word ``u`` (unsigned bit pattern) by the IEEE formula, exact; fn: the OCP e4m3 "fn"
    variant (no inf, the all-ones exponent holds normal numbers, S.1111.111 is NaN)."""
    sign = -1 if (u >> (e_bits + m_bits)) & 1 else 1
    e = (u >> m_bits) & ((1 << e_bits) - 1)
    m = u & ((1 << m_bits) - 1)
    bias = (1 << (e_bits - 1)) - 1
    top = (1 << e_bits) - 1
    if fn and e == top and m == (1 << m_bits) - 1:
        return math.nan
    if not fn and e == top:
        return math.nan if m else sign * math.inf
    if e == 0 and m == 0:
        return math.copysign(0.0, sign)
    if e == 0:
        return sign * Fraction(m, 1 << m_bits) * Fraction(2) ** (1 - bias)
    return sign * (1 + Fraction(m, 1 << m_bits)) * Fraction(2) ** (e - bias)


def ref_decode_all(kind: str, words: np.ndarray) -> np.ndarray:
    """float64 reference values of unsigned bit patterns ``words`` (numpy views; fp8 by the formula)."""
    if kind == "float32":
        return words.astype(np.uint32).view(np.float32).astype(np.float64)
    if kind == "float16":
        return words.astype(np.uint16).view(np.float16).astype(np.float64)
    if kind == "bfloat16":
        return (words.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    e, m = FLOAT_KINDS[kind][2:]
    return np.array([float(fp_ref(int(u), e, m, kind == "fp8e4m3")) for u in words], dtype=np.float64)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as IEEE values, NaN where NaN (signed zeros compared by sign too)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nan = np.isnan(a)
    return bool((nan == np.isnan(b)).all() and (a[~nan] == b[~nan]).all()
                and (np.signbit(a[~nan]) == np.signbit(b[~nan])).all())


def all_words(kind: str) -> np.ndarray:
    w = torch.iinfo(FLOAT_KINDS[kind][1]).bits
    if w <= 16:
        return np.arange(1 << w, dtype=np.uint64)
    g = np.random.default_rng(0)
    special = [0, 1, 0x7F7FFFFF, 0x7F800000, 0x7FC00000, 0x80000000, 0xFF800000, 0x007FFFFF, 0x3F800000]
    return np.concatenate([np.array(special, np.uint64), g.integers(0, 1 << 32, 200_000, dtype=np.uint64)])


def as_words(fmt: FloatFormat, u: np.ndarray) -> torch.Tensor:
    return kernels.from_pattern(torch.from_numpy(u.astype(np.int64)), fmt.dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_float_decode_every_word_matches_the_ieee_reference(kind):
    """decode of every word (float32: 200k random words and the specials) equals numpy / the bit formula; fp8
    e4m3 has no inf and exactly two NaN patterns, e5m2 and the IEEE formats have inf; also torch's own float8
    dtypes agree."""
    fmt = FloatFormat(kind)
    u = all_words(kind)
    got = fmt.decode(as_words(fmt, u), dtype=torch.float64).numpy()
    ref = ref_decode_all(kind, u)
    assert same(got, ref)
    assert same(fmt.decode_words(as_words(fmt, u), None, None).numpy(), ref)
    if kind == "fp8e4m3":
        assert np.isnan(ref).sum() == 2 and not np.isinf(ref).any() and np.nanmax(ref) == 448
    if kind == "fp8e5m2":
        assert np.isinf(ref).sum() == 2 and np.nanmax(ref[np.isfinite(ref)]) == 57344
    if kind.startswith("fp8"):
        torch_vals = as_words(fmt, u).view(fmt.float_dtype).to(torch.float64).numpy()
        assert same(torch_vals, ref)


def _samples(max_finite: float, n: int = 4000) -> np.ndarray:
    g = np.random.default_rng(1)
    mag = np.exp(g.uniform(math.log(1e-9), math.log(max_finite), n))
    v = (mag * g.choice([-1, 1], n)).astype(np.float32)
    extra = np.array([0.0, -0.0, 1.0, -1.0, 0.1, 1e-3, 3.0, max_finite], np.float32)
    return np.concatenate([extra, v[np.abs(v) <= max_finite]])


def _ref_encode(kind: str, v: np.ndarray) -> np.ndarray:
    """Reference words (unsigned) of float32 values: numpy casts, bfloat16 round-to-nearest-even on the float32
    bits, fp8 the nearest finite value by brute force (ties: the even mantissa)."""
    if kind == "float32":
        return v.view(np.uint32).astype(np.uint64)
    if kind == "float16":
        return v.astype(np.float16).view(np.uint16).astype(np.uint64)
    if kind == "bfloat16":
        b = v.view(np.uint32).astype(np.uint64)
        return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
    e, m = FLOAT_KINDS[kind][2:]
    table = [(int(u), fp_ref(u, e, m, kind == "fp8e4m3")) for u in range(256)]
    table = [(u, Fraction(x)) for u, x in table if not (isinstance(x, float) and not math.isfinite(x))]
    out = []
    for x in v.tolist():
        fx = Fraction(x)
        u, val = min(table, key=lambda t: (abs(t[1] - fx), t[0] & 1))
        out.append(u | (0x80 if val == 0 and math.copysign(1, x) < 0 else 0))  # a zero keeps the input's sign
    return np.array(out, np.uint64)


@pytest.mark.parametrize("kind", KINDS)
def test_float_encode_matches_reference_casts(kind):
    fmt = FloatFormat(kind)
    v = _samples(fmt.max_finite, 1500 if kind.startswith("fp8") else 4000)
    words, ctx, _ = fmt.quantize(torch.from_numpy(v))
    assert ctx is None and words.dtype == fmt.dtype
    got = kernels.to_pattern(words).numpy().astype(np.uint64)
    ref = _ref_encode(kind, v)
    assert (got == ref).all(), [(float(a), hex(int(b)), hex(int(c))) for a, b, c in zip(v, got, ref) if b != c][:5]
    # decode(encode(w)) is the reference rounding of w
    assert same(fmt.decode(words, dtype=torch.float64).numpy(), ref_decode_all(kind, got))
    if kind not in ("float32", "bfloat16"):  # (beyond their largest value a float32 input is already inf)
        with pytest.raises(SpecError, match="exceeds the largest finite"):
            fmt.quantize(torch.tensor([fmt.max_finite * 1.01, 0.0]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fmt.quantize(torch.tensor([0.5, float("nan")]))


# ---------------------------------------------------------------------------------------- layouts (granularity)
def test_group_and_channel_segments():
    shapes = [(3, 70), (4,), (2, 3, 2, 2), ()]
    s = Segments.of_shapes(shapes, "group:32")
    # rows of 70: groups 32, 32, 6 (the last group of a row is shorter; never across rows); the bias is one row
    assert s.lengths == [32, 32, 6] * 3 + [4] + [12] * 2 + [1]
    c = Segments.of_shapes(shapes, "channel")
    assert c.lengths == [70] * 3 + [4] + [12] * 2 + [1]
    assert Segments.of_shapes(shapes, "tensor").lengths == [210, 4, 24, 1]
    for seg in (s, c):
        ids = seg.ids()
        o = 0
        for t, shape in enumerate(shapes):
            n = math.prod(shape)
            assert torch.equal(seg.segment_of(t, torch.arange(n)), ids[o:o + n])
            o += n


def _affine_ref(vals: list[Fraction], bits: int, w_max: float) -> list[int]:
    """RQuant (clipped asymmetric, unsigned offset codes, round half to even) in exact arithmetic for one range."""
    L, c = (1 << (bits - 1)) - 1, 1 << (bits - 1)
    W = Fraction(w_max)
    lo, hi = max(min(vals), -W), min(max(vals), W)
    step = (1 + Fraction(1, 1000)) / L
    out = []
    for w in vals:
        y = 2 * (w - lo) / (hi - lo) - 1 if hi > lo else Fraction(0)
        x = min(max(y, Fraction(-1)), Fraction(1)) / step + c
        x = min(max(x, Fraction(0)), Fraction((1 << bits) - 1))
        fl = math.floor(x)
        r = x - fl
        out.append(fl + (1 if r > Fraction(1, 2) or (r == Fraction(1, 2) and fl % 2) else 0))
    return out


@pytest.mark.parametrize("gran", ["channel", "group:32", "group:7"])
@pytest.mark.parametrize("bits", [3, 4, 8, 12])
def test_affine_granularity_is_per_tensor_numerics_per_segment(gran, bits):
    """Codes and decoded weights of a per-channel / group-wise scheme equal the per-tensor scheme applied to each
    segment alone, and the exact Fraction formulas (away from rounding boundaries)."""
    g = torch.Generator().manual_seed(bits)
    shapes = [(5, 70), (5,), (3, 2, 3, 3)]
    tensors = [torch.randn(s, generator=g) * 0.3 for s in shapes]
    tensors[1][:] = 0.0                      # a constant segment (a zero bias)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    s = rquant(bits, 1.0, gran)
    per_tensor = rquant(bits, 1.0)
    segs = s.layout(shapes)
    codes, ctx, _ = s.quantize(flat, segs)
    deq = s.decode(codes, ctx, segs)
    assert len(ctx) == len(segs) and codes.dtype == s.dtype
    starts = segs.starts().tolist()
    for k in range(len(segs)):
        a, b = starts[k], starts[k + 1]
        c1, ctx1, _ = per_tensor.quantize(flat[a:b])
        assert torch.equal(codes[a:b], c1), (gran, bits, k)
        assert torch.equal(deq[a:b], per_tensor.decode(c1, ctx1))
        vals = [Fraction(v) for v in flat[a:b].tolist()]
        ref = _affine_ref(vals, bits, 1.0)
        got = s.code_values(codes[a:b]).tolist()
        assert sum(x != y for x, y in zip(got, ref)) <= max(1, (b - a) // 50)  # float32 vs exact at boundaries
        assert all(abs(x - y) <= 1 for x, y in zip(got, ref))
    if not s.signed:
        assert int((kernels.to_pattern(codes) & s.protected).max()) == 0
    # the torch path gives the same as the C path (when the C path handles the scheme)
    import os
    old = os.environ.get("BITBENCH_FUSED_QUANT")
    os.environ["BITBENCH_FUSED_QUANT"] = "0"
    try:
        c2, ctx2, _ = s.quantize(flat, segs)
        assert torch.equal(c2, codes) and torch.equal(s.decode(c2, ctx2, segs), deq)
    finally:
        if old is None:
            os.environ.pop("BITBENCH_FUSED_QUANT")
        else:
            os.environ["BITBENCH_FUSED_QUANT"] = old


@pytest.mark.parametrize("bits,signed", [(b, sg) for b in (2, 3, 4, 5, 7, 9, 12, 15, 16) for sg in (False, True)])
def test_sub_container_words_store_every_code(bits, signed):
    """Every code of an m-bit word round-trips through its container (protected high bits 0); a word reads as its
    m low bits."""
    s = QuantScheme(bits=bits, signed=signed)
    q = torch.arange(s.code_min, s.code_max + 1)
    w = s.store(q)
    assert w.dtype == s.dtype
    assert torch.equal(s.code_values(w).to(torch.int64), q)
    assert int((kernels.to_pattern(w) & s.protected).max()) == 0
    assert torch.equal(s.words_from_code_values(q.double() + 0.3), w)


# ------------------------------------------------------------------------------------------ flips and deltas
def _small_model():
    return build_model("mlp", num_classes=10, in_channels=1, image_size=28, width=16, depth=1, seed=0)


FORMATS = ["float32", "float16", "bfloat16", "fp8e4m3", "fp8e5m2", "bfloat16:bits=exponent",
           "rquant:granularity=channel", "rquant:bits=4,granularity=group:32", "quant:bits=5,signed=true,"
           "granularity=group:16", "rquant:bits=12,granularity=channel"]


@pytest.mark.parametrize("spec", FORMATS)
def test_flip_of_every_bit_changes_the_weight_by_the_reported_delta(spec):
    """``flip_deltas`` (what BFA ranks by) equals decode(memory with bit b of every word flipped) - decode(clean
    memory), the path ``load_into`` takes; protected bits report 0; float words decode as the IEEE reference."""
    model = _small_model()
    qm = create_defense(spec).quantize(model)
    fmt = qm.scheme
    clean = qm.dequantize(dtype=torch.float32).double()
    t = 0
    n = qm.lengths[t]
    idx = torch.arange(n)
    d = qm.flip_deltas(t, idx)
    assert d.shape == (n, qm.bits) and d.dtype == torch.float64
    for b in range(qm.bits):
        flipped = kernels.flip_one_bit(qm.codes, torch.full((qm.n_words,), b))
        after = qm.dequantize(flipped, dtype=torch.float32).double()
        if (int(qm.protected) >> b) & 1:
            assert not bool(d[:, b].any()), b
            continue
        ref = (after - clean)[:n].numpy()
        assert same(d[:, b].numpy(), np.where(np.isnan(after[:n].numpy()), np.nan, ref)), (spec, b)
    if isinstance(fmt, FloatFormat):
        u = kernels.to_pattern(qm.codes).numpy().astype(np.uint64)
        assert same(clean.numpy(), ref_decode_all(fmt.kind, u))
        qm.load_into(model)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
        assert torch.equal(flat, clean)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["torch", "c"])
def test_random_flips_on_floats_are_the_integer_view_flips(kind, backend):
    if backend not in kernels.backends()["available"]:
        pytest.skip(f"{backend} kernels not built")
    fdt, idt = FLOAT_KINDS[kind][:2]
    x = (torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 0.1).to(fdt)
    got = kernels.random_flip(x, 0.01, seed=7, offset=11, backend=backend)
    assert got.dtype == fdt
    ref = kernels.random_flip(x.view(idt), 0.01, seed=7, offset=11, backend=backend)
    assert torch.equal(got.view(idt), ref)
    mask = kernels.random_flip_mask(x, 0.01, seed=7, offset=11, backend=backend)
    assert mask.dtype == idt and torch.equal(x.view(idt) ^ mask, ref)
    # the same chip across formats of one width: the flips of the float words equal those of the affine words
    same_width = torch.zeros(5000, dtype=idt)
    assert torch.equal(kernels.random_flip_mask(same_width, 0.01, seed=7, offset=11, backend=backend), mask)


def test_float_attack_pattern_flips_the_raw_words():
    """A random attack on a float format flips the words as the kernel flips their integer view; a protected field
    never flips."""
    model = _small_model()
    qm = create_defense("bfloat16:bits=exponent").quantize(model)
    p = next(create_attack("random_p0.01", patterns=1).perturbations(qm))
    diff = kernels.to_pattern(p.codes ^ qm.codes)
    assert int(diff.count_nonzero()) > 0
    assert int((diff & int(qm.protected)).max()) == 0 and int(qm.protected) == 0x807F
    # MSB-only errors flip bit m-1: the sign of a float word, bit 3 of a 4-bit code in its uint8 container
    for spec, msb in (("bfloat16", 1 << 15), ("rquant:bits=4,granularity=group:32", 1 << 3), ("fp8e5m2", 1 << 7)):
        q = create_defense(spec).quantize(model)
        d = kernels.to_pattern(next(create_attack("random_msb_p0.1", patterns=1).perturbations(q)).codes ^ q.codes)
        assert set(d.unique().tolist()) == {0, msb}, spec


# ---------------------------------------------------------------------------------------- training and storing
def test_training_uses_the_formats_straight_through_quantization():
    model = _small_model()
    s = rquant(4, 1.0, "group:32")
    fq = FlatQuantizer(model, s)
    ref = QuantizedModel.from_module(model, s).dequantize()
    with fq.straight_through():
        inside = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(inside, ref)
    assert create_defense("randbet:granularity=channel").training_scheme().granularity == "channel"
    assert create_defense("bfloat16").training_scheme() is None  # float training


def test_float_formats_share_one_trained_model():
    a, b = create_defense("float32"), create_defense("bfloat16:bits=mantissa")
    assert a.identity() == b.identity() and a.checkpoint_name == b.checkpoint_name == "float"
    assert create_defense("float32:w_max=none").identity() != a.identity()
    assert a.identity() != create_defense("normal").identity()


def test_quantized_model_roundtrip_for_formats(tmp_path):
    model = _small_model()
    for spec in ("fp8e5m2", "rquant:bits=4,granularity=group:32"):
        qm = create_defense(spec).quantize(model)
        qm.save(tmp_path / "q.pt")
        back = QuantizedModel.load(tmp_path / "q.pt")
        assert back.scheme == qm.scheme and torch.equal(back.codes, qm.codes)
        assert torch.equal(back.dequantize(), qm.dequantize())


# ---------------------------------------------------------------------------------------------- records
def test_record_nonfinite_field_roundtrip_and_validation(tmp_path):
    from bitbench.configs.record import PatternResult
    rec = ResultRecord(suite="s", dataset="d", eval_split="test", eval_split_rule="r", n_eval=10, model="m",
                       model_options={}, n_params=1, defense="float32", defense_name="float32", defense_params={},
                       bits=32, scheme="float32", attack="random_p0.1", attack_name="random", attack_params={},
                       attack_kind="random", rate=0.1, flips=None, clean_err=0.1,
                       patterns=[PatternResult(0, 1, 0.5, 0.5, nonfinite=3, masked=5, due=3, sdc=2),
                                 PatternResult(1, 2, 0.1, 0.1, masked=10)],
                       train_seed=0, version="0", git_rev=None, config_hash="h", clean_nonfinite=0,
                       date="2026-01-01T00:00:00+00:00")
    d = rec.to_json()
    assert d["patterns"]["nonfinite"] == [3, 0] and d["clean"]["nonfinite"] == 0
    back = ResultRecord.from_json(d)
    assert back.nonfinite == {"clean": 0, "per_pattern": [3, 0], "patterns": 1}
    assert [p.nonfinite for p in back.patterns] == [3, 0]
    bad = json.loads(json.dumps(d))
    bad["patterns"]["nonfinite"][0] = 11          # more than the 10 evaluated inputs
    with pytest.raises(RecordError, match=r"patterns\.nonfinite\[0\]: 11 is more than the 10 evaluated examples"):
        ResultRecord.from_json(bad)
    # the run table says how many patterns had inputs with non-finite logits (only when some had)
    from bitbench.tables import run_table
    back.cached = True
    assert run_table([back])["Non-finite patterns"].tolist() == ["1/2"]
    assert "Non-finite patterns" not in run_table([dataclasses.replace(back, patterns=[
        dataclasses.replace(p, nonfinite=0) for p in back.patterns])]).columns


# ----------------------------------------------------------------------------------- attacks on every format
@pytest.fixture(scope="module")
def trained(one_thread):
    ds = load_dataset("mnist5k")
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=28, width=32, depth=1, seed=0)
    create_defense("float32").train(model, ds.train_x[:2000], ds.train_y[:2000],
                                    TrainConfig(epochs=3, lr=0.05, schedule="constant", progress=False))
    return SimpleNamespace(ds=ds, model=model, data=(ds.attack_x, ds.attack_y))


def _err(env, qm, codes=None):
    qm.load_into(env.model, codes)
    try:
        return evaluate_error(env.model, env.ds.test_x, env.ds.test_y)
    finally:
        qm.load_into(env.model)


@pytest.mark.parametrize("spec", ["bfloat16", "rquant:granularity=channel"])
def test_bfa_and_budget_on_bf16_and_per_channel(trained, spec):
    """BFA and the budgeted attack stay within their budgets and raise the attacker loss (and the error)."""
    qm = create_defense(spec).quantize(trained.model)
    clean, clean_err = qm.codes.clone(), _err(trained, qm)
    assert clean_err < 0.3
    p = next(create_attack("bfa_n5:trials=1,stop=budget").perturbations(qm, model=trained.model,
                                                                        data=trained.data))
    flips = kernels.hamming_total(clean, p.codes, bits=qm.bits)
    assert flips == p.info["flips"] == len(p.trace) <= 5 and flips >= 1
    assert torch.equal(qm.codes, clean)
    assert p.trace[-1]["loss"] > p.trace[0]["loss"] or flips == 1
    assert _err(trained, qm, p.codes) > clean_err + 0.02
    b = next(create_attack("budget_e10:iterations=5,trials=1").perturbations(qm, model=trained.model,
                                                                             data=trained.data))
    per_word = kernels.hamming_distance(clean, b.codes)
    assert int(per_word.max()) <= 1 and int(per_word.sum()) == b.info["flips"] <= 10
    assert int((kernels.to_pattern(b.codes ^ clean) & int(qm.protected)).max()) == 0
    assert b.info["flips"] >= 1
    assert _err(trained, qm, b.codes) > clean_err


def test_error_maps_on_float_and_group_formats(tmp_path):
    """An error map (per-cell rates) attacks the raw words of every format; protected bits never flip."""
    from bitbench.attacks.error_map import save_error_map
    model = _small_model()
    for spec, cols in (("float32", 32), ("bfloat16:bits=mantissa", 16), ("rquant:bits=4,granularity=group:32", 4)):
        qm = create_defense(spec).quantize(model)
        path = tmp_path / f"{cols}.npz"
        save_error_map(path, p=np.full((qm.n_words // 64 + 1, 64, cols), 0.02))
        p = next(create_attack(f"errmap:file={path}", patterns=1).perturbations(qm))
        d = kernels.to_pattern(p.codes ^ qm.codes)
        assert int(d.count_nonzero()) > 0 and int((d & int(qm.protected)).max()) == 0, spec
