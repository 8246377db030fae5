"""Training (defenses/training.py): QAT accuracy, clipping, resumption, determinism, lr schedule."""
from __future__ import annotations

import math
import os
import time

import pytest
import torch
from torch import nn

from bitbench.data import load_dataset
from bitbench.models import build_model
from bitbench.defenses import create_defense
from bitbench.defenses.quantization import rquant
from bitbench.defenses.quantized_model import QuantizedModel
from bitbench.defenses.randbet import RandBETStep
from bitbench.defenses.training import (CHECKPOINT_FORMAT, QATStep, TrainConfig, Trainer, evaluate_error, train)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def lenet(ds, seed=0, norm="none"):
    return build_model("lenet", num_classes=10, in_channels=1, image_size=28, norm=norm, mean=ds.mean, std=ds.std,
                       seed=seed)


def cfg(**kw):
    base = dict(epochs=2, batch_size=64, lr=0.05, schedule="constant", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------ QAT accuracy

def test_qat_lenet_reaches_90_percent(ds):
    """LeNet, 8-bit RQuant QAT, 3 epochs on the 4000 embedded training images; the *quantized* model (codes
    loaded into the module) is evaluated on the 1000 test images. It reaches about 95%; 90% leaves margin."""
    model = lenet(ds)
    t0 = time.perf_counter()
    tr = Trainer(model, cfg(epochs=3), scheme=rquant(8))
    hist = tr.fit(ds.train_x, ds.train_y)
    seconds = time.perf_counter() - t0
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["loss"] < hist[0]["loss"]
    qm = QuantizedModel.from_module(model, rquant(8))
    qm.load_into(model)
    err = evaluate_error(model, ds.test_x, ds.test_y)
    assert err <= 0.10, (err, f"{seconds:.1f} s")  # the time is shown, not asserted: see `perf train`


def test_qat_step_gradient_is_taken_at_the_quantized_weights(ds):
    """QATStep: the gradient equals the one of a copy holding the dequantized weights (and differs from the
    float model's gradient at a coarse 3-bit scheme); the float weights are kept."""
    import copy

    import torch.nn.functional as F

    scheme = rquant(3)
    model = lenet(ds, 4)
    t = Trainer(model, cfg(), scheme=scheme)
    x, y = ds.train_x[:16], ds.train_y[:16]
    floats = [p.detach().clone() for p in model.parameters()]
    qcopy = copy.deepcopy(model)
    QuantizedModel.from_module(qcopy, scheme).load_into(qcopy)
    fcopy = copy.deepcopy(model)
    stats = QATStep()(t, x, y)
    F.cross_entropy(qcopy(x), y).backward()
    F.cross_entropy(fcopy(x), y).backward()
    assert stats["loss"] == pytest.approx(F.cross_entropy(qcopy(x), y).item(), rel=1e-6)
    for p, q, f, w in zip(model.parameters(), qcopy.parameters(), fcopy.parameters(), floats):
        assert torch.equal(p, w)
        assert torch.equal(p.grad, q.grad)
    assert not all(torch.allclose(p.grad, f.grad, atol=1e-6) for p, f in zip(model.parameters(),
                                                                                fcopy.parameters()))


# --------------------------------------------------------------------------------------------------- clipping

@pytest.mark.parametrize("w_max", [0.1, 0.05])
def test_clipping_bounds_every_quantized_parameter(ds, w_max):
    model = lenet(ds, norm="rgn")
    scheme = rquant(8, w_max)
    tr = Trainer(model, cfg(epochs=1, batch_size=128), scheme=scheme, w_max=w_max)
    tr.fit(ds.train_x[:512], ds.train_y[:512])
    w32 = torch.tensor(w_max, dtype=torch.float32).item()  # the bound as the float32 weights hold it
    for n, p in model.named_parameters():
        assert float(p.detach().abs().max()) <= w32, n
    # the clipping is active (some weights sit at the bound) ...
    assert any(float(p.detach().abs().max()) == w32 for p in model.parameters())
    # ... and the deployed quantized weights stay in [-w_max, w_max] too (up to the float32 rounding of
    # (code - center) * scale + mid: a few ulp)
    qm = QuantizedModel.from_module(model, scheme)
    deq = qm.dequantize()
    assert float(deq.abs().max()) <= w32 * (1 + 4 * torch.finfo(torch.float32).eps)


def test_clipping_only_selected_parameters(ds):
    model = lenet(ds)
    tr = Trainer(model, cfg(epochs=1, batch_size=128, lr=0.2), scheme=rquant(8), w_max=0.01,
                 include="classifier.*")
    tr.fit(ds.train_x[:256], ds.train_y[:256])
    for n, p in model.named_parameters():
        if n.startswith("classifier."):
            assert float(p.detach().abs().max()) <= 0.01
    assert max(float(p.detach().abs().max()) for n, p in model.named_parameters() if n.startswith("features.")) > 0.01


# ------------------------------------------------------------------------------------------------- resumption

@pytest.mark.parametrize("spec", ["rquant", "randbet:threshold=none,p=0.02"])
def test_resume_equals_uninterrupted(ds, tmp_path, spec):
    """Train 2 epochs, interrupted after 1 (checkpoint), resumed by a new Trainer and model: bit-identical to an
    uninterrupted run with the same seed (momentum buffers, data order generator and step state restored)."""
    x, y = ds.train_x[:512], ds.train_y[:512]
    c = cfg(schedule="multistep", milestones=(0.5,), seed=3)
    d = create_defense(spec)

    ref = lenet(ds, 1)
    hist_ref = d.train(ref, x, y, c)

    ck = tmp_path / "ck.pt"
    m1 = lenet(ds, 1)
    t1 = d.trainer(m1, c)
    t1.fit(x, y, checkpoint=ck, key="k", stop_after=1)
    assert t1.epoch == 1 and os.listdir(tmp_path) == ["ck.pt"]
    assert not same_weights(m1, ref)

    saved = torch.load(ck, weights_only=True)  # the checkpoint loads with weights_only=True
    assert saved["format"] == CHECKPOINT_FORMAT and saved["key"] == "k" and saved["epoch"] == 1

    m2 = lenet(ds, 1)
    t2 = d.trainer(m2, c)
    hist = t2.fit(x, y, checkpoint=ck, key="k")
    assert t2.epoch == 2
    assert same_weights(m2, ref)
    assert [h["lr"] for h in hist] == [h["lr"] for h in hist_ref] == [0.05, 0.05 * 0.1]
    assert [h["loss"] for h in hist] == [h["loss"] for h in hist_ref]
    assert torch.load(ck, weights_only=True)["epoch"] == 2

    # a checkpoint written under another key is not loaded (stop_after=0: no training, no overwrite)
    m3 = lenet(ds, 1)
    t3 = d.trainer(m3, c)
    t3.fit(x, y, checkpoint=ck, key="other", stop_after=0)
    assert t3.epoch == 0 and same_weights(m3, lenet(ds, 1))
    # the same key resumes a finished run without training
    m4 = lenet(ds, 1)
    t4 = d.trainer(m4, c)
    t4.fit(x, y, checkpoint=ck, key="k")
    assert t4.epoch == 2 and same_weights(m4, ref)


def test_checkpoint_with_foreign_format_is_ignored(ds, tmp_path):
    ck = tmp_path / "ck.pt"
    torch.save({"format": "something/1", "key": None, "epoch": 5}, ck)
    m = lenet(ds)
    t = Trainer(m, cfg(epochs=1), scheme=rquant(8))
    with pytest.warns(RuntimeWarning, match=r"ck\.pt: carries no content digest .* it is not used"):
        t.fit(ds.train_x[:64], ds.train_y[:64], checkpoint=ck, stop_after=0)
    assert t.epoch == 0


# ------------------------------------------------------------------------------------------------ determinism

@pytest.mark.parametrize("spec", ["rquant", "clip", "randbet:threshold=none"])
def test_deterministic_and_global_rng_untouched(ds, spec):
    x, y = ds.train_x[:256], ds.train_y[:256]
    d = create_defense(spec)
    state = torch.get_rng_state()
    a, b = lenet(ds), lenet(ds)
    d.train(a, x, y, cfg(epochs=1, batch_size=32, seed=5))
    assert torch.equal(torch.get_rng_state(), state)  # training never draws from the global RNG
    d.train(b, x, y, cfg(epochs=1, batch_size=32, seed=5))
    assert same_weights(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    # another seed changes the data order, hence the weights
    c = lenet(ds)
    d.train(c, x, y, cfg(epochs=1, batch_size=32, seed=6))
    assert not same_weights(a, c)


def _train_state(ds, spec, cfg_, process_threads):
    """Train LeNet with ``cfg_`` while the process is set to ``process_threads``: the state the checkpoint holds
    (model, optimizer, generator) and the thread counts seen inside the steps."""
    before = torch.get_num_threads()
    torch.set_num_threads(process_threads)
    try:
        d = create_defense(spec)
        t = d.trainer(lenet(ds, 2), cfg_)
        seen = []
        inner = t.step
        t.step = lambda tr, x, y: seen.append(torch.get_num_threads()) or inner(tr, x, y)
        t.fit(ds.train_x[:640], ds.train_y[:640])
        assert torch.get_num_threads() == process_threads  # restored after training
        t.step = inner
        st = t.state_dict()
        return st["model"], st["optimizer"], st["generator"], set(seen)
    finally:
        torch.set_num_threads(before)


def _same_state(a, b) -> bool:
    (ma, oa, ga, _), (mb, ob, gb, _) = a, b
    sa, sb = oa["state"], ob["state"]
    return (ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma) and torch.equal(ga, gb)
            and sa.keys() == sb.keys()
            and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa))


@pytest.mark.parametrize("spec", ["rquant", "randbet:p=0.02"])
def test_same_seed_and_recipe_same_checkpoint_with_one_and_two_threads(ds, spec):
    """The checkpoint is a function of (recipe, seed, backend): training runs at the recipe's intra-op thread
    count (TrainConfig.threads), whatever the process is set to, so 1 and 2 process threads give the same weights,
    momentum buffers and data order state under the same key. Another recipe thread count is another key."""
    c = cfg(epochs=2, batch_size=128, schedule="multistep", seed=4)  # threads=1, the default
    one = _train_state(ds, spec, c, 1)
    two = _train_state(ds, spec, c, 2)
    assert one[3] == two[3] == {1}  # every step ran at the recipe's count
    assert _same_state(one, two)
    c2 = cfg(epochs=2, batch_size=128, schedule="multistep", seed=4, threads=2)
    assert c2.identity() != c.identity() and c2.identity()["threads"] == 2
    assert _train_state(ds, spec, c2, 1)[3] == {2}


def test_train_command_same_checkpoint_with_omp_one_and_two_threads(tmp_path):
    """End to end: ``python -m benchmark train`` under OMP_NUM_THREADS=1 and =2 (separate caches) writes a
    checkpoint of the same name (the same key) holding the same weights and momentum buffers."""
    import subprocess
    import sys

    files = []
    for n in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(n), BITBENCH_CACHE=str(tmp_path / f"cache{n}"))
        r = subprocess.run([sys.executable, "-m", "benchmark", "train", "--defense", "clip", "--epochs", "1",
                            "--seed", "0", "--no-progress"], env=env, capture_output=True, text=True, timeout=600,
                           cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr[-2000:]
        (ck,) = (tmp_path / f"cache{n}").rglob("*.pt")
        files.append(ck)
    assert files[0].name == files[1].name  # the same key
    a, b = (torch.load(f, weights_only=True) for f in files)
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


def test_identity_holds_threads_and_backend_not_the_device_index():
    c = TrainConfig()
    ident = c.identity()
    assert ident["threads"] == 1
    assert ident["backend"] == {"device": "cpu", "torch": torch.__version__.split("+")[0],
                                "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    assert TrainConfig(device="cuda:1").identity()["backend"]["device"] == "cuda"
    assert TrainConfig(device="cuda:0").identity() == TrainConfig(device="cuda:1").identity()
    assert TrainConfig(device="cuda").identity() != ident
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads"):
            TrainConfig(threads=bad)


def test_weights_clipped_before_the_first_forward(ds):
    """The initial weights are clipped before the first forward pass (the original clips before every forward
    pass), and after every step; a call that trains nothing leaves them alone."""
    w_max = 0.05
    model = lenet(ds)
    assert max(float(p.detach().abs().max()) for p in model.parameters()) > w_max
    t = Trainer(model, cfg(epochs=1, batch_size=128), scheme=rquant(8, w_max), w_max=w_max)
    t.fit(ds.train_x[:128], ds.train_y[:128], stop_after=0)
    assert max(float(p.detach().abs().max()) for p in model.parameters()) > w_max
    seen = []
    inner = t.step
    t.step = lambda tr, x, y: seen.append(max(float(p.detach().abs().max()) for p in tr.model.parameters())) \
        or inner(tr, x, y)
    t.fit(ds.train_x[:256], ds.train_y[:256])
    w32 = torch.tensor(w_max, dtype=torch.float32).item()
    assert len(seen) == 2 and all(m <= w32 for m in seen)
    assert max(float(p.detach().abs().max()) for p in model.parameters()) <= w32
    # float training (no scheme) clips its parameters the same way
    m2 = lenet(ds)
    t2 = Trainer(m2, cfg(epochs=1, batch_size=128), w_max=w_max)
    first = []
    inner2 = t2.step
    t2.step = lambda tr, x, y: first.append(max(float(p.detach().abs().max()) for p in tr.model.parameters())) \
        or inner2(tr, x, y)
    t2.fit(ds.train_x[:128], ds.train_y[:128])
    assert first == [pytest.approx(first[0])] and first[0] <= w32


# -------------------------------------------------------------------------------------------------- lr schedule

def _lrs(**kw):
    t = Trainer(nn.Linear(2, 2), TrainConfig(progress=False, **kw))
    return [t.lr_at(e) for e in range(kw["epochs"])]


def test_lr_multistep_at_two_three_four_fifths():
    lrs = _lrs(epochs=10, lr=0.05)
    expect = [0.05] * 4 + [0.005] * 2 + [0.0005] * 2 + [0.00005] * 2
    assert lrs == pytest.approx(expect, rel=1e-12)
    lrs = _lrs(epochs=250, lr=0.05)  # the paper: x0.1 at epochs 100, 150, 200
    for e, v in [(0, 0.05), (99, 0.05), (100, 0.005), (149, 0.005), (150, 5e-4), (199, 5e-4), (200, 5e-5),
                 (249, 5e-5)]:
        assert lrs[e] == pytest.approx(v, rel=1e-12), e
    lrs = _lrs(epochs=4, lr=1.0, milestones=(0.5,), gamma=0.5)
    assert lrs == [1.0, 1.0, 0.5, 0.5]


def test_lr_milestones_at_floor_of_two_three_four_fifths():
    """The multistep drops at epochs floor(2E/5), floor(3E/5), floor(4E/5) (0-based; the original's integer
    milestones), for every E up to 300: integer arithmetic in the test, no float rounding."""
    for epochs in range(1, 301):
        c = TrainConfig(epochs=epochs, progress=False)
        assert c.milestone_epochs() == [2 * epochs // 5, 3 * epochs // 5, 4 * epochs // 5], epochs
        t = Trainer(nn.Linear(2, 2), c)
        ks = [sum(e >= m for m in (2 * epochs // 5, 3 * epochs // 5, 4 * epochs // 5)) for e in range(epochs)]
        assert [t.lr_at(e) for e in range(epochs)] == [0.05 * 0.1 ** k for k in ks], epochs
    # where rounding and the floor disagree: E = 2 (milestones 0, 1, 1), E = 7 (2, 4, 5)
    assert _lrs(epochs=2, lr=1.0) == [pytest.approx(0.1), pytest.approx(0.001)]
    assert _lrs(epochs=7, lr=1.0) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])
    with pytest.raises(ValueError, match="milestones"):
        TrainConfig(milestones=(0.5, 1.5))


def test_recipe_records_the_schedule_and_its_deviations():
    from bitbench.configs.suite import load_suite

    paper = TrainConfig(epochs=250)
    r = paper.recipe()
    assert r["deviations"] == [] and r["milestones"] == [100, 150, 200] and r["threads"] == 1
    assert r["backend"] == paper.identity()["backend"]
    cos = TrainConfig(schedule="cosine").recipe()
    assert "milestones" not in cos and any("lr schedule 'cosine'" in d for d in cos["deviations"])
    other = TrainConfig(milestones=(0.5,), lr=0.1, nesterov=False).recipe()["deviations"]
    assert len(other) == 3 and "lr x0.1 at epochs [10]" in other[0]
    # the default suite trains with a cosine schedule: recorded as a deviation; the CIFAR suites follow the paper
    default = TrainConfig.from_dict(load_suite("default").train)
    rec = create_defense("rquant").recipe(default)
    assert rec["train"]["schedule"] == "cosine" and "deviations" not in rec["train"]
    assert any("cosine" in d for d in rec["deviations"])
    assert create_defense("rquant").recipe()["deviations"] == []  # without the training config: the defense's
    for name in ("cifar10", "cifar100", "mnist"):
        c = TrainConfig.from_dict(load_suite(name).train)
        assert create_defense("randbet").recipe(c)["deviations"] == [], name
    rb = create_defense("randbet:curriculum=step,w_max=0.1+secded").recipe(default)
    assert rb["protection"] and len(rb["deviations"]) == 2 and rb["train"]["threads"] == 1
    fl = create_defense("float32:w_max=none").recipe(default)
    assert len(fl["deviations"]) == 2


def test_lr_cosine_and_constant():
    t = Trainer(nn.Linear(2, 2), TrainConfig(epochs=10, lr=0.1, schedule="cosine", progress=False))
    assert t.lr_at(0) == pytest.approx(0.1)
    assert t.lr_at(5) == pytest.approx(0.05)
    assert t.lr_at(10) == pytest.approx(0.0, abs=1e-15)
    for e in range(10):
        for frac in (0.0, 0.5):
            assert t.lr_at(e, frac) == pytest.approx(0.05 * (1 + math.cos(math.pi * (e + frac) / 10)))
    assert all(a > b for a, b in zip([t.lr_at(e) for e in range(10)], [t.lr_at(e) for e in range(1, 11)]))
    assert _lrs(epochs=5, lr=0.3, schedule="constant") == [0.3] * 5


def test_history_lr_matches_schedule(ds):
    m = lenet(ds)
    t = Trainer(m, cfg(epochs=5, schedule="multistep"), scheme=rquant(4))
    hist = t.fit(ds.train_x[:64], ds.train_y[:64])
    assert [h["lr"] for h in hist] == [t.lr_at(e) for e in range(5)]
    assert [h["lr"] for h in hist] == pytest.approx([0.05, 0.05, 0.005, 0.0005, 0.00005])
    assert t.optimizer.param_groups[0]["lr"] == hist[-1]["lr"]


# --------------------------------------------------------------------------------------------- config, helpers

@pytest.mark.parametrize("kw,match", [(dict(epochs=-1), "epochs"), (dict(epochs=1.5), "epochs"),
                                      (dict(batch_size=0), "batch_size"), (dict(lr=0.0), "lr"),
                                      (dict(schedule="step"), "schedule")])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_config_dict_round_trip():
    c = TrainConfig(epochs=3, milestones=[0.5, 0.75])
    assert c.milestones == (0.5, 0.75)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert "device" not in c.identity() and "progress" not in c.identity()
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})


def test_wrap_is_used_for_the_forward(ds):
    """The `wrap` module (e.g. DistributedDataParallel) runs the forward of every step, QAT as well."""
    calls = []

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(x.shape[0])
            return self.inner(x)

    for step in (QATStep(), RandBETStep(0.01, threshold=None)):
        calls.clear()
        m = lenet(ds)
        t = Trainer(m, cfg(epochs=1, batch_size=32), scheme=rquant(8), step=step, wrap=Wrapper)
        t.fit(ds.train_x[:64], ds.train_y[:64])
        # one forward per batch; RandBET (always on) also runs the bit-error forward
        expect = [32, 32] if type(step) is QATStep else [32, 32, 32, 32]
        assert calls == expect, (type(step).__name__, calls)


def test_float_training_and_train_helper(ds):
    m = lenet(ds)
    before = [p.detach().clone() for p in m.parameters()]
    hist = train(m, ds.train_x[:128], ds.train_y[:128], {"epochs": 1, "batch_size": 64, "progress": False})
    assert len(hist) == 1 and "loss" in hist[0]
    assert any(not torch.equal(p, b) for p, b in zip(m.parameters(), before))
    with pytest.raises(ValueError, match="no training data"):
        Trainer(lenet(ds), cfg()).fit(ds.train_x[:0], ds.train_y[:0])


def test_evaluate_error():
    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            out = torch.zeros(x.shape[0], 3)
            out[:, 1] = 1
            return out

    y = torch.tensor([1, 1, 0, 2, 1])
    assert evaluate_error(Const(), torch.zeros(5, 2), y, batch_size=2) == pytest.approx(2 / 5)
