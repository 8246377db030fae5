"""Activation bit errors (attacks.activations, act_random_p{p}, random_p{p}:act_p=q): the virtual activation memory
checked against the written-out flip rule (philox_mask), numpy quantization, other batch sizes and backends."""

import numpy as np
import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.attacks import SpecError, create_attack
from bitbench.attacks.activations import (ACT_OFFSET, MAX_CALLS, SLOT_WORDS, ActivationFormat, ActivationMemory,
                                          slot_offset)
from bitbench.defenses import QuantizedModel, rquant
from bitbench.evaluate import NONFINITE, evaluate_attack, predict
from bitbench.models import build_model


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


def _net(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
                      nn.Linear(16, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def _data(n=160, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _setup(fmt="int8", layers=None, faulty=None, calib=64):
    m = _net()
    qm = QuantizedModel.from_module(m, rquant(8))
    xa, ya = _data(100, seed=5)
    mem = ActivationMemory.build(m, qm, ActivationFormat(fmt), layers=layers, faulty=faulty, data=(xa, ya),
                                 calib=calib)
    return m, qm, mem, (xa, ya)


def _record(log):
    def observer(slot, start, clean, words):
        log.append((slot, start, clean.clone(), words.clone()))
    return observer


def _per_input_masks(m, mem, x, seed, p, batch, **kw):
    log = []
    rt = mem.runtime(seed, p, observer=_record(log), **kw)
    pred = predict(m, x, batch, rt)
    out = {}
    for slot, start, clean, words in log:
        mask = kernels.to_pattern(clean) ^ kernels.to_pattern(words)
        n = min(batch, x.shape[0] - start)
        for j, row in enumerate(mask.view(n, -1)):
            out[(slot, start + j)] = row
    return out, pred, rt


def test_slots_offsets_and_the_flip_rule(philox_mask):
    m, qm, mem, _ = _setup()
    pos = {n: i for i, (n, _) in enumerate(m.named_modules())}
    assert sorted(n for n, _ in mem.modules.values()) == ["0", "3", "5"]     # conv and the two linear layers
    x, _ = _data(37)
    log = []
    predict(m, x, 16, mem.runtime(123, 0.01, observer=_record(log)))
    assert {s for s, *_ in log} == {MAX_CALLS * pos[n] for n in ("0", "3", "5")}
    assert [st for s, st, *_ in log if s == MAX_CALLS * pos["0"]] == [0, 16, 32]
    for slot, start, clean, words in log:
        n = min(16, 37 - start)
        e = clean.numel() // n
        idx = ACT_OFFSET + slot * SLOT_WORDS + start * e + torch.arange(n * e)   # the documented global indices
        assert int(idx[0]) == slot_offset(slot) + start * e and int(idx[-1]) > 1 << 62
        want = philox_mask(idx, 123, 0.01, range(8))
        assert torch.equal(kernels.to_pattern(clean) ^ kernels.to_pattern(words), want)
    assert sum(int(kernels.popcount(kernels.from_pattern(kernels.to_pattern(c) ^ kernels.to_pattern(w),
                                                         torch.uint8)).sum()) for _, _, c, w in log) > 0


def test_the_chip_is_the_same_at_batch_sizes_1_and_128():
    m, qm, mem, _ = _setup()
    x, _ = _data(128)
    a, pred_a, _ = _per_input_masks(m, mem, x, 7, 0.02, 1)
    b, pred_b, _ = _per_input_masks(m, mem, x, 7, 0.02, 128)
    c, pred_c, _ = _per_input_masks(m, mem, x, 7, 0.02, 50)
    assert a.keys() == b.keys() == c.keys() and len(a) == 3 * 128
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert torch.equal(pred_a, pred_b) and torch.equal(pred_a, pred_c)


def test_backends_give_the_same_activation_errors():
    m, qm, mem, _ = _setup()
    x, _ = _data(64)
    outs = {}
    for backend in ("torch", "c"):
        if backend == "c" and not kernels.backends()["cpu"] == "c":
            pytest.fail("the C backend is not built (kernels.backends()['c_error'])")
        rt = mem.runtime(99, 0.02, backend=backend)
        with rt, torch.inference_mode():
            outs[backend] = m(x)
    assert torch.equal(outs["torch"], outs["c"])


def test_errors_are_nested_in_p():
    m, qm, mem, _ = _setup()
    x, _ = _data(40)
    lo, _, _ = _per_input_masks(m, mem, x, 5, 0.005, 40)
    hi, _, _ = _per_input_masks(m, mem, x, 5, 0.03, 40)
    assert all(int((lo[k] & ~hi[k]).count_nonzero()) == 0 for k in lo)
    assert sum(int(v.count_nonzero()) for v in lo.values()) < sum(int(v.count_nonzero()) for v in hi.values())


def _np_quant(z, lo, hi, bits=8):
    """RQuant's asymmetric encode and decode (defenses/quantization.py docstring) in float32 numpy, one range."""
    f = np.float32
    lo, hi = f(lo), f(hi)
    L = f((1 << (bits - 1)) - 1)
    step = (f(1) + f(0.001)) / L
    c = f(1 << (bits - 1))
    span = hi - lo
    live = f(1) if span > 0 else f(0)
    s = span if span > 0 else f(1)
    y = z.astype(f) - lo
    y = y / s
    y = y * f(2)
    y = y - f(1)
    y = y * live
    v = np.minimum(np.maximum(y, f(-1)), f(1))
    xq = v / step
    xq = xq + c
    xq = np.minimum(np.maximum(xq, f(0)), f((1 << bits) - 1))
    q = np.rint(xq)
    t = (q - c) * step
    t = np.minimum(np.maximum(t, f(-1)), f(1))
    t = t + f(1)
    t = t / f(2)
    t = t * span
    t = t + lo
    return np.minimum(np.maximum(t, lo), hi)


def test_calibration_and_the_clean_baseline_quantization():
    m, qm, mem, (xa, _) = _setup(calib=64)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert all(torch.equal(v, before[k]) for k, v in _net().state_dict().items())   # calibration left it alone
    # the ranges: min and max of every stored output of the clean quantized model over the first 64 attacker
    # images, float activations
    qm.load_into(m)
    seen = {}
    hooks = [mod.register_forward_hook(lambda mod, a, out, n=n: seen.setdefault(n, out.detach().clone()))
             for n, mod in m.named_modules() if n in ("0", "3", "5")]
    with torch.no_grad():
        m(xa[:64])
    for h in hooks:
        h.remove()
    pos = {n: i for i, (n, _) in enumerate(m.named_modules())}
    for n, out in seen.items():
        assert mem.ranges[MAX_CALLS * pos[n]] == (float(out.min()), float(out.max()))
    # the clean baseline (rate 0): the first conv's output, quantized with its range, as numpy computes it
    x, _ = _data(20)
    got = {}
    rt = mem.runtime(None)
    with rt:
        h = m[0].register_forward_hook(lambda mod, a, out: got.setdefault("q", out.clone()))   # after the runtime's
        with torch.no_grad():
            m(x)
        h.remove()
    with torch.no_grad():
        z = m[0](x).numpy()
    lo, hi = mem.ranges[MAX_CALLS * pos["0"]]
    assert np.array_equal(got["q"].numpy(), _np_quant(z, lo, hi))
    assert rt.flips == 0


def test_float_activation_format(philox_mask):
    m, qm, mem, _ = _setup(fmt="bfloat16")
    assert not mem.ranges                                   # no calibration
    x, _ = _data(24)
    log = []
    predict(m, x, 24, mem.runtime(3, 0.01, observer=_record(log)))
    for slot, start, clean, words in log:
        assert clean.dtype == torch.int16
        e = clean.numel() // 24
        idx = slot_offset(slot) + start * e + torch.arange(clean.numel())
        assert torch.equal(kernels.to_pattern(clean) ^ kernels.to_pattern(words), philox_mask(idx, 3, 0.01, range(16)))
    # clean words: torch's cast of the outputs (round to nearest even)
    with torch.no_grad():
        z = m[0](x)
    first = [c for s, _, c, _ in log if s == MAX_CALLS * 1][0]
    assert torch.equal(first, z.reshape(-1).to(torch.bfloat16).view(torch.int16))


def test_msb_only_and_bit_positions():
    m = _net()
    qm = QuantizedModel.from_module(m, rquant(8))
    xa, ya = _data(100, seed=5)
    x, _ = _data(30)

    def masks(spec):
        a = create_attack(spec)
        mem = a.faults.memory(qm, m, (xa, ya))
        log = []
        predict(m, x, 30, mem.runtime(100, a.p, protected=a.faults.protected, observer=_record(log)))
        return {s: kernels.to_pattern(c) ^ kernels.to_pattern(w) for s, _, c, w in log}

    full = masks("act_random_p0.05")
    msb = masks("act_random_msb_p0.05")
    b3 = masks("act_random_p0.05:bit=3|5")
    for s in full:
        assert torch.equal(msb[s], full[s] & 0x80) and torch.equal(b3[s], full[s] & 0x28)
    assert any(int(v.count_nonzero()) for v in msb.values())


def test_layers_and_faulty_selection():
    m, qm, mem, _ = _setup(layers=["0", "1", "5"], faulty=["1"])
    names = {p: n for p, (n, _) in mem.modules.items()}
    assert sorted(names.values()) == ["0", "1", "5"] and {names[p] for p in mem.faulty} == {"1"}   # a ReLU too
    x, _ = _data(16)
    log = []
    predict(m, x, 16, mem.runtime(1, 0.05, observer=_record(log)))
    flipped = {s // MAX_CALLS for s, _, c, w in log if not torch.equal(c, w)}
    assert flipped == {2}                                   # module position 2 is "1" (the root is 0)
    with pytest.raises(SpecError, match="layers: no module of the model matches 'nope'"):
        ActivationMemory.select(m, ["nope"])
    with pytest.raises(SpecError, match="faulty: no stored layer matches '3'"):
        ActivationMemory.select(m, ["0"], ["3"])           # faulty must name stored layers
    with pytest.raises(SpecError, match="act_layers: no module of the model matches 'nope'"):
        create_attack("random_p0.01:act_p=0.01,act_layers=nope").check_model(qm, m)


def test_attention_output_and_default_layers_of_a_vit():
    vit = build_model("vit", num_classes=10, in_channels=1, image_size=28, seed=0).eval()
    qm = QuantizedModel.from_module(vit, rquant(8))
    g = torch.Generator().manual_seed(0)
    xa = torch.randn(20, 1, 28, 28, generator=g)
    a = create_attack("act_random_p0.01:calib=20")
    mem = a.faults.memory(qm, vit, (xa, None))
    ran = mem.describe()["layers"]
    kinds = {n: type(mod).__name__ for n, mod in vit.named_modules()}
    assert {kinds[n] for n in ran} == {"Conv2d", "Linear", "MultiheadAttention"}
    assert not any(n.endswith("out_proj") for n in ran)       # computed inside the attention's own forward
    assert sum(kinds[n] == "MultiheadAttention" for n in ran) == 2
    x = torch.randn(6, 1, 28, 28, generator=g)
    assert torch.equal(predict(vit, x, 6, mem.runtime(5, 0.01)), predict(vit, x, 1, mem.runtime(5, 0.01)))


def test_combined_weight_and_activation_errors():
    m = _net()
    qm = QuantizedModel.from_module(m, rquant(8))
    xa, ya = _data(100, seed=5)
    x, _ = _data(32)
    both = list(create_attack("random_p0.01:act_p=0.005,patterns=3").perturbations(qm, model=m, data=(xa, ya)))
    weights = list(create_attack("random_p0.01:patterns=3").perturbations(qm))
    acts = create_attack("act_random_p0.005:patterns=3")
    acts_p = list(acts.perturbations(qm, model=m, data=(xa, ya)))
    assert create_attack("random_p0.01:act_p=0.005").clean_baseline == acts.clean_baseline
    for b, w, a in zip(both, weights, acts_p):
        assert torch.equal(b.codes, w.codes) and b.seed == w.seed == a.seed
        assert torch.equal(a.codes, qm.codes)                 # act_random leaves the weights clean
        qm.load_into(m)
        la, lb = [], []
        a.runtime.observer, b.runtime.observer = _record(la), _record(lb)
        predict(m, x, 32, a.runtime)
        predict(m, x, 32, b.runtime)
        for (s1, _, c1, w1), (s2, _, c2, w2) in zip(la, lb):   # the first layer sees the same clean input
            assert s1 == s2
            if s1 == MAX_CALLS * 1:
                assert torch.equal(kernels.to_pattern(c1) ^ kernels.to_pattern(w1),
                                   kernels.to_pattern(c2) ^ kernels.to_pattern(w2))
    with pytest.raises(SpecError, match="set act_p too"):
        create_attack("random_p0.01:act_format=bfloat16")


def test_evaluation_uses_the_activation_quantized_baseline():
    m = _net()
    qm = QuantizedModel.from_module(m, rquant(8))
    xa, ya = _data(100, seed=5)
    x, y = _data(120)
    a = create_attack("act_random_p0.02:patterns=3,calib=100")
    ev = evaluate_attack(m, qm, a, x, y, attack_data=(xa, ya), batch_size=50)
    mem = a.faults.memory(qm, m, (xa, ya))
    clean = predict(m, x, 7, mem.runtime(None))
    assert ev.clean_err == (clean != y).sum().item() / 120
    for res in ev.patterns:
        pred = predict(m, x, 13, mem.runtime(a.seed(res.index), 0.02))
        assert res.err == (pred != y).sum().item() / 120
        assert res.rerr == ((pred != y) | (clean != y)).sum().item() / 120
        assert res.nonfinite == int((pred == NONFINITE).sum())
    assert a.clean_baseline["activations"]["format"] == "int8"
    assert create_attack("random_p0.01").clean_baseline is None


def test_nan_activations_stay_nan_and_bad_input():
    m, qm, mem, _ = _setup()
    x, _ = _data(4)
    x[1, 0, 0, 0] = float("nan")
    got = {}
    with mem.runtime(None):
        h = m[0].register_forward_hook(lambda mod, a, out: got.setdefault("q", out.clone()))
        with torch.no_grad():
            m(x)
        h.remove()
    with torch.no_grad():
        z = m[0](x)
    assert torch.equal(torch.isnan(got["q"]), torch.isnan(z)) and bool(torch.isnan(z).any())
    with pytest.raises(SpecError, match="activation format must be"):
        ActivationFormat("int3x")
    with pytest.raises(SpecError, match="2..16 bits"):
        ActivationFormat("int32")
    with pytest.raises(ValueError, match="calibrates its ranges on the attacker split"):
        ActivationMemory.build(m, qm, ActivationFormat("int8"))
    rt = mem.runtime(1, 0.01)
    with rt, torch.no_grad():
        rt.batch(SLOT_WORDS // 16)
        with pytest.raises(ValueError, match="exceed"):
            m(x)
    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(x.t())                            # the batch dimension moves to dim 1

    tm = Transposed()
    tmem = ActivationMemory.build(tm, QuantizedModel.from_module(tm, rquant(8)), ActivationFormat("float16"))
    with tmem.runtime(1, 0.01), torch.no_grad():
        with pytest.raises(SpecError, match="not the batch"):
            tm(torch.randn(5, 3).t())


def test_harness_cell_and_preflight(tmp_path):
    """A cell of act_random through the harness: its record's clean error is the activation-quantized model's, its
    numbers are the evaluator's; layers that match no module are refused before any training."""
    from bitbench.configs.errors import UsageError
    from bitbench.configs.suite import Suite
    from bitbench.harness import Harness, RunOptions

    suite = Suite(name="act", dataset="mnist5k", model="lenet", defenses=["rquant"], rates=[0.01], patterns=2,
                  n_eval=200, train={"epochs": 1})
    h = Harness(suite, RunOptions(cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"),
                                  device="cpu", progress=False))
    with pytest.raises(UsageError, match="layers: no module of the model matches 'conv9'"):
        h.preflight(["rquant"], ["act_random_p0.01:layers=conv9"])
    h.preflight(["rquant"], ["act_random_p0.01:faulty=features.0", "random_p0.01:act_p=0.01"])
    rec = h.run_cell("rquant", "act_random_p0.005")
    dep = h.deploy("rquant")
    ds = h.dataset
    (x, y), (xa, ya) = (ds.test_x, ds.test_y), (ds.attack_x, ds.attack_y)
    assert rec.clean_baseline is not None and "activations" in rec.clean_baseline
    a = h.canonical_attack("act_random_p0.005")[1]
    mem = a.faults.memory(dep.qm, dep.model, (xa, ya))
    clean = predict(dep.model, x, None, mem.runtime(None))
    assert rec.clean_err == (clean != y).sum().item() / 200 and rec.n_patterns == 2
    for res in rec.patterns:
        pred = predict(dep.model, x, None, mem.runtime(a.seed(res.index), 0.005))
        assert res.rerr == ((pred != y) | (clean != y)).sum().item() / 200
    assert rec.rate == 0.005 and rec.attack_params["format"] == "int8"
    assert h.run_cell("rquant", "act_random_p0.005").cached    # the record is reused as any other
