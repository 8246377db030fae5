"""Random bit-error attacks and profiled-chip error maps (attacks.random_errors, attacks.error_map)."""

import numpy as np
import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.attacks import ErrorMapError, SpecError, create_attack, list_attacks, save_error_map
from bitbench.kernels import flip as flip_mod  # the per-cell threshold rule (threshold_flip_mask)
from bitbench.defenses import QuantizedModel, QuantScheme, rquant


def _module(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m


SCHEMES = {
    "u8": rquant(8),
    "u4": rquant(4),
    "s8": QuantScheme(bits=8, signed=True),
    "s16": QuantScheme(bits=16, signed=True),
}


@pytest.fixture(params=list(SCHEMES))
def qm(request):
    return QuantizedModel.from_module(_module(), SCHEMES[request.param])


@pytest.fixture
def qm8():
    return QuantizedModel.from_module(_module(), rquant(8))


def _mask(a, b):
    """xor of the bit patterns (int64)."""
    w = kernels.DTYPE_WIDTH[a.dtype]
    return (a.to(torch.int64) ^ b.to(torch.int64)) & ((1 << w) - 1)


# -- random_p ------------------------------------------------------------------------------------------------------
def test_random_reproduces_kernel_pattern(qm):
    clean = qm.codes.clone()
    a = create_attack("random_p0.05:patterns=3,base_seed=7")
    assert a.kind == "random" and a.rate == 0.05 and a.num_perturbations() == 3
    perts = [(p.index, p.seed, p.codes.clone()) for p in a.perturbations(qm)]
    assert [(k, s) for k, s, _ in perts] == [(0, 7), (1, 8), (2, 9)]
    for k, s, codes in perts:
        ref = kernels.random_flip(qm.codes, 0.05, seed=s, bits=qm.bits, protected=qm.protected)
        assert codes.dtype == qm.codes.dtype and codes.shape == qm.codes.shape
        assert torch.equal(codes, ref)
        assert kernels.hamming_total(codes, clean) > 0
    assert torch.equal(qm.codes, clean)


def test_random_default_protocol_and_spec_forms():
    a = create_attack("random_p0.01")
    assert (a.p, a.p10, a.patterns, a.base_seed, a.layers) == (0.01, None, 50, 100, None)
    assert [a.seed(k) for k in (0, 49)] == [100, 149]
    assert create_attack("random_p1e-05").p == 1e-05
    assert create_attack(f"random_p{0.001!r}").rate == 0.001
    assert create_attack("random_p0.02:p10=0.005").p10 == 0.005
    assert {"random", "random_msb", "errmap", "bfa", "budget"} <= set(list_attacks())
    assert list_attacks("random*") == ["random", "random_msb"]


def test_random_nested_across_rates(qm):
    lo = create_attack("random_p0.01:patterns=2")
    hi = create_attack("random_p0.05:patterns=2")
    for a, b in zip(lo.perturbations(qm), hi.perturbations(qm)):
        m_lo, m_hi = _mask(a.codes, qm.codes), _mask(b.codes, qm.codes)
        assert int((m_lo & ~m_hi).count_nonzero()) == 0
        assert int(m_lo.count_nonzero()) < int(m_hi.count_nonzero())


def test_random_msb_only_flips_bit_m_minus_1(qm):
    m = qm.bits
    a = create_attack("random_msb_p0.2:patterns=2")
    full = create_attack("random_p0.2:patterns=2")
    for p, f in zip(a.perturbations(qm), full.perturbations(qm)):
        mask = _mask(p.codes, qm.codes)
        assert int(mask.count_nonzero()) > 0
        assert int((mask & ~(1 << (m - 1))).count_nonzero()) == 0
        # the same Philox numbers: exactly the full pattern's flips of bit m-1
        assert torch.equal(mask, _mask(f.codes, qm.codes) & (1 << (m - 1)))


def test_random_layer_selection(qm):
    a = create_attack("random_p0.1:patterns=2,layers=2.*")
    full = create_attack("random_p0.1:patterns=2")
    sel = qm.select("2.*")
    assert [qm.names[t] for t in sel] == ["2.weight", "2.bias"]
    for p, f in zip(a.perturbations(qm), full.perturbations(qm)):
        for t in range(len(qm.names)):
            got, ref, clean = qm.views(p.codes)[t], qm.views(f.codes)[t], qm.views()[t]
            if t in sel:
                assert torch.equal(got, ref)   # the whole-memory pattern restricted to the tensor (same offsets)
            else:
                assert torch.equal(got, clean)
    # several patterns separated by '|'
    b = create_attack("random_p0.1:patterns=1,layers=0.weight|2.bias")
    p = next(b.perturbations(qm))
    f = next(full.perturbations(qm))
    for t, name in enumerate(qm.names):
        exp = qm.views(f.codes)[t] if name in ("0.weight", "2.bias") else qm.views()[t]
        assert torch.equal(qm.views(p.codes)[t], exp)


def test_random_separate_p10(qm8):
    a = create_attack("random_p0.2:p10=0,patterns=1,base_seed=3")
    p = next(a.perturbations(qm8))
    ref = kernels.random_flip(qm8.codes, 0.2, 0.0, seed=3, bits=8, protected=qm8.protected)
    assert torch.equal(p.codes, ref)
    clean_u, new_u = qm8.codes.to(torch.int64), p.codes.to(torch.int64)
    assert int((clean_u & ~new_u).count_nonzero()) == 0      # no 1 -> 0 flip
    assert int((new_u & ~clean_u).count_nonzero()) > 0       # some 0 -> 1 flips
    b = create_attack("random_p0.05:p10=0.3,patterns=1")
    ref = kernels.random_flip(qm8.codes, 0.05, 0.3, seed=100, bits=8, protected=qm8.protected)
    assert torch.equal(next(b.perturbations(qm8)).codes, ref)


def test_random_out_buffer_and_indices(qm8):
    a = create_attack("random_p0.05:patterns=4")
    out = torch.empty_like(qm8.codes)
    got = []
    for p in a.perturbations(qm8, out=out, indices=[3, 1]):
        assert p.codes.data_ptr() == out.data_ptr()
        got.append((p.index, p.seed, p.codes.clone()))
    assert [(k, s) for k, s, _ in got] == [(3, 103), (1, 101)]
    assert torch.equal(got[0][2], kernels.random_flip(qm8.codes, 0.05, seed=103, bits=8, protected=qm8.protected))
    with pytest.raises(ValueError, match="outside"):
        list(a.perturbations(qm8, indices=[4]))
    with pytest.raises(ValueError, match="alias"):
        list(a.perturbations(qm8, out=qm8.codes))


@pytest.mark.parametrize("spec,word", [
    ("random_p1.5", "p"), ("random_p-0.1", "p"), ("random_p0.1:p10=2", "p10"), ("random_msb_p3", "p"),
    ("random_p0.1:patterns=0", "patterns"), ("random_p0.1:base_seed=-1", "base_seed"),
    ("bfa_n-1", "n"), ("bfa:n=-5", "n"), ("budget_e-3", "eps"), ("budget:eps=-1", "eps"),
])
def test_invalid_parameters_name_parameter_and_range(spec, word):
    with pytest.raises(ValueError, match=rf"{word} must be .*(\[|>=)"):
        create_attack(spec)


def test_unknown_attack_suggests_close_names():
    with pytest.raises(SpecError, match="Did you mean: random"):
        create_attack("randon_p0.01")
    with pytest.raises(SpecError, match="no parameter 'pattern'"):
        create_attack("random_p0.01:pattern=3")


def test_layers_matching_nothing_is_refused(qm8):
    a = create_attack("random_p0.01:layers=nope*")
    with pytest.raises(ValueError, match="no quantized tensor matches"):
        next(a.perturbations(qm8))


# -- error maps ----------------------------------------------------------------------------------------------------
def _write(tmp_path, name, arr=None, **arrays):
    path = tmp_path / name
    if arr is not None:
        np.save(path, arr)
    else:
        np.savez(path, **arrays)
    return str(path)


def _uniform_map(n_words, p, bits=8, wpr=16):
    rows = -(-n_words // wpr)
    return np.full((rows, wpr, bits), p, dtype=np.float64)


@pytest.mark.parametrize("path_kind", ["kernel", "philox"])
def test_errmap_uniform_probability_equals_random_pattern(qm, tmp_path, monkeypatch, path_kind):
    if path_kind == "philox":
        monkeypatch.setattr(flip_mod, "_MAX_KERNEL_PAIRS", 0)
    f = _write(tmp_path, "u.npy", _uniform_map(qm.n_words, 0.05, bits=max(8, qm.bits)))
    a = create_attack(f"errmap:file={f},patterns=3")
    assert a.kind == "random" and a.num_perturbations() == 3 and abs(a.rate - 0.05) < 1e-12
    r = create_attack("random_p0.05:patterns=3")
    for p, q in zip(a.perturbations(qm), r.perturbations(qm)):
        assert p.seed == q.seed
        assert torch.equal(p.codes, q.codes)


def test_errmap_per_cell_probabilities(qm8, tmp_path, monkeypatch):
    n = qm8.n_words
    rng = np.random.default_rng(0)
    # two values: cells with 0 never flip; cells with 0.3 flip exactly as random_p0.3 there
    m2 = np.where(rng.random((n, 1, 8)) < 0.5, 0.0, 0.3)
    f = _write(tmp_path, "two.npz", p=m2)
    p = next(create_attack(f"errmap:file={f},patterns=1").perturbations(qm8))
    ref = kernels.random_flip(qm8.codes, 0.3, seed=100, bits=8)
    allowed = torch.from_numpy(((m2[:, 0, :] > 0) * (1 << np.arange(8))).sum(1))
    assert torch.equal(_mask(p.codes, qm8.codes), _mask(ref, qm8.codes) & allowed)
    # many distinct probabilities (> _MAX_KERNEL_PAIRS): the Philox reference path agrees with the per-value
    # kernel path
    m3 = rng.choice(np.linspace(0.0, 0.2, 20), size=(n // 8 + 1, 8, 8))
    f3 = _write(tmp_path, "many.npy", m3)
    a = create_attack(f"errmap:file={f3},patterns=2")
    ref_path = [x.codes.clone() for x in a.perturbations(qm8)]
    monkeypatch.setattr(flip_mod, "_MAX_KERNEL_PAIRS", 10 ** 9)
    kern_path = [x.codes.clone() for x in a.perturbations(qm8)]
    assert all(torch.equal(x, y) for x, y in zip(ref_path, kern_path))
    assert not torch.equal(ref_path[0], ref_path[1])


def test_errmap_separate_p01_p10(qm8, tmp_path):
    n = qm8.n_words
    f = _write(tmp_path, "sep.npz", p01=np.full((n, 1, 8), 0.1), p10=np.full((n, 1, 8), 0.02))
    p = next(create_attack(f"errmap:file={f},patterns=1,base_seed=5").perturbations(qm8))
    assert torch.equal(p.codes, kernels.random_flip(qm8.codes, 0.1, 0.02, seed=5, bits=8))


@pytest.mark.parametrize("scheme", ["u8", "u4", "s8"])
def test_errmap_stuck_at_semantics(tmp_path, scheme):
    qm = QuantizedModel.from_module(_module(), SCHEMES[scheme])
    n, m = qm.n_words, qm.bits
    rng = np.random.default_rng(1)
    stuck = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(n // 4 + 1, 4, 8), p=[0.8, 0.1, 0.1])
    f = _write(tmp_path, "stuck.npy", stuck)
    a = create_attack(f"errmap:file={f}")
    assert a.num_perturbations() == 1          # deterministic chip, no shift: one pattern
    p = next(a.perturbations(qm))
    assert p.seed is None
    bits = kernels.to_bits(p.codes)            # [n, width]
    clean_bits = kernels.to_bits(qm.codes)
    s = torch.from_numpy(stuck.reshape(-1, 8)[:n].astype(np.int64))
    w = bits.shape[1]
    for b in range(w):
        col = s[:, b] if b < 8 else torch.full((n,), -1)
        if b >= m:   # protected / unused storage bits never change
            assert torch.equal(bits[:, b], clean_bits[:, b])
            continue
        st = col >= 0
        assert torch.equal(bits[st, b].to(torch.int64), col[st])
        assert torch.equal(bits[~st, b], clean_bits[~st, b])
    expected = int(((s[:, :m] >= 0) & (s[:, :m] != clean_bits[:, :m].to(torch.int64))).sum())
    assert kernels.hamming_total(p.codes, qm.codes) == expected > 0


def test_errmap_shift_and_tile(qm8, tmp_path):
    n = qm8.n_words
    rng = np.random.default_rng(2)
    big = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(n + 64, 1, 8), p=[0.9, 0.05, 0.05])
    f = _write(tmp_path, "big.npy", big)
    a = create_attack(f"errmap:file={f},shift=32")
    assert a.num_perturbations() == 50
    p1 = next(a.perturbations(qm8, indices=[1])).codes.clone()
    f_shift = _write(tmp_path, "shifted.npy", big[32:])
    assert torch.equal(p1, next(create_attack(f"errmap:file={f_shift}").perturbations(qm8)).codes)
    with pytest.raises(ErrorMapError, match="tile=true"):
        list(a.perturbations(qm8, indices=[3]))           # 3 * 32 + n > n + 64 words
    small = big[:100]
    f_small = _write(tmp_path, "small.npy", small)
    with pytest.raises(ErrorMapError, match=r"holds 100 words .* needs %d words.*tile=true" % n):
        next(create_attack(f"errmap:file={f_small}").perturbations(qm8))
    tiled = next(create_attack(f"errmap:file={f_small},tile=true").perturbations(qm8)).codes
    f_rep = _write(tmp_path, "rep.npy", np.tile(small, (n // 100 + 1, 1, 1)))
    assert torch.equal(tiled, next(create_attack(f"errmap:file={f_rep}").perturbations(qm8)).codes)


def test_errmap_layers_and_wide_map(tmp_path):
    qm = QuantizedModel.from_module(_module(), SCHEMES["u4"])
    f = _write(tmp_path, "u.npy", _uniform_map(qm.n_words, 0.2, bits=8))
    a = create_attack(f"errmap:file={f},patterns=1,layers=0.weight")
    r = create_attack("random_p0.2:patterns=1,layers=0.weight")
    assert torch.equal(next(a.perturbations(qm)).codes, next(r.perturbations(qm)).codes)


def test_save_error_map_roundtrip(qm8, tmp_path):
    path = tmp_path / "chip.npz"
    save_error_map(path, p=_uniform_map(qm8.n_words, 0.01))
    assert create_attack(f"errmap:file={path}").num_perturbations() == 50
    with pytest.raises(ValueError):
        save_error_map(path, p=np.zeros((2, 2, 8)), stuck=np.zeros((2, 2, 8)))


@pytest.mark.parametrize("make,match", [
    (lambda d: np.save(d / "m.npy", np.zeros((10, 8))), "shape"),
    (lambda d: np.save(d / "m.npy", np.full((10, 1, 8), 1.5)), r"\[0, 1\]"),
    (lambda d: np.save(d / "m.npy", np.full((10, 1, 8), np.nan)), "NaN"),
    (lambda d: np.save(d / "m.npy", np.full((10, 1, 8), 2, dtype=np.int8)), "stuck"),
    (lambda d: np.save(d / "m.npy", np.zeros((10, 1, 8), dtype=bool)), "boolean"),
    (lambda d: np.savez(d / "m.npz", foo=np.zeros((10, 1, 8))), "exactly one of"),
    (lambda d: np.savez(d / "m.npz", p01=np.zeros((10, 1, 8)), p10=np.zeros((9, 1, 8))), "differ"),
    (lambda d: (d / "m.npy").write_text("not numpy"), "cannot read"),
])
def test_errmap_malformed_files_are_refused(tmp_path, make, match):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(ValueError, match=match):
        create_attack(f"errmap:file={path}")


def test_errmap_refusals_about_the_model(qm8, tmp_path):
    with pytest.raises(ValueError, match="needs file"):
        create_attack("errmap")
    with pytest.raises(ValueError, match="does not exist"):
        create_attack(f"errmap:file={tmp_path / 'missing.npy'}")
    f = _write(tmp_path, "narrow.npy", np.zeros((qm8.n_words, 1, 4)))
    with pytest.raises(ErrorMapError, match="4 bit columns"):
        next(create_attack(f"errmap:file={f}").perturbations(qm8))
