"""The defenses (defenses/zoo.py, defenses/randbet.py, defenses/base.py) and their registry entries."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitbench import kernels
from bitbench.data import load_dataset
from bitbench.models import build_model
from bitbench.defenses import randbet as randbet_mod
from bitbench.defenses.base import Defense
from bitbench.defenses.quantization import normal, rquant
from bitbench.defenses.quantized_model import QuantizedModel
from bitbench.defenses.randbet import RandBETStep, curriculum_next
from bitbench.configs.spec import SpecError
from bitbench.defenses.training import TrainConfig, Trainer, evaluate_error
from bitbench.configs.registries import DEFENSES, create_defense, list_defenses
from bitbench.defenses.zoo import RandBET, resolve_threshold


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def lenet(ds, seed=0):
    return build_model("lenet", num_classes=10, in_channels=1, image_size=28, mean=ds.mean, std=ds.std, seed=seed)


# ----------------------------------------------------------------------------- every registered defense trains

@pytest.mark.parametrize("name", list_defenses())
def test_every_defense_trains_to_a_usable_quantized_model(ds, name):
    """Each registered defense (built-in or plugged in) with its defaults: 2 epochs on 2048 training images, then
    the deployed quantized model. Chance is 90% error on 10 balanced classes and an untrained LeNet sits there;
    the built-in defenses land at 6-13% over init seeds 0..4 (Normal, the slowest learner, can stall near 75% on
    half the data), so < 50% is far below chance with a wide margin for any reasonable recipe."""
    d = create_defense(name)
    assert isinstance(d, Defense) and d.registry_name == name and d.spec == name
    model = lenet(ds)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="constant", progress=False, seed=0)
    hist = d.train(model, ds.train_x[:2048], ds.train_y[:2048], cfg, num_classes=10)
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)
    s = d.scheme()
    qm = d.quantize(model, trained_here=True)  # trained with its recipe just now
    assert qm.scheme == s and qm.codes.dtype == s.dtype
    c = qm.codes.to(torch.int64)
    if s.has_context:  # affine integer codes
        assert int(c.min()) >= s.code_min and int(c.max()) <= s.code_max
        assert int((c - s.center).abs().max()) <= s.levels
        if not s.signed:
            assert int((c & s.protected).max()) == 0
    else:  # raw float bits: the trained weights in the float type
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert torch.equal(qm.dequantize(), flat.to(s.float_dtype).float())
    if d.w_max is not None:
        assert float(qm.dequantize().abs().max()) <= d.w_max * (1 + 1e-6)
    qm.load_into(model)
    err = evaluate_error(model, ds.test_x, ds.test_y)
    assert err < 0.5, (name, err)


def test_builtin_defenses_and_schemes():
    assert {"normal", "rquant", "clip", "randbet"} <= set(list_defenses())
    assert create_defense("normal").scheme() == normal(8)
    assert create_defense("rquant:bits=4").scheme() == rquant(4, 1.0)
    assert create_defense("clip").scheme() == rquant(8, 0.1) and create_defense("clip").w_max == 0.1
    # every model of the paper is clipped: Normal and RQuant at 1 (w_max=none turns it off, and says so)
    assert create_defense("normal").w_max == 1.0 and create_defense("rquant").w_max == 1.0
    assert create_defense("rquant").scheme() == rquant(8, 1.0)
    assert create_defense("normal:w_max=none").w_max is None and create_defense("rquant:w_max=none").scheme() == \
        rquant(8)
    assert create_defense("normal").recipe()["deviations"] == []
    assert "no weight clipping" in create_defense("normal:w_max=none").recipe()["deviations"][0]
    assert create_defense("randbet").recipe()["curriculum"] == "loss"
    assert "curriculum 'step'" in create_defense("randbet:curriculum=step").recipe()["deviations"][0]
    assert "curriculum 'none'" in create_defense("randbet:threshold=none").recipe()["deviations"][0]
    d = create_defense("randbet")
    assert d.scheme() == rquant(8, 0.1) and d.w_max == 0.1
    step = d.make_step(seed=4, num_classes=10)
    assert isinstance(step, RandBETStep)
    assert (step.p, step.grad_clip, step.threshold) == (0.01, 0.05, 1.75)
    assert d.make_step(seed=4, num_classes=100).threshold == 3.5
    assert create_defense("randbet:threshold=none").make_step(seed=0).threshold is None
    assert create_defense("randbet:threshold=2.5").make_step(seed=0).threshold == 2.5
    # the step's seed follows the training seed
    assert d.make_step(seed=4).seed == d.make_step(seed=4).seed != d.make_step(seed=5).seed
    ident = d.identity()
    assert ident["defense"] == "randbet" and ident["params"]["p"] == 0.01 and ident["scheme"]["w_max"] == 0.1
    assert repr(d) == "<defense randbet>"


# -------------------------------------------------------------------------------------------- specs and names

def test_list_defenses_wildcards():
    assert list_defenses("rand*") == ["randbet"]
    assert list_defenses("*quant") == ["quant", "rquant"]
    assert list_defenses("r*t") == ["randbet", "rquant"]
    assert list_defenses("[cn]*") == [n for n in list_defenses() if n[0] in "cn"]
    assert list_defenses("zzz*") == []
    assert list_defenses() == sorted(list_defenses())


def test_spec_parsing_sets_parameters():
    d = create_defense("randbet:p=0.02,w_max=0.05,bits=4")
    assert isinstance(d, RandBET)
    assert (d.p, d.w_max, d.bits) == (0.02, 0.05, 4)
    assert isinstance(d.bits, int) and isinstance(d.p, float)
    assert d.params == {"p": 0.02, "w_max": 0.05, "bits": 4, "threshold": "auto", "grad_clip": 0.05,
                        "curriculum": "loss", "granularity": "tensor"}
    assert d.scheme() == rquant(4, 0.05)
    assert d.make_step(seed=0).p == 0.02
    # canonical spec: sorted, only non-default parameters
    assert d.spec == "randbet:bits=4,p=0.02,w_max=0.05"
    assert DEFENSES.canonical(" randbet : w_max=0.05 , bits=4, p=2e-2 ") == d.spec
    assert DEFENSES.canonical("randbet:p=0.01,w_max=0.1") == "randbet"
    assert DEFENSES.canonical("clip:w_max=1") == "clip:w_max=1.0"
    assert DEFENSES.canonical(d.spec) == d.spec  # idempotent
    assert create_defense(d.spec).params == d.params
    # keyword overrides (already typed)
    assert create_defense("clip", w_max=0.05).w_max == 0.05
    assert "randbet:p=0.02" in DEFENSES and "nodefense" not in DEFENSES


def test_unknown_name_suggests_close_matches():
    with pytest.raises(SpecError, match="unknown defense 'randbat'") as e:
        create_defense("randbat:p=0.01")
    msg = str(e.value)
    assert "Did you mean: randbet" in msg
    for n in ("normal", "rquant", "clip", "randbet"):
        assert n in msg  # the registered names are listed
    with pytest.raises(SpecError, match="Did you mean: rquant"):
        create_defense("rqant")
    with pytest.raises(ValueError):  # SpecError is a ValueError
        create_defense("")


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(SpecError) as e:
        create_defense("randbet:q=0.1")
    msg = str(e.value)
    assert "has no parameter 'q'" in msg
    assert msg.endswith("Valid parameters: p=0.01, w_max=0.1, bits=8, threshold=auto, grad_clip=0.05, curriculum=loss, "
                        "granularity=tensor")
    with pytest.raises(SpecError, match="Did you mean w_max"):
        create_defense("clip:wmax=0.1")
    with pytest.raises(SpecError, match="has no parameter 'zz'"):
        create_defense("clip", zz=1)
    with pytest.raises(SpecError, match="is not key=value"):
        create_defense("randbet:p")


@pytest.mark.parametrize("spec,match", [
    ("randbet:p=2", r"p must be a rate \(fraction\) in \[0, 1\], got 2"),
    ("randbet:p=-0.1", r"p must be a rate"),
    ("randbet:bits=17", r"bits must be in 2..16"),
    ("rquant:bits=1", r"bits must be in 2..16"),
    ("normal:bits=32", r"32-bit codes are signed"),
    ("rquant:granularity=group:0", r"granularity must be 'tensor', 'channel' or 'group:g'"),
    ("clip:granularity=rows", r"granularity must be"),
    ("float32:bits=8", r"bits must be 'all' or fields of the float joined with '\|'"),
    ("bfloat16:bits=sign|sign", r"bits must be 'all' or fields"),
    ("randbet:w_max=-1", r"w_max must be a finite number > 0, got -1"),
    ("clip:w_max=0", r"w_max must be a finite number > 0"),
    ("clip:w_max=inf", r"w_max must be a finite number > 0, got inf"),
    ("randbet:grad_clip=0", r"grad_clip must be a number > 0"),
    ("randbet:threshold=-1", r"threshold must be > 0"),
    ("randbet:threshold=abc", r"threshold must be a number, 'auto' or none"),
    ("randbet:bits=abc", r"parameter 'bits': expected an integer"),
    ("randbet:bits=4.5", r"parameter 'bits': expected an integer"),
    ("randbet:p=lots", r"parameter 'p': expected a number"),
])
def test_bad_values_refused_clearly(spec, match):
    with pytest.raises(SpecError, match=match) as e:
        create_defense(spec)
    assert spec.split(":")[0] in str(e.value)  # the message names the defense


def test_resolve_threshold():
    assert resolve_threshold("auto", 10) == 1.75 and resolve_threshold("AUTO", 100) == 3.5
    assert resolve_threshold("auto", None) == 1.75
    assert resolve_threshold(None, 10) is None and resolve_threshold("2", 10) == 2.0
    with pytest.raises(ValueError):
        resolve_threshold(0, 10)


# ------------------------------------------------------------------------------------------ RandBET curriculum

@pytest.mark.parametrize("active,clean,pert,expect", [
    (False, 3.0, None, False),       # clean loss too high
    (False, 2.0, None, True),        # off: the perturbed loss counts as 0; 2.0 < 1.15 T = 2.0125, mean 1.0 <= T
    (False, 2.0125, None, False),    # clean not below 1.15 T
    (False, 2.01, None, True),
    (True, 1.7, 1.8, True),          # mean 1.75 <= T
    (True, 1.7, 1.81, False),        # mean 1.755 > T
    (True, 1.0, 2.5, True),          # mean 1.75, clean well below
    (True, 2.0125, 1.0, False),      # clean not below 1.15 T = 2.0125 (mean 1.506 would pass)
    (True, 2.01, 1.0, True),         # clean just below 1.15 T, mean 1.505
    (True, 1.5, None, True),         # no perturbed loss measured: it counts as 0
    (False, 1.5, 9.0, True),         # while off, a perturbed loss is ignored
])
def test_curriculum_next(active, clean, pert, expect):
    assert curriculum_next(active, clean, pert, 1.75) is expect


def test_curriculum_next_other_threshold():
    assert curriculum_next(True, 3.9, 3.0, 3.5) is True      # CIFAR-100 threshold: 3.9 < 4.025, mean 3.45
    assert curriculum_next(True, 4.1, 2.0, 3.5) is False


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.3, -0.2, 0.1], [-0.1, 0.25, -0.3]]))

    def forward(self, x):
        return self.fc(x)


def _tiny_trainer(step, scheme=None):
    cfg = TrainConfig(epochs=1, batch_size=1, lr=1.0, momentum=0.0, weight_decay=0.0, progress=False)
    return Trainer(_Tiny(), cfg, scheme=scheme or rquant(8), step=step)


def test_randbet_step_curriculum_with_mocked_losses(monkeypatch):
    """Drive the step with a scripted loss sequence: the bit-error pass runs exactly on the steps the
    curriculum switched on, and switches as specified (T = 1.75)."""
    losses = []

    def fake_cross_entropy(logits, y):
        return logits.sum() * 0.0 + losses.pop(0)

    monkeypatch.setattr(randbet_mod, "_loss", fake_cross_entropy)   # the step's task loss (cross-entropy)
    step = RandBETStep(0.01, threshold=1.75, seed=0)
    calls = []
    orig = step.pattern
    step.pattern = lambda qm, seed: calls.append(seed) or orig(qm, seed)
    tr = _tiny_trainer(step)
    x, y = torch.ones(1, 3), torch.tensor([0])
    # (clean, perturbed) per step; perturbed only consumed when the pass runs
    # (losses exactly representable in float32, so the comparisons with T are exact; 1.15 T = 2.0125)
    script = [(3.0, None), (2.0, None), (1.625, 2.0), (1.5, None), (1.0, 2.5), (2.125, 1.0), (2.0, None)]
    expect_on = [False, False, True, False, True, True, False]
    expect_after = [False, True, False, True, True, False, True]
    for (clean, pert), on, after in zip(script, expect_on, expect_after):
        losses[:] = [clean] + ([pert] if pert is not None else [])
        assert step.active is on
        n_calls = len(calls)
        stats = step(tr, x, y)
        assert losses == []  # the perturbed forward ran iff the pass was on
        assert stats["bet_on"] == float(on) and stats["loss"] == clean
        assert len(calls) == n_calls + on
        if on:
            assert stats["loss_perturbed"] == pert
        else:
            assert "loss_perturbed" not in stats
        assert step.active is after
    # state round trip (for checkpoints)
    st = step.state_dict()
    s2 = RandBETStep(0.01, threshold=1.75, seed=123)
    s2.load_state_dict(st)
    assert s2.active == step.active and s2.draw_seed() == step.draw_seed()


def test_curriculum_first_switches_on_below_2_0125():
    """From the start (off), the pass switches on for the first clean loss below 1.15 * 1.75 = 2.0125."""
    state = False
    for loss in [2.3, 2.2, 2.1, 2.0125, 2.0124, 1.9]:
        state = curriculum_next(state, loss, None, 1.75)
        assert state is (loss < 2.0125), loss
        if state:
            break
    assert state


def _ramp_reference(p, epoch, epochs, steps=20):
    """The step curriculum's rate written as the original's loop: every step i whose start epoch
    i * ((E // 2) // steps) has been reached sets the rate to (i + 1) * (p / steps)."""
    rate = p
    for i in range(steps):
        if epoch >= i * ((epochs // 2) // steps):
            rate = (i + 1) * (p / steps)
    return rate


def test_step_curriculum_rate_ramps_in_20_steps_over_the_first_half():
    from bitbench.defenses.randbet import step_rate

    for epochs in (1, 2, 20, 39, 40, 41, 79, 80, 100, 250, 333):
        for p in (0.01, 0.1, 0.025):
            assert [step_rate(p, e, epochs) for e in range(epochs)] == \
                [_ramp_reference(p, e, epochs) for e in range(epochs)], (epochs, p)
    # 250 epochs: 6 epochs per step, p/20 in epochs 0..5, 2p/20 from 6, the full rate from epoch 114 on
    r = [step_rate(0.01, e, 250) for e in range(250)]
    assert r[0] == r[5] == 0.01 / 20 and r[6] == 2 * (0.01 / 20) and r[113] == 19 * (0.01 / 20)
    assert r[114] == r[249] == 20 * (0.01 / 20)
    assert len(set(r)) == 20
    # fewer than 40 epochs: no ramp (the last step's rate at once)
    assert {step_rate(0.1, e, 39) for e in range(39)} == {20 * (0.1 / 20)}


def test_step_curriculum_keeps_the_loss_gating_and_sets_the_rate_after_each_step(monkeypatch):
    """Scripted losses, epochs set by hand (80 epochs: 2 per rate step): the pass is gated exactly as under the
    loss curriculum, and a pattern's rate is the one set after the previous step (the first step of an epoch still
    uses the previous epoch's rate)."""
    losses = []

    def fake_cross_entropy(logits, y):
        return logits.sum() * 0.0 + losses.pop(0)

    monkeypatch.setattr(randbet_mod, "_loss", fake_cross_entropy)   # the step's task loss (cross-entropy)
    step = RandBETStep(0.02, threshold=1.75, seed=0, curriculum="step")
    assert step.curriculum == "step" and step.threshold == 1.75 and not step.active
    rates = []
    orig = step.pattern
    step.pattern = lambda qm, seed: rates.append(step._rate) or orig(qm, seed)
    tr = _tiny_trainer(step)
    tr.config = TrainConfig(epochs=80, batch_size=1, lr=1.0, momentum=0.0, weight_decay=0.0, progress=False)
    x, y = torch.ones(1, 3), torch.tensor([0])
    # (epoch, clean, perturbed): the same gating script as the loss curriculum's test
    script = [(0, 3.0, None), (0, 2.0, None), (1, 1.625, 2.0), (2, 1.5, None), (2, 1.0, 2.5), (4, 2.125, 1.0),
              (4, 2.0, None), (5, 1.0, 1.0)]
    expect_on = [False, False, True, False, True, True, False, True]
    for (epoch, clean, pert), on in zip(script, expect_on):
        tr.epoch = epoch
        losses[:] = [clean] + ([pert] if pert is not None else [])
        assert step.active is on, (epoch, clean)
        stats = step(tr, x, y)
        assert losses == [] and stats["bet_on"] == float(on)
    u = 0.02 / 20
    # on at: epoch 1 (previous step in epoch 0: rate u), epoch 2 (previous step in epoch 2: 2u),
    # epoch 4 (previous step in epoch 2: 2u, not epoch 4's 3u), epoch 5 (previous step in epoch 4: 3u)
    assert rates == [u, 2 * u, 2 * u, 3 * u]
    st = step.state_dict()
    s2 = RandBETStep(0.02, threshold=1.75, seed=1, curriculum="step")
    s2.load_state_dict(st)
    assert s2.rate(tr) == step.rate(tr) == 3 * u and s2.active == step.active


def test_step_curriculum_defense_trains_gated(ds):
    d = create_defense("randbet:p=0.1,curriculum=step")
    step = d.make_step(seed=0)
    assert not step.active and step.curriculum == "step" and step.threshold == 1.75
    assert "curriculum 'step'" in d.recipe()["deviations"][0] and d.recipe()["threshold"] == "auto"
    ungated = create_defense("randbet:p=0.1,curriculum=step,threshold=none").make_step(seed=0)
    assert ungated.active and ungated.threshold is None and ungated.curriculum == "step"
    model = lenet(ds)
    cfg = TrainConfig(epochs=2, batch_size=256, lr=0.05, schedule="constant", progress=False, seed=0)
    hist = d.train(model, ds.train_x[:512], ds.train_y[:512], cfg, num_classes=10)
    assert hist[0]["bet_on"] < 1.0  # gated: off at the start
    with pytest.raises(SpecError, match="curriculum"):
        create_defense("randbet:curriculum=cosine")


def test_perturbed_pass_keeps_the_clean_batch_norm_statistics(ds):
    """The running statistics after a RandBET step are those of the clean pass alone: the perturbed pass's
    updates are discarded (and the perturbed pass does run, with other weights)."""
    import copy

    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28, norm="bn", mean=ds.mean,
                        std=ds.std, seed=0)
    ref = copy.deepcopy(model)
    x, y = ds.train_x[:64], ds.train_y[:64]
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, progress=False)
    tr = Trainer(model, cfg, scheme=rquant(8, 0.1), step=RandBETStep(0.2, threshold=None, seed=0), w_max=0.1)
    tr.model.train()
    tr.optimizer.zero_grad()
    stats = tr.step(tr, x, y)
    assert stats["loss_perturbed"] != stats["loss"]
    # the reference: the clean straight-through forward only
    rt = Trainer(ref, cfg, scheme=rquant(8, 0.1), w_max=0.1)
    rt.model.train()
    with rt.quantizer.straight_through():
        rt.model(x)
    bufs = dict(model.named_buffers())
    moved = 0
    for name, b in ref.named_buffers():
        assert torch.equal(bufs[name], b), name
        moved += "running" in name
    assert moved >= 4


def test_randbet_without_threshold_is_always_on_and_needs_a_scheme():
    assert RandBETStep(0.01, threshold=None).active is True
    assert RandBETStep(0.01).active is False
    with pytest.raises(ValueError, match="needs a quantization scheme"):
        RandBETStep(0.01)(Trainer(_Tiny(), TrainConfig(progress=False)), torch.ones(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="p must be a rate"):
        RandBETStep(1.5)
    with pytest.raises(ValueError, match="grad_clip"):
        RandBETStep(0.1, grad_clip=0)


# ----------------------------------------------------------------------------- RandBET really injects bit errors

def _within_binomial(count, n, p, k=5.0):
    """|count - n p| <= k sd. Flips are i.i.d. Bernoulli(p) per attackable bit (kernels' definition), so the
    count over n bits is Binomial(n, p); with fixed seeds the test is deterministic, and a 5 sd band is passed
    by a correct implementation with probability > 1 - 6e-7 over seeds, while a wrong rate (e.g. p per word
    instead of per bit, or counting protected bits) is off by far more than 5 sd at these n."""
    return abs(count - n * p) <= k * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("bits,p", [(8, 0.02), (4, 0.05)])
def test_randbet_perturbed_pass_sees_bit_errors_at_rate_p(ds, bits, p):
    model = lenet(ds)
    step = RandBETStep(p, threshold=None, seed=17)
    captured = []
    orig = step.pattern

    def spy(qm, seed):
        out = orig(qm, seed)
        captured.append((qm, out.clone(), seed))
        return out

    step.pattern = spy
    seen = []  # the weight the network actually uses in each forward
    model.classifier[1].register_forward_pre_hook(lambda mod, inp: seen.append(mod.weight.detach().clone()))
    tr = Trainer(model, TrainConfig(epochs=1, batch_size=64, lr=0.05, progress=False), scheme=rquant(bits, 0.1),
                 w_max=0.1, step=step)
    tr.fit(ds.train_x[:192], ds.train_y[:192])
    assert len(captured) == 3 and len(seen) == 6
    assert len({s for _, _, s in captured}) == 3  # a fresh pattern per step
    total = n_total = 0
    name = "classifier.1.weight"
    for k, (qm, pert, _) in enumerate(captured):
        n = qm.n_words * bits
        h = kernels.hamming_total(qm.codes, pert, bits=8)  # all 8 storage bits: protected ones must not differ
        assert h == kernels.hamming_total(qm.codes, pert, bits=bits)
        assert _within_binomial(h, n, p), (h, n * p)
        total, n_total = total + h, n_total + n
        # clean forward used the clean dequantized weights, the second forward the perturbed ones
        assert torch.equal(seen[2 * k], qm.dequantize_tensors()[name])
        assert torch.equal(seen[2 * k + 1], qm.dequantize_tensors(pert)[name])
        assert not torch.equal(seen[2 * k], seen[2 * k + 1])
    assert _within_binomial(total, n_total, p)


def test_randbet_seeds_are_deterministic_and_private():
    a, b, c = RandBETStep(0.01, seed=5), RandBETStep(0.01, seed=5), RandBETStep(0.01, seed=6)
    sa = [a.draw_seed() for _ in range(5)]
    assert sa == [b.draw_seed() for _ in range(5)]
    assert sa != [c.draw_seed() for _ in range(5)]
    assert all(0 <= s < 2 ** 62 for s in sa)
    state = torch.get_rng_state()
    RandBETStep(0.01, seed=7).draw_seed()
    assert torch.equal(torch.get_rng_state(), state)


def test_randbet_training_is_deterministic(ds):
    def run(seed):
        m = lenet(ds)
        seeds = []
        d = create_defense("randbet:threshold=none,p=0.05")
        t = d.trainer(m, TrainConfig(epochs=1, batch_size=64, lr=0.05, progress=False, seed=seed))
        orig = t.step.pattern
        t.step.pattern = lambda qm, s: seeds.append(s) or orig(qm, s)
        t.fit(ds.train_x[:256], ds.train_y[:256])
        return m, seeds

    m1, s1 = run(0)
    m2, s2 = run(0)
    m3, s3 = run(1)
    assert s1 == s2 and len(s1) == 4 and s1 != s3
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(m1.parameters(), m3.parameters()))


# ------------------------------------------------------------------- RandBET gradient: clipped and averaged

def _ce_grad(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d/dW of mean_i CE(W x_i, y_i) = mean_i (softmax(W x_i) - e_{y_i}) x_i^T, written out in float64."""
    W, x = W.to(torch.float64), x.to(torch.float64)
    g = torch.zeros_like(W)
    for xi, yi in zip(x, y):
        logits = [sum(W[r, j] * xi[j] for j in range(W.shape[1])) for r in range(W.shape[0])]
        mx = max(logits)
        ex = [math.exp(float(v - mx)) for v in logits]
        z = sum(ex)
        for r in range(W.shape[0]):
            coef = ex[r] / z - (1.0 if r == int(yi) else 0.0)
            for j in range(W.shape[1]):
                g[r, j] += coef * xi[j]
    return g / x.shape[0]


def test_randbet_gradient_clipped_and_averaged():
    """g = (g_clean + clamp(g_perturbed, -c, c)) / 2 on a 2x3 linear model, against the closed-form
    cross-entropy gradient at the clean and at the bit-flipped dequantized weights."""
    flips = {0: 0x80, 4: 0x20}  # MSB of W[0,0]; bit 5 of W[1,1]

    def pattern_fn(qm, seed):
        c = qm.codes.clone()
        for i, mask in flips.items():
            c[i] ^= mask
        return c

    clip = 0.05
    step = RandBETStep(0.01, threshold=None, grad_clip=clip, pattern_fn=pattern_fn)
    tr = _tiny_trainer(step)
    model = tr.model
    x = torch.tensor([[3.0, -0.02, 0.5], [-1.0, 0.01, 2.0]])
    y = torch.tensor([1, 0])
    floats = model.fc.weight.detach().clone()
    qm = QuantizedModel.from_module(model, rquant(8))
    Wc = qm.dequantize_tensors()["fc.weight"]
    pert = pattern_fn(qm, 0)
    Wp = qm.dequantize_tensors(pert)["fc.weight"]
    assert (Wp != Wc).sum() == 2

    gc = _ce_grad(Wc, x, y)
    gp = _ce_grad(Wp, x, y)
    assert (gp.abs() > clip).any() and (gp.abs() < clip).any()  # both regimes are exercised
    expect = (gc + gp.clamp(-clip, clip)) / 2

    tr.optimizer.zero_grad(set_to_none=True)
    stats = step(tr, x, y)
    assert stats["bet_on"] == 1.0
    assert torch.allclose(model.fc.weight.grad.to(torch.float64), expect, atol=1e-6, rtol=0)
    assert not torch.allclose(expect, (gc + gp) / 2, atol=1e-4)  # the clipping mattered
    assert torch.equal(model.fc.weight.detach(), floats)  # float weights restored after the step
    # the optimizer then applies exactly that gradient (SGD, lr 1, no momentum / weight decay)
    tr.optimizer.step()
    assert torch.allclose(model.fc.weight.detach().to(torch.float64), floats.to(torch.float64) - expect,
                          atol=1e-6)
