"""BFA as the reference runs it, T-BFA, threat-model constraints, and the curves the evaluator records.

The exactness test compares against a straightforward BFA written here from the paper's description: numpy XOR on
the codes, weight changes from whole-memory dequantizations, every trial a full forward of the whole model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitbench import kernels
from bitbench.attacks import create_attack
from bitbench.attacks.error_map import save_error_map
from bitbench.configs.record import ResultRecord, RecordError
from bitbench.data import load_dataset
from bitbench.defenses import QuantizedModel, QuantScheme, TrainConfig, create_defense, evaluate_error
from bitbench.evaluate import evaluate_attack, predict
from bitbench.models import build_model


@pytest.fixture(scope="module")
def env(one_thread):
    ds = load_dataset("mnist5k")
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28, mean=ds.mean, std=ds.std, width=3,
                        seed=0)
    d = create_defense("rquant")
    d.train(model, ds.train_x[:2000], ds.train_y[:2000],
            TrainConfig(epochs=3, schedule="constant", progress=False))
    qm = d.quantize(model)
    qm.load_into(model)
    model.eval()
    clean_err = evaluate_error(model, ds.test_x, ds.test_y)
    assert clean_err < 0.5
    return SimpleNamespace(ds=ds, model=model, qm=qm, data=(ds.attack_x, ds.attack_y), clean_err=clean_err)


# -- the independent reference --------------------------------------------------------------------------------------
def batch_of(data, batch, seed):
    """The documented attacker batch: a seeded permutation's first `batch` indices, in ascending order."""
    x, y = data
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:batch].sort().values
    return x[idx], y[idx]


def reference_bfa(qm, model, x, y, names, n, k=None, labels="pred"):
    """BFA step by step: first-order gains g * (w(q ^ 2^b) - w(q)) for every bit of every weight of each layer,
    the best (then the j best) positive ones of each layer tried with a full forward, the best layer committed."""
    clean = qm.codes.numpy().copy()
    codes = clean.copy()
    m = qm.bits
    params = dict(model.named_parameters())
    layers = [qm.names.index(nm) for nm in names]

    def forward(c, grad=False):
        qm.load_into(model, torch.from_numpy(c))
        with torch.set_grad_enabled(grad):
            return model(x)

    with torch.no_grad():
        labels_y = forward(codes).argmax(1) if labels == "pred" else y
    out = forward(codes)
    acc, pred = (out.argmax(1) == labels_y).float().mean().item(), out.argmax(1)
    flips = []

    def done(acc, pred):
        return acc <= 0.1 or bool((pred == pred[0]).all())

    while len(flips) < n and not done(acc, pred):
        logits = forward(codes, grad=True)
        loss = F.cross_entropy(logits, labels_y)
        grads = torch.autograd.grad(loss, [params[qm.names[t]] for t in layers])
        loss = loss.item()
        base = qm.dequantize(torch.from_numpy(codes)).double()
        delta = np.stack([(qm.dequantize(torch.from_numpy(codes ^ np.uint8(1 << b))).double() - base).numpy()
                          for b in range(m)], 1)
        flipped = np.stack([((codes ^ clean) >> b) & 1 for b in range(m)], 1).astype(bool)
        ranked = []
        for t, g in zip(layers, grads):
            o, nt = qm.offsets[t], qm.lengths[t]
            gw = g.reshape(-1).double().numpy()
            gain = gw[:, None] * delta[o:o + nt]
            gain[flipped[o:o + nt]] = 0
            if k is not None and nt > k:
                keep = np.zeros(nt, dtype=bool)
                keep[np.argsort(-np.abs(gw), kind="stable")[:k]] = True
                gain[~keep] = 0
            flat = gain.reshape(-1)
            order = np.argsort(-flat, kind="stable")
            ranked.append([(o + int(i) // m, int(i) % m) for i in order if flat[i] > 0])
        best, j = None, 1
        while len(flips) + j <= n:
            tried = False
            for cands in ranked:
                if len(cands) < j:
                    continue
                tried = True
                trial = codes.copy()
                for w, b in cands[:j]:
                    trial[w] ^= np.uint8(1 << b)
                with torch.no_grad():
                    tl = F.cross_entropy(forward(trial), labels_y).item()
                if best is None or tl > best[0]:
                    best = (tl, cands[:j])
            if not tried or best[0] > loss:
                break
            j += 1
        if best is None or not best[0] > loss:
            break
        for w, b in best[1]:
            codes[w] ^= np.uint8(1 << b)
            t = max(i for i in range(len(qm.names)) if qm.offsets[i] <= w)
            flips.append((t, w - qm.offsets[t], b))
        with torch.no_grad():
            out = forward(codes)
        acc, pred = (out.argmax(1) == labels_y).float().mean().item(), out.argmax(1)
    qm.load_into(model)
    return flips, codes


WEIGHTS = ["features.0.weight", "features.4.weight", "classifier.1.weight", "classifier.3.weight",
           "classifier.5.weight"]


@pytest.mark.parametrize("spec, k, labels, names", [
    ("bfa_n10:trials=1", None, "pred", WEIGHTS),
    ("bfa_n6:trials=1,k=7,labels=true,seed=3", 7, "true", WEIGHTS),
    ("bfa_n6:trials=1,biases=true,layers=classifier.*", None, "pred",
     ["classifier.1.weight", "classifier.1.bias", "classifier.3.weight", "classifier.3.bias", "classifier.5.weight",
      "classifier.5.bias"]),
])
def test_bfa_gives_exactly_the_flips_of_a_straightforward_implementation(env, spec, k, labels, names):
    a = create_attack(spec)
    assert a.num_perturbations() == 1
    x, y = batch_of(env.data, a.batch, a.seed)
    want, want_codes = reference_bfa(env.qm, env.model, x, y, names, a.n, k=k, labels=labels)
    assert len(want) >= 3
    # count the executions of the first conv: the partial forward re-runs only the layers from the tried one on
    conv1 = env.model.features[0]
    calls = []
    conv1.forward = lambda inp, _f=type(conv1).forward.__get__(conv1): (calls.append(1), _f(inp))[1]
    try:
        p = next(a.perturbations(env.qm, model=env.model, data=env.data))
    finally:
        del conv1.forward
    got = [(e["tensor"], e["index"], e["bit"]) for e in p.trace]
    assert got == want
    assert np.array_equal(p.codes.numpy(), want_codes)
    assert p.info["flips"] == len(got) == kernels.hamming_total(env.qm.codes, p.codes)
    steps = p.info["steps"]
    if "features.0.weight" in names:
        # a full forward for every trial would run conv1 (1 + tensors) times per step
        assert len(calls) < 1 + steps * len(names)


def test_bfa_defaults_follow_the_reference(env):
    a = create_attack("bfa")
    # the evaluator's target ends a trial (uncensored metrics); the attacker's own stops are options
    assert (a.n, a.k, a.biases, a.labels, a.trials, a.batch, a.stop) == (100, None, False, "pred", 5, 128, "target")
    assert a.sweep == [1, 2, 5, 10, 20, 50, 100] and a.spec == "bfa_n100"
    assert create_attack("bfa_n20").sweep == [1, 2, 5, 10, 20]
    assert create_attack("bfa_n7:sweep=3|1").sweep == [1, 3, 7]
    p = next(create_attack("bfa_n3:trials=1").perturbations(env.qm, model=env.model, data=env.data))
    assert {e["name"] for e in p.trace} <= set(WEIGHTS)        # weights only
    for bad in ("bfa:sweep=a|b", "bfa:labels=truth", "bfa:stop=never", "bfa:direction=up", "bfa:page=-1",
                "bfa:trials=0", "bfa:target_err=1.5", "tbfa:source=0,target=0"):
        with pytest.raises(ValueError):
            create_attack(bad)


def test_collapse_onto_one_class_stops_the_search(env):
    """Labels = the model's predictions: a model that sends every input to one class has batch accuracy = that
    class's share, above 1/K; the search must stop there instead of spending its budget."""
    stops = []
    for p in create_attack("bfa_n60:trials=3,stop=chance").perturbations(env.qm, model=env.model, data=env.data):
        stops.append(p.info["stop"])
        if p.info["stop"] == "collapse":
            x, _ = batch_of(env.data, 128, p.seed)
            env.qm.load_into(env.model, p.codes)
            with torch.no_grad():
                pred = env.model(x).argmax(1)
            env.qm.load_into(env.model)
            assert bool((pred == pred[0]).all())
            assert p.info["acc"] > 0.1 and p.info["flips"] < 60
    assert "collapse" in stops, stops


# -- curves -----------------------------------------------------------------------------------------------------
def _replay_errors(env, trace):
    """Evaluation error after each committed step, by applying the trace's flips one step at a time."""
    qm = env.qm
    codes = qm.codes.numpy().copy()
    out = [(0, evaluate_error_of(env, codes))]
    steps = {}
    for e in trace:
        steps.setdefault(e["step"], []).append(e)
    for s in sorted(steps):
        for e in steps[s]:
            codes[qm.offsets[e["tensor"]] + e["index"]] ^= np.uint8(1 << e["bit"])
        out.append((out[-1][0] + len(steps[s]), evaluate_error_of(env, codes)))
    return out


def evaluate_error_of(env, codes):
    env.qm.load_into(env.model, torch.from_numpy(codes))
    try:
        return (predict(env.model, env.ds.test_x) != env.ds.test_y).sum().item() / env.ds.test_y.numel()
    finally:
        env.qm.load_into(env.model)


def test_evaluation_records_curves_and_flips_to_target(env):
    a = create_attack("bfa_n30:trials=2,sweep=1|5|10,target_err=0.5")
    ev = evaluate_attack(env.model, env.qm, a, env.ds.test_x, env.ds.test_y, attack_data=env.data)
    assert ev.target == {"metric": "err", "value": 0.5}
    assert len(ev.patterns) == 2 and len(ev.traces) == 2
    for pat, trace in zip(ev.patterns, ev.traces):
        states = _replay_errors(env, trace)
        assert pat.flips_used == states[-1][0] == len(trace)
        assert pat.stop_reason in ("target", "budget", "no_gain")
        assert (pat.stop_reason == "target") == (pat.flips_to_target == pat.flips_used)
        assert [q["flips"] for q in pat.curve] == [1, 5, 10, 30]
        for q in pat.curve:
            f, e = [s for s in states if s[0] <= q["flips"]][-1]
            assert q["flips_used"] == f and q["err"] == pytest.approx(e, abs=1e-12)
            assert q["rerr"] >= max(q["err"], ev.clean_err) - 1e-12
        first = next((f for f, e in states if e >= 0.5), None)
        assert pat.flips_to_target == first is not None
        assert pat.err == pytest.approx(states[-1][1], abs=1e-12)
    # the observer never changes the search, it only ends it at the target: without it (no evaluator: the search
    # runs to its budget) each trial makes the same flips first
    plain = list(a.perturbations(env.qm, model=env.model, data=env.data))
    for p, t in zip(plain, ev.traces):
        assert p.trace[:len(t)] == t and len(p.trace) >= len(t)


def _record(ev, attack, clean_err):
    return ResultRecord(suite="toy", dataset="mnist5k", eval_split="test[0:1000]", n_eval=1000, model="lenet",
                        model_options={}, n_params=100, defense="rquant", defense_name="rquant", defense_params={},
                        bits=8,
                        attack=attack.spec, attack_name=attack.registry_name, attack_params=dict(attack.params),
                        attack_kind="adversarial", flips=attack.flips, clean_err=clean_err, version="0",
                        config_hash="h", date="2024-01-01T00:00:00+00:00", patterns=list(ev.patterns),
                        target=ev.target)


def test_records_hold_curves_and_refuse_inconsistent_ones(env):
    a = create_attack("bfa_n12:trials=2,sweep=2|4,target_err=0.3")
    ev = evaluate_attack(env.model, env.qm, a, env.ds.test_x, env.ds.test_y, attack_data=env.data)
    d = _record(ev, a, ev.clean_err).to_json()
    assert set(d["trials"]) == {"flips_used", "stop_reason", "flips_to_target", "curve"} and "target" in d
    back = ResultRecord.from_json(d)
    assert back.has_curve and back.to_json() == d
    assert [p.flips_to_target for p in back.patterns] == d["trials"]["flips_to_target"]

    def refused(mutate, field):
        bad = __import__("copy").deepcopy(d)
        mutate(bad)
        with pytest.raises(RecordError, match=field):
            ResultRecord.from_json(bad)

    t = "trials"
    refused(lambda b: b[t].pop("curve"), "trials")
    refused(lambda b: b[t]["stop_reason"].__setitem__(0, "Tired!"), r"trials\.stop_reason\[0\]")
    refused(lambda b: b[t]["curve"][0][-1].__setitem__("err", 0.999), r"trials\.curve\[0\]\[2\]")
    refused(lambda b: b[t]["curve"][1].pop(0), r"trials\.curve\[1\]")
    refused(lambda b: b[t]["flips_used"].__setitem__(0, -1), r"trials\.flips_used\[0\]")
    refused(lambda b: b["target"].__setitem__("metric", "loss"), "target")
    refused(lambda b: b[t]["curve"][0][0].__setitem__("flips_used", 99), r"trials\.curve\[0\]\[0\]\.flips_used")
    reached = next(i for i, f in enumerate(d[t]["flips_to_target"]) if f is not None)
    refused(lambda b: b[t]["flips_to_target"].__setitem__(reached, None), "flips_to_target")


# -- T-BFA ----------------------------------------------------------------------------------------------------------
def _asr(env, codes, source, target):
    env.qm.load_into(env.model, codes)
    try:
        pred = predict(env.model, env.ds.test_x)
    finally:
        env.qm.load_into(env.model)
    y = env.ds.test_y
    src = (y == source) if source is not None else (y != target)
    other = y != source if source is not None else None
    return (pred[src] == target).sum().item() / src.sum().item(), \
        None if other is None else (pred[other] != y[other]).sum().item() / other.sum().item()


@pytest.mark.parametrize("source", [5, None])
def test_tbfa_raises_the_target_class_rate(env, source):
    spec = "tbfa_n25:trials=1,target=3,stop=budget" + (f",source={source}" if source is not None else "")
    a = create_attack(spec)
    ev = evaluate_attack(env.model, env.qm, a, env.ds.test_x, env.ds.test_y, attack_data=env.data)
    p = next(a.perturbations(env.qm, model=env.model, data=env.data))
    before, _ = _asr(env, env.qm.codes, source, 3)
    after, other = _asr(env, p.codes, source, 3)
    assert after > before + 0.4, (before, after)
    last = ev.patterns[0].curve[-1]
    assert last["asr"] == pytest.approx(after, abs=1e-12) and ev.target["metric"] == "asr"
    if source is not None:   # 1-to-1 is stealthy: the other classes stay far from chance
        assert last["other_err"] == pytest.approx(other, abs=1e-12) and other < 0.6
    else:
        assert "other_err" not in last
    # the reference's denominator: every evaluation input predicted as the target
    env.qm.load_into(env.model, p.codes)
    try:
        assert last["asr_all"] == pytest.approx((predict(env.model, env.ds.test_x) == 3).sum().item() / env.ds.test_y.numel(), abs=1e-12)
    finally:
        env.qm.load_into(env.model)


# -- threat-model constraints ---------------------------------------------------------------------------------------
def _diff_cells(clean, codes, m):
    """(word, bit, clean bit value) of every bit that differs."""
    c, a = clean.numpy().astype(np.int64) & 0xFFFF, codes.numpy().astype(np.int64) & 0xFFFF
    out = []
    for w in np.nonzero(c != a)[0]:
        for b in range(m):
            if ((c[w] ^ a[w]) >> b) & 1:
                out.append((int(w), b, int((c[w] >> b) & 1)))
    return out


@pytest.mark.parametrize("spec", ["bfa_n12:trials=1,stop=budget", "budget_e15:trials=1,iterations=6"])
@pytest.mark.parametrize("scheme", ["rquant", "s16"])
def test_constrained_attacks_respect_direction_pages_and_error_maps(env, spec, scheme, tmp_path):
    qm = env.qm if scheme == "rquant" else QuantizedModel.from_module(env.model, QuantScheme(bits=16, signed=True))
    word_bytes = qm.codes.element_size()
    page = 512
    # a map: 0->1 only in bits 0..5 of even words, 1->0 anywhere in odd words
    n = qm.n_words
    p01 = np.zeros((n, 1, qm.bits))
    p10 = np.zeros((n, 1, qm.bits))
    p01[0::2, 0, :6] = 0.5
    p10[1::2, 0, :] = 0.5
    path = tmp_path / "rowhammer.npz"
    save_error_map(path, p01=p01, p10=p10)
    cases = {"direction=0to1": lambda w, b, v: v == 0, "direction=1to0": lambda w, b, v: v == 1,
             f"page={page}": lambda w, b, v: True,
             f"errmap={path}": lambda w, b, v: (w % 2 == 0 and b < 6 and v == 0) or (w % 2 == 1 and v == 1)}
    for opt, ok in cases.items():
        a = create_attack(f"{spec},{opt}")
        p = next(a.perturbations(qm, model=env.model, data=env.data))
        cells = _diff_cells(qm.codes, p.codes, qm.bits)
        assert cells, opt
        assert len(cells) == p.info["flips"] == len(p.trace) == kernels.hamming_total(qm.codes, p.codes)
        assert all(ok(*c) for c in cells), opt
        if opt.startswith("page"):
            pages = [w * word_bytes // page for w, _, _ in cells]
            assert len(pages) == len(set(pages)), "two flips on one page"
        if spec.startswith("budget"):
            assert len({w for w, _, _ in cells}) == len(cells) <= a.eps   # one bit per word
    a = create_attack(f"{spec},errmap={path}")
    assert a.input_digests()["errmap"].startswith("sha256:") and create_attack(spec).input_digests() == {}
    small = tmp_path / "small.npz"
    save_error_map(small, p01=p01[:100], p10=p10[:100])
    with pytest.raises(ValueError, match="tile=true"):
        create_attack(f"{spec},errmap={small}").check(qm)
    create_attack(f"{spec},errmap={small},tile=true").check(qm)
    # 4 KiB pages of a small model: at most one flip per page, so at most ceil(bytes / 4096) flips
    a = create_attack(f"{spec},page=4096")
    p = next(a.perturbations(qm, model=env.model, data=env.data))
    assert p.info["flips"] <= -(-qm.n_words * word_bytes // 4096)


def test_dweight_dcode_is_the_step_of_one_code_level(env):
    """The linearization the budgeted attack's code-space gradient uses: decode(q + 1) - decode(q) wherever the
    two codes decode inside the tensor's range (decoding clamps to the range: at its edges the step is cut)."""
    qm = env.qm
    w = torch.arange(qm.n_words)
    ok = qm.codes < qm.scheme.code_max
    step = qm.dweight_dcode()
    for t in range(len(qm.names)):
        o, n = qm.offsets[t], qm.lengths[t]
        idx = torch.arange(n)[ok[o:o + n]]
        q = qm.codes[o:o + n][idx]
        up = qm.decode_words(t, idx, q + 1, dtype=torch.float64)
        down = qm.decode_words(t, idx, q, dtype=torch.float64)
        d = up - down
        hi, lo = float(qm.context.hi[t]), float(qm.context.lo[t])
        inside = ((up - hi).abs() > 1e-6) & ((down - lo).abs() > 1e-6)    # neither code clamped to the range
        assert torch.allclose(step[o:o + n][idx][inside], d[inside], rtol=0, atol=2e-7)   # float32 decoding
        assert bool((d[~inside] <= step[o:o + n][idx][~inside] + 2e-7).all())            # cut at the edge
    assert step.shape == w.shape and step.dtype == torch.float64


class _Skip(torch.nn.Module):
    """A shared in-place ReLU module called twice and a skip connection around layer b."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b, self.c = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 10)
        self.act = torch.nn.ReLU(inplace=True)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        h = self.act(self.a(x))
        return self.c(self.act(self.b(h)) + h)


def test_partial_forward_and_incremental_predictions_equal_full_forwards():
    from bitbench.attacks.partial_forward import PartialForward
    from bitbench.evaluate import IncrementalPredictor

    model = _Skip().eval()
    params = list(model.parameters())
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    pf = PartialForward(model, params)
    inc = IncrementalPredictor(model, params, x, batch_size=128)
    inc(None)
    g = torch.Generator().manual_seed(2)
    for step in range(12):
        with torch.no_grad():
            with pf.recording():
                model(x)
            t = int(torch.randint(len(params), (1,), generator=g))
            params[t].view(-1)[int(torch.randint(params[t].numel(), (1,), generator=g))] += 3.0
            with pf.serving(t):
                partial = model(x)
            full = model(x)
        assert torch.equal(partial, full), step
        assert torch.equal(inc([t]), full.argmax(1)), step
    # a change of the last layer (c.weight) re-runs neither a nor b once it is verified
    c = next(i for i, p in enumerate(params) if p is model.c.weight)
    with torch.no_grad():
        params[c].view(-1)[0] += 1.0
    inc([c])
    calls = []
    model.a.forward = lambda inp, _f=type(model.a).forward.__get__(model.a): (calls.append(1), _f(inp))[1]
    try:
        with torch.no_grad():
            params[c].view(-1)[1] -= 2.0
        pred = inc([c])
        assert calls == []
        with torch.no_grad():
            assert torch.equal(pred, model(x).argmax(1))
    finally:
        del model.a.forward
