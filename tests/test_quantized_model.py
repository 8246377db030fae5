"""The quantized model (defenses/quantized_model.py) and the straight-through helper (defenses/qat.py).

References are independent of the flat path under test: per-tensor quantize_tensor/dequantize_tensor, a deep copy of
the module holding dequantized weights, and the kernels' bit functions.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitbench import kernels
from bitbench.models import Normalize, build_model
from bitbench.defenses.norms import ReparamBatchNorm2d, effective_weight
from bitbench.defenses.qat import FlatQuantizer
from bitbench.defenses.quantization import QuantScheme, dequantize_tensor, normal, quantize_tensor, rquant
from bitbench.defenses.quantized_model import FORMAT, QuantizedModel, select_parameters


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


class Net(nn.Module):
    """Whitening layer (buffers), conv + batch norm (running-stat buffers), reparameterized batch norm, linear."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize((0.5,), (0.25,))
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1, bias=False)
        self.rbn = ReparamBatchNorm2d(3)
        self.fc = nn.Linear(3 * 6 * 6, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(self.normalize(x))))
        x = F.relu(self.rbn(self.conv2(x)))
        return self.fc(x.flatten(1))


def make_net(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Net()
        with torch.no_grad():  # non-trivial norm parameters and running statistics
            net.bn.weight.uniform_(0.5, 1.5)
            net.bn.bias.uniform_(-0.2, 0.2)
            net.bn.running_mean.uniform_(-0.1, 0.1)
            net.bn.running_var.uniform_(0.5, 2.0)
            net.rbn.weight.uniform_(-0.05, 0.05)
    return net.eval()


def lenet(seed=0, norm="none"):
    return build_model("lenet", num_classes=10, in_channels=1, image_size=28, norm=norm, mean=(0.13,),
                       std=(0.31,), seed=seed)


SCHEMES = [rquant(8), rquant(4, 0.1), normal(8), QuantScheme(bits=16, signed=True),
           QuantScheme(bits=8, signed=True, range="clipped", w_max=0.2, rounding="trunc"),
           QuantScheme(bits=32, signed=True, asymmetric=True)]


# ------------------------------------------------------------------------------------------------------ layout

def test_layout_follows_named_parameters_and_excludes_buffers():
    net = make_net()
    qm = QuantizedModel.from_module(net, rquant(8))
    params = list(net.named_parameters())
    assert qm.names == [n for n, _ in params]
    assert qm.shapes == [p.shape for _, p in params]
    assert qm.lengths == [p.numel() for _, p in params]
    expect_offsets, o = [], 0
    for _, p in params:
        expect_offsets.append(o)
        o += p.numel()
    assert qm.offsets == expect_offsets
    assert qm.n_words == o == qm.codes.numel() and len(qm) == len(params)
    assert qm.n_bits == o * 8 and qm.bits == 8 and qm.protected == 0 and qm.dtype == torch.uint8
    buffers = {n for n, _ in net.named_buffers()}
    assert {"normalize.mean", "normalize.std", "bn.running_mean", "bn.running_var", "rbn.running_var"} <= buffers
    assert not buffers & set(qm.names)
    # each view is the tensor's quantization, in C order
    for name, view in zip(qm.names, qm.views()):
        assert torch.equal(view, quantize_tensor(dict(params)[name], rquant(8))[0])
        assert torch.equal(qm.tensor(name), view)
    assert "QuantizedModel(" in repr(qm)


def test_layout_lenet_with_whitening_and_batch_norm():
    model = lenet(norm="bn")
    qm = QuantizedModel.from_module(model, rquant(8))
    assert qm.names == [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("normalize.") or "running" in n for n in qm.names)
    assert qm.n_words == sum(p.numel() for p in model.parameters())


def test_include_exclude_patterns():
    net = make_net()
    all_names = [n for n, _ in net.named_parameters()]
    qm = QuantizedModel.from_module(net, rquant(8), include="conv*,fc.weight")
    assert qm.names == [n for n in all_names if n.startswith("conv") or n == "fc.weight"]
    assert qm.offsets[0] == 0 and qm.n_words == sum(dict(net.named_parameters())[n].numel() for n in qm.names)
    qm = QuantizedModel.from_module(net, rquant(8), exclude=["*.bias"])
    assert qm.names == [n for n in all_names if not n.endswith(".bias")]
    qm = QuantizedModel.from_module(net, rquant(8), include=["*.weight"], exclude="*bn*")
    assert qm.names == ["conv.weight", "conv2.weight", "fc.weight"]
    with pytest.raises(ValueError, match="no parameter matches") as e:
        QuantizedModel.from_module(net, rquant(8), include="nothing*")
    assert "conv.weight" in str(e.value)  # the message lists the parameters
    with pytest.raises(ValueError, match="no parameter matches"):
        select_parameters(net, exclude="*")
    # frozen parameters are used by the model, hence part of the memory (as a supplied model's are)
    net.fc.bias.requires_grad_(False)
    assert [n for n, _ in select_parameters(net)] == all_names


def test_select_keeps_offsets_and_errors():
    qm = QuantizedModel.from_module(make_net(), rquant(8))
    idx = qm.select("*.bias")
    assert [qm.names[i] for i in idx] == [n for n in qm.names if n.endswith(".bias")]
    assert qm.select(None) == list(range(len(qm)))
    with pytest.raises(ValueError, match="no quantized tensor matches"):
        qm.select("zzz*")
    with pytest.raises(KeyError, match="not in the quantized memory"):
        qm.index("normalize.mean")


def test_constructor_and_codes_validation():
    qm = QuantizedModel.from_module(make_net(), rquant(8))
    with pytest.raises(ValueError, match="dtype"):
        QuantizedModel(rquant(8), qm.names, qm.shapes, qm.codes.to(torch.int8), qm.context)
    with pytest.raises(ValueError, match="words"):
        QuantizedModel(rquant(8), qm.names, qm.shapes, qm.codes[:-1], qm.context)
    with pytest.raises(ValueError, match="one entry per segment"):
        QuantizedModel(rquant(8), qm.names, qm.shapes, qm.codes, qm.context[:-1])
    with pytest.raises(ValueError, match="words"):
        qm.dequantize(qm.codes.to(torch.int16))
    with pytest.raises(ValueError, match="words"):
        qm.views(qm.codes[:5])
    with pytest.raises(TypeError):
        qm.dequantize([1, 2, 3])
    with pytest.raises(ValueError, match="does not match"):
        qm.load_into(lenet())


# ---------------------------------------------------------------------------------- dequantization into a model

def _reference_copy(model, scheme, include=None):
    """A deep copy holding the dequantized weights, tensor by tensor through the reference functions."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if include is not None and name not in include:
                continue
            c, ctx = quantize_tensor(p, scheme)
            p.copy_(dequantize_tensor(c, ctx, scheme, dtype=p.dtype))
    return ref


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_load_into_equals_fresh_dequantized_copy(scheme):
    net = make_net(1)
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    ref = _reference_copy(net, scheme)
    qm = QuantizedModel.from_module(net, scheme)
    buffers_before = {n: b.clone() for n, b in net.named_buffers()}
    assert qm.load_into(net) is net
    for (n, p), (_, r) in zip(net.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, r), n
    assert torch.equal(net(x), ref(x))
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers_before[n]), n  # buffers untouched


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_decode_words_and_flip_deltas_equal_the_whole_memory_path(scheme):
    """The few-word contract adversarial attacks use gives exactly what dequantizing the whole memory gives."""
    net = make_net(1)
    qm = QuantizedModel.from_module(net, scheme)
    full = qm.dequantize(dtype=torch.float64)
    t = len(qm.names) // 2
    o, n = qm.offsets[t], qm.lengths[t]
    idx = torch.arange(0, n, max(1, n // 7))
    words = qm.codes[o:o + n][idx]
    assert torch.equal(qm.decode_words(t, idx, words, dtype=torch.float64), full[o:o + n][idx])
    d = qm.flip_deltas(t, idx)
    assert d.dtype == torch.float64 and d.shape == (idx.numel(), qm.bits)
    for b in range(qm.bits):
        flipped = qm.codes.clone()
        flipped[o:o + n][idx] = kernels.flip_one_bit(words, torch.full_like(words, b, dtype=torch.int64))
        want = qm.dequantize(flipped, dtype=torch.float64)[o:o + n][idx] - full[o:o + n][idx]
        want = want * (0 if (int(qm.protected) >> b) & 1 else 1)
        assert torch.equal(d[:, b], want), b


def test_load_into_partial_memory_leaves_other_parameters():
    net = make_net(2)
    orig = {n: p.detach().clone() for n, p in net.named_parameters()}
    qm = QuantizedModel.from_module(net, rquant(8), include="fc.*")
    ref = _reference_copy(net, rquant(8), include=set(qm.names))
    qm.load_into(net)
    for (n, p), (_, r) in zip(net.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, r), n
        if n not in qm.names:
            assert torch.equal(p, orig[n])


def test_perturbed_codes_never_alias_and_clean_restores_exactly():
    net = make_net(3)
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    qm = QuantizedModel.from_module(net, rquant(8))
    clean = qm.codes.clone()
    qm.load_into(net)
    clean_params = [p.detach().clone() for p in net.parameters()]
    clean_out = net(x)

    c = qm.clone_codes()
    assert torch.equal(c, qm.codes) and c.data_ptr() != qm.codes.data_ptr()
    c[:] = 0
    assert torch.equal(qm.codes, clean)
    # views alias the memory they are taken from (so in-place attacks on views act on that memory only)
    c = qm.clone_codes()
    v = qm.views(c)
    v[0].view(-1)[0] ^= 1
    assert int(c[0]) == int(clean[0]) ^ 1 and torch.equal(qm.codes, clean)
    assert qm.views()[0].data_ptr() == qm.codes.data_ptr()
    # a random pattern is a new tensor; loading it and then the clean codes restores bit-exactly
    pert = kernels.random_flip(qm.codes, 0.05, seed=11, bits=qm.bits, protected=qm.protected)
    assert pert.data_ptr() != qm.codes.data_ptr() and not torch.equal(pert, qm.codes)
    qm.load_into(net, pert)
    assert not torch.equal(net(x), clean_out)
    assert torch.equal(qm.codes, clean)
    qm.load_into(net)
    for p, q in zip(net.parameters(), clean_params):
        assert torch.equal(p, q)
    assert torch.equal(net(x), clean_out)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_msb_flip_moves_weight_by_half_the_range_inside_it(bits):
    """Unsigned code MSB flip: w_hat changes by +-2^(m-1) * scale (+ when the MSB was 0), about half the tensor's
    range, except where that would leave the range: decoding clamps to it, so no weight ever leaves its range."""
    net = make_net(4)
    s = rquant(bits)
    qm = QuantizedModel.from_module(net, s)
    msb = 1 << (bits - 1)
    flipped = qm.codes ^ msb
    assert torch.equal(kernels.flip_bits(qm.codes, msb), flipped)
    before = qm.dequantize(dtype=torch.float64)
    after = qm.dequantize(flipped, dtype=torch.float64)
    seg = torch.repeat_interleave(torch.arange(len(qm)), torch.tensor(qm.lengths))
    lo, hi = qm.context.lo.to(torch.float64)[seg], qm.context.hi.to(torch.float64)[seg]
    assert bool(((after >= lo) & (after <= hi)).all())
    scale = qm.scale.to(torch.float64)[seg]
    sign = torch.where((qm.codes & msb) == 0, 1.0, -1.0).to(torch.float64)
    expect = sign * msb * scale
    # where neither code's value leaves [-1, 1] (no clamp), the change is exact up to float rounding
    step = qm.context.step.to(torch.float64)[seg]
    t_after = (flipped.to(torch.float64) - s.center) * step
    t_before = (qm.codes.to(torch.float64) - s.center) * step
    live = (hi > lo) & (t_after.abs() <= 1) & (t_before.abs() <= 1)
    assert bits == 2 or int(live.sum()) > 0.25 * qm.n_words  # at 2 bits every code but the center clamps
    eps = torch.finfo(torch.float32).eps
    err = (after - before - expect).abs()[live]
    assert bool((err <= 4 * eps * (after.abs() + before.abs() + (hi - lo))[live]).all())
    assert bool((after - before).abs().le(hi - lo).all())
    ratio = msb / (2 * s.levels)  # = 2^(m-1) / (2^m - 2): 0.504 for m = 8, 0.571 for m = 4, 1 for m = 2
    if bits >= 4:
        assert 0.5 < ratio < 0.6
    # the protected upper bits are never touched by a random pattern
    if bits < 8:
        pert = kernels.random_flip(qm.codes, 0.5, seed=3, bits=qm.bits, protected=qm.protected)
        assert int((pert.to(torch.int64) >> bits).max()) == 0


@pytest.mark.parametrize("scheme", [rquant(8), rquant(4, 0.1), QuantScheme(bits=16, signed=True),
                                    QuantScheme(bits=8, signed=True, range="clipped", w_max=0.2)],
                         ids=lambda s: s.name)
def test_random_flip_per_view_with_offsets_equals_whole_memory(scheme):
    qm = QuantizedModel.from_module(lenet(5), scheme)
    kw = dict(seed=777, bits=qm.bits, protected=qm.protected)
    whole = kernels.random_flip(qm.codes, 0.03, **kw)
    assert kernels.hamming_total(whole, qm.codes, bits=qm.bits) > 0
    pieces = [kernels.random_flip(v, 0.03, offset=qm.offsets[t], **kw).reshape(-1)
              for t, v in enumerate(qm.views())]
    assert torch.equal(torch.cat(pieces), whole)
    # in place into views of a copy: the same memory
    mem = qm.clone_codes()
    for t, v in enumerate(qm.views(mem)):
        out = kernels.random_flip(v, 0.03, offset=qm.offsets[t], out=v, **kw)
        assert out.data_ptr() == v.data_ptr()
    assert torch.equal(mem, whole)
    # attacking only some tensors: the skipped ones keep their offsets, the attacked ones get the same bits
    mem = qm.clone_codes()
    chosen = qm.select("classifier.*")
    views = qm.views(mem)
    for t in chosen:
        kernels.random_flip(views[t], 0.03, offset=qm.offsets[t], out=views[t], **kw)
    for t, v in enumerate(views):
        ref = qm.views(whole)[t] if t in chosen else qm.views()[t]
        assert torch.equal(v, ref), qm.names[t]


# --------------------------------------------------------------------------------------------------- persistence

@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_save_load_round_trip(tmp_path, scheme):
    qm = QuantizedModel.from_module(make_net(6), scheme)
    path = tmp_path / "sub" / "qm.pt"
    qm.save(path)
    assert os.listdir(tmp_path / "sub") == ["qm.pt"]  # atomic write: no temporary file left
    d = torch.load(path, weights_only=True)
    assert d["format"] == FORMAT
    for q2 in (QuantizedModel.load(path), QuantizedModel.from_state_dict(d)):
        assert q2.scheme == scheme and q2.scheme.to_dict() == scheme.to_dict()
        assert q2.names == qm.names and q2.shapes == qm.shapes and q2.offsets == qm.offsets
        assert q2.codes.dtype == qm.codes.dtype and torch.equal(q2.codes, qm.codes)
        assert torch.equal(q2.scale, qm.scale) and q2.context.equal(qm.context)
        assert torch.equal(q2.dequantize(), qm.dequantize())
    # plain torch.save of the state dict works the same
    torch.save(qm.state_dict(), tmp_path / "plain.pt")
    q3 = QuantizedModel.from_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True))
    assert torch.equal(q3.codes, qm.codes)
    with pytest.raises(ValueError, match="not a quantized model"):
        QuantizedModel.from_state_dict({"format": "something else"})


def test_failed_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    qm = QuantizedModel.from_module(make_net(7), rquant(8))
    path = tmp_path / "qm.pt"
    qm.save(path)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        QuantizedModel.from_module(make_net(8), rquant(4)).save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["qm.pt"] and path.read_bytes() == before
    assert torch.equal(QuantizedModel.load(path).codes, qm.codes)


def test_to_device_copy():
    qm = QuantizedModel.from_module(make_net(), rquant(8))
    q2 = qm.to("cpu")
    assert q2.device == torch.device("cpu") and torch.equal(q2.dequantize(), qm.dequantize())


def test_reparameterized_norm_quantizes_to_unit_scale():
    """Reparameterized norms (weight = 0 at init, scale = 1 + weight): the constant zero weight dequantizes exactly
    to 0, so the effective scale stays exactly 1 after quantization."""
    model = lenet(norm="rgn")
    qm = QuantizedModel.from_module(model, rquant(8, 0.05))
    qm.load_into(model)
    norm = model.features[1]
    assert "features.1.weight" in qm.names
    assert torch.equal(effective_weight(norm), torch.ones_like(norm.weight))


# ---------------------------------------------------------------------------------------- straight-through helper

@pytest.mark.parametrize("scheme", [rquant(8), rquant(4, 0.1), normal(8), QuantScheme(bits=16, signed=True)],
                         ids=lambda s: s.name)
def test_straight_through(scheme):
    model = lenet(9, norm="rgn")
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(8, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    floats = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = _reference_copy(model, scheme)  # fresh model holding the dequantized weights
    fq = FlatQuantizer(model, scheme)
    with fq.straight_through() as st:
        deq = st.qm.dequantize_tensors()
        for n, p in model.named_parameters():
            assert torch.equal(p, deq[n]) and torch.equal(p, dict(ref.named_parameters())[n]), n
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    for n, p in model.named_parameters():
        assert torch.equal(p, floats[n]), n  # float weights restored bit-exactly
        assert p.grad is not None
    F.cross_entropy(ref(x), y).backward()
    for (n, p), (_, r) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p.grad, r.grad), n  # the gradient at the quantized point
    # the quantized model inside equals QuantizedModel.from_module of the float weights
    qm = QuantizedModel.from_module(model, scheme)
    assert torch.equal(st.qm.codes, qm.codes) and torch.equal(st.qm.scale, qm.scale)


def test_straight_through_load_false_perturbed_and_exception():
    model = lenet(10)
    floats = [p.detach().clone() for p in model.parameters()]
    fq = FlatQuantizer(model, rquant(8))
    with fq.straight_through(load=False) as st:
        for p, f in zip(model.parameters(), floats):
            assert torch.equal(p, f)  # nothing loaded yet
        pert = kernels.random_flip(st.qm.codes, 0.1, seed=5, bits=8)
        st.load(pert)
        deq = st.qm.dequantize_tensors(pert)
        for n, p in model.named_parameters():
            assert torch.equal(p, deq[n])
    for p, f in zip(model.parameters(), floats):
        assert torch.equal(p, f)
    with pytest.raises(RuntimeError, match="boom"):
        with fq.straight_through():
            raise RuntimeError("boom")
    for p, f in zip(model.parameters(), floats):
        assert torch.equal(p, f)  # restored also when the body raises


def test_flat_quantizer_clip_and_include():
    model = lenet(11)
    fq = FlatQuantizer(model, rquant(8, 0.05), include="classifier.*")
    assert fq.names == [n for n, _ in model.named_parameters() if n.startswith("classifier.")]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fq.clip_(0.05)
    for n, p in model.named_parameters():
        if n in fq.names:
            assert torch.equal(p, before[n].clamp(-0.05, 0.05))
        else:
            assert torch.equal(p, before[n])
