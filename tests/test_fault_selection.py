"""Per-layer / per-bit selection of the words a pattern reaches (attacks.selection) and the per-input facts of a
pattern."""

import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.attacks import SpecError, create_attack
from bitbench.attacks.selection import (attackable_bits, matching_tensors, metadata_ranges, parse_bit_positions,
                                        protected_bits, tensor_ranges)
from bitbench.defenses import QuantizedModel, rquant
from bitbench.defenses.metadata import metadata_region
from bitbench.evaluate import NONFINITE


def _qm(scheme=None):
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return QuantizedModel.from_module(m, scheme or rquant(4, granularity="group:4"))


def test_bit_positions_and_masks():
    assert parse_bit_positions(None) is None and parse_bit_positions("all") is None
    assert parse_bit_positions(7) == (7,) and parse_bit_positions("3|1|3") == (1, 3) and parse_bit_positions([0, 2]) \
        == (0, 2)
    for bad in ("x", "-1", "64", "1|", True):
        with pytest.raises(SpecError, match="bit must be bit positions"):
            parse_bit_positions(bad)
    # a 4-bit code in a uint8 container: bits 0..3 attackable
    assert attackable_bits(8, 4, 0xF0) == 0x0F and protected_bits(8, 4, 0xF0) == 0xF0
    assert attackable_bits(8, 4, 0xF0, msb_only=True) == 0x08
    assert attackable_bits(8, 4, 0xF0, only=(1, 6)) == 0x02 and protected_bits(8, 4, 0xF0, only=(1, 6)) == 0xFD
    assert attackable_bits(32, 32, 0, only=(31,)) == 1 << 31


def test_selections_of_tensors_and_metadata():
    qm = _qm()
    assert matching_tensors(qm, None) == [0, 1, 2, 3] and matching_tensors(qm, ["*.bias"]) == [1, 3]
    assert matching_tensors(qm, ["nothing"]) == []
    assert tensor_ranges(qm, [1, 2]) == [(qm.offsets[1], 16), (qm.offsets[2], 64)]
    r = metadata_region(qm)
    ranges = metadata_ranges(r, [0, 1, 2, 3])
    assert sum(n for _, n in ranges) == r.n_words and [a for a, _ in ranges] == sorted(a for a, _ in ranges)


def test_one_layer_one_bit_is_the_full_pattern_restricted():
    """``layers=L,bit=b`` flips exactly the full pattern's flips of bit b in tensor L (the profile's cells add up
    to the full pattern)."""
    qm = _qm(rquant(8))
    full = next(create_attack("random_p0.05:patterns=1").perturbations(qm)).codes
    full_mask = kernels.to_pattern(full) ^ kernels.to_pattern(qm.codes)
    total = torch.zeros_like(full_mask)
    for t, name in enumerate(qm.names):
        for b in range(8):
            c = next(create_attack(f"random_p0.05:patterns=1,layers={name},bit={b}").perturbations(qm)).codes
            m = kernels.to_pattern(c) ^ kernels.to_pattern(qm.codes)
            o, n = qm.offsets[t], qm.lengths[t]
            assert int(m[:o].count_nonzero()) == 0 and int(m[o + n:].count_nonzero()) == 0
            assert torch.equal(m[o:o + n], full_mask[o:o + n] & (1 << b))
            total |= m
    assert torch.equal(total, full_mask)
