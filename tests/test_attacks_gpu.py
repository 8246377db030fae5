"""Attacks on CUDA tensors: the same patterns as on the CPU, and the adversarial contract on the GPU.

Skipped (with a reason) where CUDA is absent.
"""

import numpy as np
import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.attacks import create_attack
from bitbench.defenses import QuantizedModel, QuantScheme, TrainConfig, create_defense, rquant

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _module(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


def _data(n=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    w = torch.randn(64, 10, generator=g)
    return x, (x.flatten(1) @ w).argmax(1)


@pytest.mark.parametrize("scheme", [rquant(8), rquant(4), QuantScheme(bits=8, signed=True),
                                    QuantScheme(bits=16, signed=True)], ids=str)
def test_random_and_errmap_patterns_match_cpu(scheme, tmp_path):
    qm_cpu = QuantizedModel.from_module(_module(), scheme)
    qm_gpu = qm_cpu.to("cuda")
    n = qm_cpu.n_words
    rng = np.random.default_rng(0)
    np.save(tmp_path / "u.npy", np.full((n, 1, max(8, scheme.bits)), 0.03))
    np.save(tmp_path / "many.npy", rng.choice(np.linspace(0, 0.2, 20), size=(n, 1, max(8, scheme.bits))))
    np.save(tmp_path / "stuck.npy", rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(n, 1, max(8, scheme.bits)),
                                               p=[0.9, 0.05, 0.05]))
    specs = ["random_p0.03:patterns=3", "random_msb_p0.1:patterns=2", "random_p0.05:p10=0.01,patterns=2",
             "random_p0.1:patterns=2,layers=3.*", f"errmap:file={tmp_path / 'u.npy'},patterns=2",
             f"errmap:file={tmp_path / 'many.npy'},patterns=2", f"errmap:file={tmp_path / 'stuck.npy'}"]
    for spec in specs:
        a = create_attack(spec)
        out = torch.empty_like(qm_gpu.codes)
        for pc, pg in zip(a.perturbations(qm_cpu), a.perturbations(qm_gpu, out=out)):
            assert pg.codes.is_cuda and pg.codes.dtype == qm_cpu.codes.dtype
            assert torch.equal(pg.codes.cpu(), pc.codes), spec
            assert pc.info["flips"] == pg.info["flips"]
    r = next(create_attack("random_p0.03:patterns=1").perturbations(qm_cpu)).codes
    e = next(create_attack(f"errmap:file={tmp_path / 'u.npy'},patterns=1").perturbations(qm_gpu)).codes
    assert torch.equal(e.cpu(), r)


@pytest.mark.parametrize("spec", ["bfa_n8:labels=true,trials=1,stop=budget", "bfa_n5:trials=1,stop=budget",
                                  "bfa_n6:trials=1,stop=budget,page=64,direction=0to1",
                                  "tbfa_n6:target=2,trials=1,stop=budget",
                                  "budget_e12:iterations=4,restarts=2,trials=1",
                                  "budget_e12:iterations=4,restarts=2,trials=1,page=64,direction=1to0"])
@pytest.mark.parametrize("scheme", [rquant(8), QuantScheme(bits=8, signed=True)], ids=str)
def test_adversarial_attacks_on_the_gpu(spec, scheme):
    model = _module().cuda()
    qm = QuantizedModel.from_module(model, scheme)
    qm.load_into(model)
    x, y = _data()
    data = (x.cuda(), y.cuda())
    clean = qm.codes.clone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = create_attack(spec)
    p = next(a.perturbations(qm, model=model, data=data, out=torch.empty_like(qm.codes)))
    assert p.codes.is_cuda
    per_word = kernels.hamming_distance(clean, p.codes)
    assert 0 < int(per_word.sum()) == p.info["flips"] == len(p.trace) <= a.flips
    if spec.startswith("budget"):
        assert int(per_word.max()) <= 1
    if "page=64" in spec:   # one flip per 64-byte page of the memory image
        words = torch.nonzero(per_word, as_tuple=True)[0].cpu()
        pages = (words * qm.codes.element_size()) // 64
        assert pages.unique().numel() == pages.numel()
    if "direction" in spec:
        up = "0to1" in spec
        changed = kernels.bit_xor(clean, p.codes)
        stored = kernels.bit_and(clean, changed)        # changed bits that were 1 before
        assert int(kernels.popcount(stored).sum()) == (0 if up else int(per_word.sum()))
    assert torch.equal(qm.codes, clean)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        qm.load_into(model)
        labels = data[1] if ("labels=true" in spec or spec.startswith("budget")) else model(data[0]).argmax(1)
        if spec.startswith("tbfa"):
            labels = torch.full_like(labels, 2)
        l0 = nn.functional.cross_entropy(model(data[0]), labels).item()
        qm.load_into(model, p.codes)
        l1 = nn.functional.cross_entropy(model(data[0]), labels).item()
        qm.load_into(model)
    assert (l1 < l0) if spec.startswith("tbfa") else (l1 > l0)


def test_advbet_trains_on_the_gpu():
    import bitbench.attacks.advbet  # noqa: F401

    x, y = _data(512)
    model = _module()
    d = create_defense("advbet:eps=10,iterations=2,threshold=none")
    hist = d.train(model, x, y, TrainConfig(epochs=2, lr=0.05, schedule="constant", progress=False, device="cuda"),
                   num_classes=10)
    assert hist[-1]["bet_on"] == 1.0 and hist[-1]["adv_flips"] > 0
    assert next(model.parameters()).is_cuda


@pytest.mark.parametrize("spec", ["float32", "bfloat16", "fp8e4m3", "rquant:granularity=channel",
                                  "rquant:bits=4,granularity=group:16"])
def test_memory_formats_on_cuda_equal_the_cpu(spec):
    """Issue 17's formats on the GPU: the same words, the same random patterns (float words flipped as their
    integer views) and the same decoded weights and flip deltas as on the CPU."""
    m = _module()
    qm = create_defense(spec).quantize(m)
    g = qm.to("cuda")
    assert torch.equal(g.codes.cpu(), qm.codes)
    a = create_attack("random_p0.01", patterns=2)
    cpu = [p.codes.clone() for p in a.perturbations(qm)]
    gpu = [p.codes.cpu() for p in a.perturbations(g)]
    assert all(torch.equal(x, y) for x, y in zip(cpu, gpu))
    assert torch.equal(g.dequantize(gpu[0].cuda()).cpu(), qm.dequantize(cpu[0]))
    idx = torch.arange(qm.lengths[0])
    d_cpu, d_gpu = qm.flip_deltas(0, idx), g.flip_deltas(0, idx.cuda()).cpu()
    assert torch.equal(torch.nan_to_num(d_cpu, nan=7.0), torch.nan_to_num(d_gpu, nan=7.0))


@pytest.mark.parametrize("protection", ["secded", "secded:word=32,policy=zero", "radar"])
def test_protected_memory_on_cuda_equals_the_cpu(protection):
    """A protected memory on the GPU: the same image pattern (data and check words) and the same decoded words and
    decoder counts as on the CPU."""
    from bitbench.configs.registries import create_protection
    from bitbench.defenses.protection import ProtectedModel

    qm = QuantizedModel.from_module(_module(), rquant(8))
    pm_cpu = ProtectedModel(qm, [create_protection(protection)])
    pm_gpu = pm_cpu.to("cuda")
    attack = create_attack("random_p0.01", patterns=3)
    for pc, pg in zip(attack.perturbations(pm_cpu), attack.perturbations(pm_gpu)):
        assert torch.equal(pc.codes, pg.codes.cpu())
        assert all(torch.equal(a, b.cpu()) for a, b in zip(pc.check or [], pg.check or []))
        rc, rg = pm_cpu.recover(pc.codes, pc.check), pm_gpu.recover(pg.codes, pg.check)
        assert torch.equal(rc.codes, rg.codes.cpu())
        assert rc.stats == rg.stats and rc.failed == rg.failed


def test_activation_and_metadata_chips_match_cpu():
    """Activation errors (the virtual activation memory at offsets beyond 2^62) and metadata errors draw the same
    bits on CUDA (CuPy or the torch reference) as on the CPU."""
    from bitbench.attacks.activations import ActivationFormat, ActivationMemory

    x, y = _data(64)
    masks = {}
    for dev in ("cpu", "cuda"):
        m = _module().to(dev).eval()
        qm = QuantizedModel.from_module(m, rquant(4, granularity="group:16"))
        mem = ActivationMemory.build(m, qm, ActivationFormat("int8"), data=(x.to(dev), y.to(dev)), calib=64)
        log = []
        rt = mem.runtime(17, 0.02, observer=lambda s, st, c, w: log.append(
            (s, st, (kernels.to_pattern(c) ^ kernels.to_pattern(w)).cpu())))
        with rt, torch.inference_mode():
            for i in range(0, 64, 24):
                rt.batch(i)
                m(x[i:i + 24].to(dev))
        pert = next(create_attack("random_p0.05:patterns=1,meta=exposed").perturbations(qm))
        masks[dev] = (log, pert.codes.cpu(), pert.context.lo.cpu(), pert.context.hi.cpu())
    (la, ca, loa, hia), (lb, cb, lob, hib) = masks["cpu"], masks["cuda"]
    assert [(s, st) for s, st, _ in la] == [(s, st) for s, st, _ in lb]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(la, lb))
    assert torch.equal(ca, cb)
    assert torch.equal(loa.view(torch.int32), lob.view(torch.int32)) and torch.equal(hia.view(torch.int32),
                                                                                       hib.view(torch.int32))
