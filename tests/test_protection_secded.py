"""SEC-DED ECC words (kernels/ecc.py, defenses/protection/secded.py) against an independent textbook encoder written
here (bit lists, one position at a time), exhaustively over single and double errors, and the residual error rate at
rate p against the binomial formula."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.attacks import create_attack
from bitbench.configs.registries import create_defense, create_protection
from bitbench.defenses.protection import ProtectedModel
from bitbench.defenses.quantization import QuantScheme, rquant
from bitbench.defenses.quantized_model import QuantizedModel
from bitbench.kernels.ecc import SECDED, UNCORRECTABLE


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


# -- the independent reference: the extended Hamming code, one bit at a time -----------------------------------------
def ref_r(k: int) -> int:
    r = 0
    while 2 ** r < k + r + 1:
        r += 1
    return r


def ref_encode(data: list[int]) -> list[int]:
    """Codeword bits by position 0 .. k+r (position 0: overall parity; powers of two: Hamming check bits; the data
    bits fill the other positions in order)."""
    k = len(data)
    r = ref_r(k)
    cw = [0] * (k + r + 1)
    it = iter(data)
    for p in range(1, k + r + 1):
        if p & (p - 1):
            cw[p] = next(it)
    for j in range(r):
        cw[2 ** j] = sum(cw[p] for p in range(1, k + r + 1) if p & (2 ** j) and p != 2 ** j) % 2
    cw[0] = sum(cw[1:]) % 2
    return cw


def ref_data_positions(k: int) -> list[int]:
    r = ref_r(k)
    return [p for p in range(1, k + r + 1) if p & (p - 1)]


def word_bits(words: list[int], m: int) -> list[int]:
    return [(w >> b) & 1 for w in words for b in range(m)]


def memory(words: torch.Tensor, scheme: QuantScheme) -> QuantizedModel:
    """A one-tensor quantized memory holding exactly ``words`` (a context of range [-1, 1])."""
    flat = torch.linspace(-1, 1, words.numel())
    qm = QuantizedModel.from_module(nn.Linear(words.numel(), 1, bias=False), scheme)
    qm.codes = words.to(scheme.dtype).clone()
    _, qm.context, _ = scheme.quantize(flat)
    return qm


CODES = [(8, 8, torch.uint8, rquant(8)), (8, 4, torch.uint8, rquant(8)), (3, 21, torch.uint8, rquant(3)),
         (4, 16, torch.uint8, rquant(4)), (16, 4, torch.int16, QuantScheme(bits=16, signed=True))]


@pytest.mark.parametrize("m,g,dtype,scheme", CODES, ids=[f"m{m}g{g}" for m, g, _, _ in CODES])
def test_encoder_matches_the_textbook_code(m, g, dtype, scheme):
    code = SECDED(m, g)
    k = m * g
    assert (code.k, code.r, code.n) == (k, ref_r(k), k + ref_r(k) + 1)
    assert code.positions == ref_data_positions(k)
    gen = torch.Generator().manual_seed(m * 100 + g)
    n = g * 40
    lo, hi = (0, 2 ** m) if dtype == torch.uint8 else (-2 ** (m - 1), 2 ** (m - 1))
    words = torch.randint(lo, hi, (n,), generator=gen, dtype=torch.int64).to(dtype)
    check = code.encode(words)
    assert check.dtype == code.check_dtype and check.numel() == 40
    for j in range(40):
        ws = [int(v) & (2 ** m - 1) for v in words[j * g:(j + 1) * g]]
        cw = ref_encode(word_bits(ws, m))
        want = sum(cw[2 ** i] << i for i in range(code.r)) | (cw[0] << code.r)
        assert int(kernels.to_pattern(check[j:j + 1])) == want


def test_the_standard_codes():
    assert (SECDED(8, 8).n, SECDED(8, 8).k) == (72, 64)
    assert (SECDED(8, 4).n, SECDED(8, 4).k) == (39, 32)
    assert create_protection("secded").code(8).n == 72 and create_protection("secded:word=32").code(8).n == 39
    assert create_protection("secded").code(3).k == 63  # floor(64 / 3) = 21 whole words


def _image_errors(code: SECDED, positions_per_codeword: list[tuple], g: int, m: int):
    """Data and check xor masks placing, in codeword j, errors at the Hamming positions positions_per_codeword[j]."""
    n_cw = len(positions_per_codeword)
    data = torch.zeros(n_cw * g, dtype=torch.int64)
    check = torch.zeros(n_cw, dtype=torch.int64)
    where = {p: d for d, p in enumerate(code.positions)}
    for j, ps in enumerate(positions_per_codeword):
        for p in ps:
            if p == 0:
                check[j] ^= 1 << code.r
            elif p & (p - 1) == 0:
                check[j] ^= 1 << (p.bit_length() - 1)
            else:
                s, b = divmod(where[p], m)
                data[j * g + s] ^= 1 << b
    return data, check


@pytest.mark.parametrize("m,g,dtype,scheme", CODES[:2] + CODES[4:], ids=["72_64", "39_32", "int16"])
def test_every_single_error_corrected_every_double_detected(m, g, dtype, scheme):
    code = SECDED(m, g)
    n_pos = code.n                                      # positions 0 .. k + r
    singles = [(p,) for p in range(n_pos)]
    doubles = list(itertools.combinations(range(n_pos), 2))
    cases = singles + doubles
    gen = torch.Generator().manual_seed(7)
    lo, hi = (0, 2 ** m) if dtype == torch.uint8 else (-2 ** (m - 1), 2 ** (m - 1))
    words = torch.randint(lo, hi, (len(cases) * g,), generator=gen, dtype=torch.int64).to(dtype)
    for policy in ("keep", "zero"):
        pm = ProtectedModel(memory(words, scheme), [create_protection(f"secded:word={m * g},policy={policy}")])
        stage = pm.stages[0]
        ref_check = torch.tensor([sum(ref_encode(word_bits([int(v) & (2 ** m - 1) for v in words[j * g:(j + 1) * g]],
                                                           m))[2 ** i] << i for i in range(code.r)) for j in
                                  range(len(cases))])
        assert torch.equal(kernels.to_pattern(stage.region.words) & ((1 << code.r) - 1), ref_check)
        d_err, c_err = _image_errors(code, cases, g, m)
        codes = kernels.from_pattern(kernels.to_pattern(words) ^ d_err, dtype)
        check = kernels.from_pattern(kernels.to_pattern(stage.region.words) ^ c_err, stage.region.words.dtype)
        rec = pm.recover(codes, [check])
        out = rec.codes.view(len(cases), g)
        clean = words.view(len(cases), g)
        ns = len(singles)
        assert torch.equal(out[:ns], clean[:ns])                         # every single error corrected
        syn = code.syndromes(kernels.bit_xor(codes, words), kernels.bit_xor(check, stage.region.words))
        kind, _, _ = code.classify(syn)
        assert bool((kind[ns:] == UNCORRECTABLE).all())                   # every double error detected
        assert rec.stats["secded.detected"] == len(doubles)
        assert rec.stats["secded.corrected"] == ns and rec.stats["secded.silent"] == 0
        if policy == "keep":
            assert torch.equal(out[ns:], codes.view(len(cases), g)[ns:])  # used as read
        else:
            assert torch.equal(out[ns:], pm.zero_codes.view(len(cases), g)[ns:])
        assert not rec.failed
    pm = ProtectedModel(memory(words, scheme), [create_protection(f"secded:word={m * g},policy=fail")])
    assert pm.recover(codes, [check]).failed


def test_triple_errors_are_miscorrected_as_the_hardware_does():
    """Three errors at positions a, b, c with a^b^c = s a data position: the decoder flips s too (silent)."""
    m, g = 8, 8
    code = SECDED(m, g)
    words = torch.zeros(g, dtype=torch.uint8)
    pm = ProtectedModel(memory(words, rquant(8)), [create_protection("secded:policy=keep")])
    d_err, c_err = _image_errors(code, [(3, 5, 9)], g, m)  # 3 ^ 5 ^ 9 = 15, a data position
    codes = kernels.from_pattern(d_err, torch.uint8)
    check = kernels.from_pattern(kernels.to_pattern(pm.stages[0].region.words) ^ c_err, torch.uint8)
    rec = pm.recover(codes, [check])
    want, _ = _image_errors(code, [(3, 5, 9, 15)], g, m)
    assert torch.equal(kernels.to_pattern(rec.codes), want)
    assert rec.stats["secded.silent"] == 1 and rec.stats["secded.detected"] == 0
    assert rec.stats["residual"] == 4 and rec.stats["flips"] == 3


def test_residual_rate_matches_the_binomial_formula():
    """At rate p over the whole image (72 bits per codeword), a codeword ends up detected or wrong iff it has >= 2
    errors: P = 1 - (1-p)^72 - 72 p (1-p)^71. Exactly-one-error codewords come back clean."""
    g, p, n_cw = 8, 0.01, 20000
    gen = torch.Generator().manual_seed(1)
    words = torch.randint(0, 256, (n_cw * g,), generator=gen, dtype=torch.int64).to(torch.uint8)
    pm = ProtectedModel(memory(words, rquant(8)), [create_protection("secded:policy=keep")])
    attack = create_attack(f"random_p{p}", patterns=1)
    pert = next(attack.perturbations(pm))
    assert pert.check is not None and pert.info["check_flips"] > 0
    rec = pm.recover(pert.codes, pert.check)
    n = 72
    p_bad = 1 - (1 - p) ** n - n * p * (1 - p) ** (n - 1)
    frac = (rec.stats["secded.detected"] + rec.stats["secded.silent"]) / n_cw
    sigma = math.sqrt(p_bad * (1 - p_bad) / n_cw)
    assert abs(frac - p_bad) < 5 * sigma, (frac, p_bad, sigma)
    # errors per codeword, counted from the image directly (data and check bits)
    e_data = kernels.popcount(kernels.bit_xor(pert.codes, words)).to(torch.int64).view(n_cw, g).sum(1)
    e_check = kernels.popcount(kernels.bit_xor(pert.check[0], pm.stages[0].region.words)).to(torch.int64)
    errs = e_data + e_check
    p1 = n * p * (1 - p) ** (n - 1)
    assert abs(float((errs == 1).float().mean()) - p1) < 5 * math.sqrt(p1 * (1 - p1) / n_cw)
    ok = (rec.codes.view(n_cw, g) == words.view(n_cw, g)).all(1)
    assert bool(ok[errs <= 1].all())
    # exactly: detected or silently wrong iff >= 2 errors (keep: a detected word is used as read, so its data is
    # wrong unless both errors hit check bits)
    assert rec.stats["secded.detected"] + rec.stats["secded.silent"] == int((errs >= 2).sum())
    assert bool((errs[~ok] >= 2).all())


def test_patterns_cover_data_then_check_bits_with_the_same_rule():
    """Data bits flip exactly as in the unprotected memory (the same chip); check word j flips by the shared rule at
    global index N + j."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 3))
    d = create_defense("rquant+secded:word=32")
    pm = d.quantize(net)
    plain = d.base.quantize(net)
    a = create_attack("random_p0.05", patterns=2, base_seed=7)
    for pp, pu in zip(a.perturbations(pm), a.perturbations(plain)):
        assert torch.equal(pp.codes, pu.codes)
        r = pm.check_regions[0]
        assert r.offset == pm.n_words and r.bits == 7
        want = kernels.random_flip(r.words, 0.05, seed=pp.seed, bits=7, offset=pm.n_words)
        assert torch.equal(pp.check[0], want) and not torch.equal(want, r.words)
    msb = create_attack("random_msb_p0.05", patterns=1)
    assert next(msb.perturbations(pm)).check is None


def test_uniform_error_map_over_the_protected_image_equals_random_errors(tmp_path):
    """An error map of probability p everywhere gives, over data and check words (map word start + offset + j),
    bit for bit the pattern of random_p{p}; a map too small for the whole image is refused without tile."""
    import numpy as np

    from bitbench.attacks.error_map import ErrorMapError, save_error_map

    torch.manual_seed(0)
    pm = create_defense("rquant+secded:word=32").quantize(nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 3)))
    rows = -(-pm.image_words // 16)
    f = tmp_path / "u.npz"
    save_error_map(f, p=np.full((rows, 16, 8), 0.05))
    a = create_attack(f"errmap:file={f},patterns=2")
    r = create_attack("random_p0.05", patterns=2)
    for p, q in zip(a.perturbations(pm), r.perturbations(pm)):
        assert torch.equal(p.codes, q.codes) and torch.equal(p.check[0], q.check[0])
    small = tmp_path / "s.npz"
    save_error_map(small, p=np.full((-(-pm.n_words // 16), 16, 8), 0.05))
    with pytest.raises(ErrorMapError, match="check words"):
        create_attack(f"errmap:file={small}").check_fits(pm)


def test_policy_fail_counts_every_input_of_a_detected_pattern_as_misclassified():
    from bitbench.evaluate import evaluate_attack

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3))
    x, y = torch.randn(50, 30), torch.randint(0, 3, (50,))
    pm = create_defense("rquant+secded:policy=fail").quantize(net)
    ev = evaluate_attack(net, pm, create_attack("random_p0.02", patterns=3), x, y)
    for p in ev.patterns:
        assert p.protection["failed"] == int(p.protection["secded.detected"] > 0)
        if p.protection["failed"]:
            assert p.err == 1.0 and p.rerr == 1.0
    assert any(p.protection["failed"] for p in ev.patterns)
    ok = evaluate_attack(net, pm, create_attack("random_p0.0", patterns=1), x, y)
    assert ok.patterns[0].protection["failed"] == 0 and ok.patterns[0].err == ok.clean_err
