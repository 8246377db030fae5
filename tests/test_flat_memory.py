"""The flat-memory fast path changes no number: it equals a tensor-by-tensor reference, bit for bit.

The reference below quantizes, flips and dequantizes each parameter tensor separately with the reference
functions (``quantize_tensor``/``dequantize_tensor``, ``kernels.random_flip`` per tensor at its global offset) and
copies each tensor into its parameter, as a straightforward implementation would. The trainer's flat path (one
buffer, segmented ranges, one flip over the whole memory) must give the same codes and the same trained weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bitbench import kernels
from bitbench.defenses import QuantizedModel, TrainConfig, Trainer, RandBETStep, rquant, normal
from bitbench.defenses.quantization import dequantize_tensor, quantize_tensor
from bitbench.defenses.quantized_model import flat_buffer_of, flatten_parameters
from bitbench.defenses.training import _batches

from bitbench.data import load_dataset
from bitbench.models import build_model


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("mnist5k")
    return ds.train_x[:384], ds.train_y[:384], ds


def lenet(ds, norm="none"):
    return build_model("lenet", num_classes=10, in_channels=1, image_size=28, mean=ds.mean, std=ds.std, seed=0,
                       norm=norm)


def reference_train(model, x, y, scheme, *, epochs, batch_size, lr, w_max, seed, p=None, rb_seed=None):
    """Tensor-by-tensor QAT (and RandBET without curriculum) with the same data order as the Trainer."""
    params = [p_ for p_ in model.parameters() if p_.requires_grad]
    offsets, o = [], 0
    for q in params:
        offsets.append(o)
        o += q.numel()
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    rb_gen = torch.Generator().manual_seed(rb_seed) if p is not None else None
    for _ in range(epochs):
        for idx in _batches(x.shape[0], batch_size, gen):
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            if w_max is not None:  # clipped before every forward pass (the initial weights too) and after each step
                with torch.no_grad():
                    for q in params:
                        q.clamp_(-w_max, w_max)
            saved = [q.detach().clone() for q in params]
            quant = [quantize_tensor(q.detach(), scheme) for q in params]
            with torch.no_grad():
                for q, (c, ctx) in zip(params, quant):
                    q.copy_(dequantize_tensor(c, ctx, scheme).view_as(q))
            F.cross_entropy(model(xb), yb).backward()
            if p is not None:
                gc = [q.grad.clone() for q in params]
                for q in params:
                    q.grad = None
                seed_k = int(torch.randint(0, 2 ** 62, (1,), generator=rb_gen).item())
                with torch.no_grad():
                    for q, (c, ctx), off in zip(params, quant, offsets):
                        cp = kernels.random_flip(c, p, seed=seed_k, bits=scheme.bits, protected=scheme.protected,
                                                 offset=off)
                        q.copy_(dequantize_tensor(cp, ctx, scheme).view_as(q))
                F.cross_entropy(model(xb), yb).backward()
                with torch.no_grad():
                    for q, g in zip(params, gc):
                        q.grad = (g + q.grad.clamp(-0.05, 0.05)) / 2
            with torch.no_grad():
                for q, s_ in zip(params, saved):
                    q.copy_(s_)
            opt.step()
            if w_max is not None:
                with torch.no_grad():
                    for q in params:
                        q.clamp_(-w_max, w_max)


@pytest.mark.parametrize("kind", ["qat", "randbet"])
def test_flat_training_equals_tensor_by_tensor_reference(data, kind):
    x, y, ds = data
    torch.set_num_threads(1)
    scheme = rquant(8, 0.1)
    ref = lenet(ds)
    flat = copy.deepcopy(ref)
    p = 0.02 if kind == "randbet" else None
    reference_train(ref, x, y, scheme, epochs=2, batch_size=64, lr=0.05, w_max=0.1, seed=7, p=p, rb_seed=11)
    step = RandBETStep(p, threshold=None, seed=11) if kind == "randbet" else None
    tr = Trainer(flat, TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=7, schedule="constant", progress=False),
                 scheme=scheme, step=step, w_max=0.1)
    assert flat_buffer_of(tr.quantizer.params) is not None, "the trainer keeps its parameters in one buffer"
    tr.fit(x, y)
    for (n, a), (_, b) in zip(ref.named_parameters(), flat.named_parameters()):
        assert torch.equal(a, b), f"{kind}: parameter {n} differs from the tensor-by-tensor reference"


@pytest.mark.parametrize("scheme", [rquant(8), rquant(4, 0.1), normal(8)], ids=str)
def test_flat_codes_and_in_place_load_equal_reference(data, scheme):
    _, _, ds = data
    model = lenet(ds)
    qm = QuantizedModel.from_module(model, scheme)
    for v, (n, prm) in zip(qm.views(), model.named_parameters()):
        c, _ = quantize_tensor(prm.detach(), scheme)
        assert torch.equal(v, c), n
    # Patterns over the whole memory, loaded through the flat parameter buffer, equal per-tensor dequantization.
    other = copy.deepcopy(model)
    flatten_parameters(qm.parameters_of(model))
    assert flat_buffer_of(qm.parameters_of(model)) is not None
    pert = kernels.random_flip(qm.codes, 0.05, seed=123, bits=qm.bits, protected=qm.protected)
    qm.load_into(model, pert)
    qm.load_into(other, pert)  # not flattened: the multi-tensor copy path
    for t, ((n, a), (_, b)) in enumerate(zip(model.named_parameters(), other.named_parameters())):
        ref = dequantize_tensor(qm.views(pert)[t], qm.context[t:t + 1], scheme).view_as(a)
        assert torch.equal(a, ref) and torch.equal(b, ref), n


@pytest.mark.gpu
def test_cuda_flat_path_matches_cpu(data):
    """On a GPU: the same codes, the same chips and the same dequantized weights as on the CPU; RandBET trains."""
    x, y, ds = data
    scheme = rquant(8, 0.1)
    cpu = lenet(ds)
    gpu = copy.deepcopy(cpu).cuda()
    qc, qg = QuantizedModel.from_module(cpu, scheme), QuantizedModel.from_module(gpu, scheme)
    assert torch.equal(qg.codes.cpu(), qc.codes)
    pc = kernels.random_flip(qc.codes, 0.05, seed=9, bits=8, protected=qc.protected)
    pg = kernels.random_flip(qg.codes, 0.05, seed=9, bits=8, protected=qg.protected)
    assert torch.equal(pg.cpu(), pc)
    flatten_parameters(qg.parameters_of(gpu))
    qc.load_into(cpu, pc)
    qg.load_into(gpu, pg)
    for (n, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert torch.equal(a, b.cpu()), n
    tr = Trainer(gpu, TrainConfig(epochs=1, batch_size=128, device="cuda", progress=False), scheme=scheme,
                 step=RandBETStep(0.01, threshold=None, seed=1), w_max=0.1)
    hist = tr.fit(x, y)
    assert hist[-1]["bet_on"] == 1.0 and torch.isfinite(torch.tensor(hist[-1]["loss"]))
    assert flat_buffer_of(tr.quantizer.params) is not None
