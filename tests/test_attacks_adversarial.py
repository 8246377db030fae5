"""Gradient-guided attacks (BFA, budgeted PGD), the registry contract for every attack, and AdvBET."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bitbench import kernels
from bitbench.attacks import create_attack, list_attacks
from bitbench.attacks.bfa import flip_deltas
from bitbench.data import load_dataset
from bitbench.models import build_model
from bitbench.defenses import (QuantizedModel, QuantScheme, TrainConfig, create_defense, evaluate_error, list_defenses,
                      rquant)


def _mlp():
    return build_model("mlp", num_classes=10, in_channels=1, image_size=28, width=32, depth=1, seed=0)


# tiny models: one intra-op thread is as fast and far more robust on a loaded 2-core machine (conftest)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(one_thread):
    ds = load_dataset("mnist5k")
    model = _mlp()
    d = create_defense("rquant")
    d.train(model, ds.train_x[:2000], ds.train_y[:2000],
            TrainConfig(epochs=3, lr=0.05, schedule="constant", progress=False))
    qm = d.quantize(model)
    qm.load_into(model)
    model.eval()
    clean_err = evaluate_error(model, ds.test_x, ds.test_y)
    assert clean_err < 0.3
    return SimpleNamespace(ds=ds, model=model, qm=qm, data=(ds.attack_x, ds.attack_y), clean_err=clean_err)


def _error(env, codes):
    env.qm.load_into(env.model, codes)
    try:
        return evaluate_error(env.model, env.ds.test_x, env.ds.test_y)
    finally:
        env.qm.load_into(env.model)


def _random_flips(qm, n, seed):
    """n random bit flips (distinct words, one attackable bit each)."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randperm(qm.n_words, generator=g)[:n]
    bits = torch.randint(qm.bits, (n,), generator=g)
    u = qm.codes.to(torch.int64)
    u[words] ^= torch.ones(n, dtype=torch.int64) << bits
    return u.to(qm.codes.dtype)


def _replay(qm, trace):
    u = qm.codes.to(torch.int64).clone()
    w = kernels.DTYPE_WIDTH[qm.codes.dtype]
    u &= (1 << w) - 1
    for e in trace:
        u[qm.offsets[e["tensor"]] + e["index"]] ^= 1 << e["bit"]
    if qm.codes.dtype != torch.uint8:
        u = u - ((u >> (w - 1)) & 1) * (1 << w)
    return u.to(qm.codes.dtype)


def test_flip_deltas_unsigned_and_twos_complement():
    u = torch.tensor([0, 255, 128, 5], dtype=torch.uint8)
    d = flip_deltas(u, 8)
    assert d[0].tolist() == [1, 2, 4, 8, 16, 32, 64, 128]
    assert d[1].tolist() == [-1, -2, -4, -8, -16, -32, -64, -128]
    assert d[2, 7] == -128 and d[3, 0] == -1 and d[3, 1] == 2
    s = torch.tensor([5, -3, -128, 127], dtype=torch.int8)
    d = flip_deltas(s, 8)
    assert d[:, 7].tolist() == [-128, 128, 128, -128]      # the sign bit has weight -2^7
    assert d[1, 0] == -1 and d[0, 1] == 2
    assert flip_deltas(torch.tensor([-1], dtype=torch.int16), 16)[0, 15] == 32768
    assert flip_deltas(torch.tensor([3], dtype=torch.uint8), 4, protected=0b0010)[0].tolist() == [-1, 0, 4, 8]


def test_bfa_budget_trace_and_strength(env):
    qm, clean = env.qm, env.qm.codes.clone()
    a = create_attack("bfa_n20:trials=2,stop=budget")
    assert a.kind == "adversarial" and a.flips == 20 and a.num_perturbations() == 2
    perts = list(a.perturbations(qm, model=env.model, data=env.data))
    assert len(perts) == 2 and [q.index for q in perts] == [0, 1] and [q.seed for q in perts] == [0, 1]
    assert perts[0].trace != perts[1].trace                     # trials draw different attacker batches
    p = perts[0]
    assert torch.equal(qm.codes, clean)
    flips = kernels.hamming_total(clean, p.codes)
    assert flips == p.info["flips"] == len(p.trace) == 20
    assert torch.equal(_replay(qm, p.trace), p.codes)
    assert {"tensor", "name", "index", "bit", "loss", "acc"} <= set(p.trace[0])
    losses = [e["loss"] for e in p.trace]
    assert losses[-1] > losses[0]
    bfa_err = _error(env, p.codes)
    rand_err = float(np.mean([_error(env, _random_flips(qm, 20, s)) for s in range(5)]))
    assert bfa_err - env.clean_err >= 0.03
    assert bfa_err - env.clean_err > 4 * max(rand_err - env.clean_err, 0.005)


def test_bfa_deterministic_and_signed_codes(env):
    a = create_attack("bfa_n4:k=5,labels=true,trials=1")
    p1 = next(a.perturbations(env.qm, model=env.model, data=env.data))
    p2 = next(a.perturbations(env.qm, model=env.model, data=env.data))
    assert torch.equal(p1.codes, p2.codes) and p1.trace == p2.trace
    for scheme in (QuantScheme(bits=8, signed=True), QuantScheme(bits=16, signed=True), rquant(4)):
        qm = QuantizedModel.from_module(env.model, scheme)
        clean = qm.codes.clone()
        p = next(create_attack("bfa_n3:trials=1,stop=budget").perturbations(qm, model=env.model, data=env.data))
        assert p.codes.dtype == scheme.dtype
        assert kernels.hamming_total(clean, p.codes, bits=qm.bits) == p.info["flips"] == len(p.trace) == 3
        assert kernels.hamming_total(clean, p.codes) == 3               # no bit above m-1 changed
        assert torch.equal(_replay(qm, p.trace), p.codes) and torch.equal(qm.codes, clean)
        assert p.trace[-1]["loss"] > p.trace[0]["loss"] or p.trace[0]["loss"] > 0


def test_budget_attack_respects_budget(env):
    qm, clean = env.qm, env.qm.codes.clone()
    a = create_attack("budget_e20:iterations=8,trials=1")
    assert a.flips == 20 and a.sweep == [20]
    p = next(a.perturbations(qm, model=env.model, data=env.data))
    per_word = kernels.hamming_distance(clean, p.codes)
    assert int(per_word.max()) == 1                                  # at most one bit per weight
    assert int(per_word.sum()) == p.info["flips"] == len(p.trace) <= 20
    assert torch.equal(_replay(qm, p.trace), p.codes) and torch.equal(qm.codes, clean)
    err = _error(env, p.codes)
    rand_err = float(np.mean([_error(env, _random_flips(qm, 20, s)) for s in range(3)]))
    assert err - env.clean_err > 4 * max(rand_err - env.clean_err, 0.005)
    # reproducible, restarts included
    b = create_attack("budget_e10:iterations=3,restarts=2,seed=3,trials=1")
    q1 = next(b.perturbations(qm, model=env.model, data=env.data))
    q2 = next(b.perturbations(qm, model=env.model, data=env.data))
    assert torch.equal(q1.codes, q2.codes) and q1.info == q2.info
    assert kernels.hamming_total(clean, q1.codes) <= 10


def test_attacker_only_sees_the_attacker_split(env):
    attack_rows = {r.numpy().tobytes() for r in env.ds.attack_x}
    eval_rows = {r.numpy().tobytes() for r in env.ds.test_x}
    seen = []
    h = env.model.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach().clone()))
    try:
        for spec in ("bfa_n2", "tbfa_n2:target=1", "budget_e5:iterations=2"):
            next(create_attack(spec).perturbations(env.qm, model=env.model, data=env.data))
    finally:
        h.remove()
    assert seen
    for x in seen:
        for r in x:
            b = r.numpy().tobytes()
            assert b in attack_rows and b not in eval_rows


def _overrides(name, tmp_path, qm):
    if name in ("random", "random_msb"):
        return {"patterns": 2}
    if name == "errmap":
        path = tmp_path / "chip.npy"
        np.save(path, np.full((qm.n_words, 1, 8), 0.01))
        return {"file": str(path), "patterns": 2}
    if name in ("bfa", "tbfa"):
        return {"n": 2, "trials": 2}
    if name == "budget":
        return {"eps": 5, "iterations": 2, "trials": 2}
    return {}


@pytest.mark.parametrize("name", list_attacks())
def test_every_registered_attack_keeps_the_contract(env, name, tmp_path):
    qm, model = env.qm, env.model
    attack = create_attack(name, **_overrides(name, tmp_path, qm))
    assert attack.kind in ("random", "adversarial", "analysis")
    if attack.kind == "analysis":   # a search over other attacks' cells (tolerable): it perturbs nothing itself
        from bitbench.configs.errors import UsageError

        with pytest.raises(UsageError, match="analysis"):
            list(attack.perturbations(qm, model=model, data=env.data))
        assert create_attack(attack.rate_spec(0.01)).kind == "random"
        return
    clean = qm.codes.clone()
    model.train()
    model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = torch.empty_like(qm.codes)
    n = 0
    for p in attack.perturbations(qm, model=model, data=env.data, out=out):
        assert p.codes.dtype == qm.codes.dtype and p.codes.numel() == qm.n_words
        assert isinstance(p.index, int) and isinstance(p.info, dict)
        assert torch.equal(qm.codes, clean)
        n += 1
    assert n == attack.num_perturbations()
    assert torch.equal(qm.codes, clean)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()


def test_advbet_trains_a_robust_quantized_model(env):
    import bitbench.attacks.advbet  # noqa: F401  (registers the defense)

    assert "advbet" in list_defenses()
    d = create_defense("advbet:iterations=2")
    assert (d.eps, d.w_max, d.bits, d.threshold, d.grad_clip, d.iterations) == (20, 0.1, 8, "auto", 0.05, 2)
    assert create_defense("advbet").iterations == 5
    with pytest.raises(ValueError, match="eps"):
        create_defense("advbet:eps=-1")
    ds = env.ds
    model = _mlp()
    hist = d.train(model, ds.train_x[:1500], ds.train_y[:1500],
                   TrainConfig(epochs=2, lr=0.05, schedule="constant", progress=False), num_classes=10)
    assert hist[-1].get("bet_on", 0) > 0 and hist[-1].get("adv_flips", 0) > 0   # the attack ran in training
    qm = d.quantize(model)
    qm.load_into(model)
    err = evaluate_error(model, ds.test_x, ds.test_y)
    assert err < 0.5   # chance is 0.9
    assert int(qm.codes.max()) <= 255 and all(p.abs().max() <= 0.1 + 1e-6 for p in model.parameters())
