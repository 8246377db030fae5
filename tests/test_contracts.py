"""Contract tests parametrized over the registries of memory formats (every defense's format) and protections: a
new entry is tested for free (the metric registry's contract: tests/test_metrics.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.configs.registries import DEFENSES, PROTECTIONS
from bitbench.defenses.memory import MEMORY_MEMBERS, Memory, MemoryFormat
from bitbench.defenses.quantized_model import QuantizedModel, format_from_dict


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_stores_its_weights_in_a_declared_memory_format(name):
    d = DEFENSES.create(name)
    fmt = d.scheme()
    assert isinstance(fmt, MemoryFormat), f"{name}: {type(fmt).__name__} does not implement MemoryFormat"
    assert format_from_dict(fmt.to_dict()) == fmt                       # the format rebuilds from its parameters
    model = _model()
    qm = d.quantize(model)
    assert isinstance(qm, Memory) and qm.decodes is False and qm.check_regions == ()
    assert qm.codes.dtype == fmt.dtype and qm.n_words == sum(p.numel() for p in model.parameters())
    width = torch.iinfo(fmt.dtype).bits
    assert 1 <= fmt.bits <= width and int(fmt.protected) >> width == 0
    w = qm.dequantize()
    assert torch.isfinite(w).all()
    # the exact weight change of every bit of a few words equals decoding the flipped word
    t = len(qm.names) - 1
    idx = torch.arange(min(7, qm.lengths[t]))
    deltas = qm.flip_deltas(t, idx)
    words = qm.views()[t].reshape(-1)[idx]
    for b in range(fmt.bits):
        if (int(fmt.protected) >> b) & 1:
            assert (deltas[:, b] == 0).all()
            continue
        flipped = kernels.flip_one_bit(words, torch.full_like(words, b, dtype=torch.int64))
        want = qm.decode_words(t, idx, flipped, dtype=torch.float64) - qm.decode_words(t, idx, words,
                                                                                          dtype=torch.float64)
        fin = torch.isfinite(want)
        assert torch.equal(deltas[fin, b], want[fin]), (name, b)
    # a flipped protected bit never exists: random errors leave the protected bits alone
    pert = kernels.random_flip(qm.codes, 0.5, seed=1, bits=fmt.bits)
    if int(fmt.protected):
        assert (kernels.bit_and(pert, int(fmt.protected)) == kernels.bit_and(qm.codes, int(fmt.protected))).all()


@pytest.mark.parametrize("name", PROTECTIONS.names())
def test_every_protection_is_a_memory_that_decodes_a_clean_image_to_itself(name):
    qm = DEFENSES.create("rquant").quantize(_model())
    pm = DEFENSES.create(f"rquant+{name}").protect_memory(qm)
    assert isinstance(pm, Memory) and pm.decodes is True
    for member in MEMORY_MEMBERS:                        # the protected words are the base memory's
        a, b = getattr(pm, member), getattr(qm, member)
        assert a is b or callable(a) or (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), member
    assert pm.image_words == qm.n_words + sum(r.n_words for r in pm.check_regions)
    desc = pm.describe()
    assert desc["memory_overhead"] == pm.memory_overhead == desc["check_bits"] / desc["data_bits"]
    rec = pm.recover(qm.codes, None)
    assert torch.equal(rec.codes, qm.codes) and not rec.failed
    assert rec.stats["flips"] == 0 and rec.stats["residual"] == 0
    declared = {"flips", "residual"} | {f"{s['name']}.{c}" for s in desc["stages"] for c in s["counts"]}
    assert set(rec.stats) <= declared, f"{name} reports undeclared counts {set(rec.stats) - declared}"
    for s in desc["stages"]:
        assert s["flagged"] is None or s["flagged"] in s["counts"]
        for num, den in (s.get("ratios") or {}).values():
            assert num in s["counts"] and den in s["counts"]
    # a perturbed image decodes to a memory of the same shape, counting what it saw
    codes = kernels.random_flip(qm.codes, 0.01, seed=3, bits=qm.bits)
    rec = pm.recover(codes, None)
    assert rec.codes.shape == qm.codes.shape and rec.stats["flips"] == kernels.hamming_total(qm.codes, codes,
                                                                                           bits=qm.bits)
