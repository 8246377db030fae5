"""Bit errors in a model's float buffers (defenses.buffers, random_p{p}:include_buffers=true): batch-norm running
statistics as words after the metadata, flipped by the written-out flip rule and applied while the pattern runs."""

import numpy as np
import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.attacks import SpecError, create_attack
from bitbench.attacks.runtime import BufferRuntime
from bitbench.defenses import QuantizedModel, rquant
from bitbench.defenses.buffers import buffer_region
from bitbench.defenses.metadata import metadata_region
from bitbench.evaluate import evaluate_attack, predict


class _Extra(nn.Module):
    """A layer with float64 and float16 buffers (added to its input: they matter) and an integer one."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift64", torch.linspace(-0.1, 0.1, 10, dtype=torch.float64))
        self.register_buffer("shift16", torch.full((10,), 0.05, dtype=torch.float16))
        self.register_buffer("count", torch.tensor(7))

    def forward(self, x):
        return x + self.shift64.float() + self.shift16.float()


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10),
                      _Extra())
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        m[1].running_mean.copy_(torch.randn(4, generator=g) * 0.1)
        m[1].running_var.copy_(torch.rand(4, generator=g) + 0.5)
    return m.eval()


def test_buffer_region_layout():
    m = _model()
    qm = QuantizedModel.from_module(m, rquant(4, granularity="group:8"))
    meta = metadata_region(qm)
    r = buffer_region(m, meta.offset + meta.n_words)
    assert r.names == ["1.running_mean", "1.running_var", "5.shift64", "5.shift16"]   # integer buffers left out
    o = meta.offset + meta.n_words
    for e, (n, b) in zip(r.entries, [(k, v) for k, v in m.named_buffers() if v.is_floating_point()]):
        assert e.name == n and e.offset == o
        raw = np.ascontiguousarray(b.numpy())
        words = np.ascontiguousarray(e.words.numpy())
        assert raw.tobytes() == words.tobytes()      # the raw bits of the buffer, low half first for float64
        assert e.bits == {torch.float32: 32, torch.float64: 32, torch.float16: 16}[b.dtype]
        assert torch.equal(e.values(e.words), b)
        o += e.n_words
    assert r.end == o and r.n_words == 4 + 4 + 20 + 10


@pytest.mark.parametrize("bit", [3, 23, 30, 31])
def test_flipped_running_var_changes_exactly_that_channel(bit):
    m = _model()
    r = buffer_region(m, 0)
    e = r.entries[1]                                     # running_var
    c = 2
    words = e.words.numpy().copy()
    words.view(np.uint32)[c] ^= np.uint32(1 << bit)
    var = words.view(np.float32)                         # numpy's decode of the flipped bits
    x = torch.randn(5, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = {}
    h = m[1].register_forward_hook(lambda mod, a, out: seen.__setitem__("bn", out.clone()))
    with torch.no_grad():
        m(x)
        clean = seen["bn"]
        with BufferRuntime(m, {e.name: e.values(torch.from_numpy(words))}):
            assert m[1].running_var.numpy().view(np.uint32)[c] == words.view(np.uint32)[c]
            m(x)
        bad = seen["bn"]
        h.remove()
        z = m[0](x).numpy()
    assert torch.equal(m[1].running_var, r.entries[1].values(r.entries[1].words))     # restored on exit
    others = [k for k in range(4) if k != c]
    assert torch.equal(bad[:, others], clean[:, others])
    bn = m[1]
    with np.errstate(all="ignore"):                      # the eval-mode batch norm of channel c, in numpy
        ref = (z[:, c] - bn.running_mean.numpy()[c]) / np.sqrt(var[c] + np.float32(bn.eps)) \
            * bn.weight.detach().numpy()[c] + bn.bias.detach().numpy()[c]
    assert np.allclose(bad[:, c].numpy(), ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert not torch.equal(bad[:, c], clean[:, c])


def test_random_include_buffers_follows_the_flip_rule(philox_mask):
    m = _model()
    qm = QuantizedModel.from_module(m, rquant(8))
    meta = metadata_region(qm)
    r = buffer_region(m, meta.offset + meta.n_words)
    clean = {k: v.clone() for k, v in m.named_buffers()}
    plain = list(create_attack("random_p0.02:patterns=4").perturbations(qm, model=m))
    with_b = list(create_attack("random_p0.02:patterns=4,include_buffers=true").perturbations(qm, model=m))
    changed_any = False
    for a, b in zip(plain, with_b):
        assert torch.equal(a.codes, b.codes) and a.runtime is None and a.context is None
        want = {}
        for e in r.entries:
            mask = philox_mask(e.offset + torch.arange(e.n_words), b.seed, 0.02, list(range(e.bits)))
            w = kernels.from_pattern(kernels.to_pattern(e.words) ^ mask, e.words.dtype)
            if not torch.equal(w, e.words):
                want[e.name] = e.values(w)
        got = b.runtime.values if b.runtime is not None else {}
        assert sorted(got) == sorted(want) and b.info["buffers_changed"] == len(want)
        assert all(got[k].numpy().tobytes() == want[k].numpy().tobytes() for k in want)   # bit for bit
        changed_any |= bool(want)
    assert changed_any
    assert all(torch.equal(v, clean[k]) for k, v in m.named_buffers())   # the attack never touches the module


def test_include_buffers_in_the_evaluation_and_layers():
    m = _model()
    qm = QuantizedModel.from_module(m, rquant(8))
    x = torch.randn(100, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    qm.load_into(m)
    y = predict(m, x)
    only_var = create_attack("random_p0.05:patterns=3,include_buffers=true,layers=1.running_var")
    ev = evaluate_attack(m, qm, only_var, x, y)
    pert = list(only_var.perturbations(qm, model=m))
    for res, p in zip(ev.patterns, pert):
        assert p.info["flips"] == 0                          # no tensor matches: the weights stay clean
        assert p.runtime is None or sorted(p.runtime.values) == ["1.running_var"]
        with torch.no_grad():
            if p.runtime is not None:
                with p.runtime:
                    want = predict(m, x)
            else:
                want = predict(m, x)
        assert res.err == (want != y).sum().item() / 100
    assert any(p.runtime is not None for p in pert)
    with pytest.raises(SpecError, match="no quantized tensor and no float buffer matches"):
        create_attack("random_p0.05:include_buffers=true,layers=nothing*").check_model(qm, m)
    with pytest.raises(SpecError, match="layers=nothing"):
        create_attack("random_p0.05:layers=nothing*").check(qm)
