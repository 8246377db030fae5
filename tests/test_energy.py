"""configs.energy: the tolerable-rate search on synthetic monotone RErr curves (exact crossings, the stated
number of evaluations), its bootstrap interval against a loop reference, V_min and energy saved on profiles built
from known laws (computed by hand here), the precision trade-off."""
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from bitbench.configs.energy import (ENERGY_MODEL_PROFILE, ENERGY_MODEL_V2, Bounded, TolerableRate, energy_model,
                                     energy_ratio, format_bounded, format_tolerable, precision_tradeoff,
                                     tolerable_rate, tolerable_voltage, vmin_at_rate, voltage_energy)
from bitbench.configs.spec import canonical_rate
from bitbench.configs.voltage import read_curve


# ---------------------------------------------------------------------------------------------- synthetic curves
class Curve:
    """evaluate(p) = base(p) + model offset + chip offset (+ interaction), the offsets exactly zero-mean when
    ``centred`` (the mean curve is then base(p) up to rounding); counts its calls."""

    def __init__(self, base, M=3, C=20, seed=0, scale=0.002, centred=True):
        rng = np.random.default_rng(seed)
        a, b, e = (scale * rng.standard_normal(s) for s in ((M, 1), (1, C), (M, C)))
        if centred:
            a, b = a - a.mean(), b - b.mean()
            e = e - e.mean(axis=1, keepdims=True) - e.mean(axis=0, keepdims=True) + e.mean()
        self.off = a + b + e
        self.base = base
        self.calls = []

    def __call__(self, p):
        self.calls.append(p)
        return (self.base(p) + self.off).tolist()


def log_linear(p):          # 0.02 at 1e-4, +1 point per decade: crosses 0.03 at p = 1e-3 exactly in log p
    return 0.02 + 0.01 * math.log10(p / 1e-4)


def sigmoid(p):             # 0.1 + 0.5 / (1 + (0.01 / p)^2): crosses 0.11 at p = 0.01 / 7
    return 0.1 + 0.5 / (1 + (0.01 / p) ** 2)


def bisections(lo, hi, rtol):
    return math.ceil(math.log2(math.log(hi / lo) / math.log(1 + rtol)))


def test_search_finds_an_exact_log_linear_crossing_with_the_stated_evaluations():
    ev = Curve(log_linear)
    t = tolerable_rate(ev, 0.01, 0.02, 1e-5, 0.1, seed=1, ci_rtol=None)
    assert t.p_star.rel == "=" and t.p_star.value == pytest.approx(1e-3, rel=1e-9)
    assert t.evaluations == 2 + bisections(1e-5, 0.1, 0.05) == 10
    assert ev.calls[:2] == [1e-5, 0.1] and len(ev.calls) == len(set(ev.calls)) == t.evaluations
    assert t.rates == sorted(ev.calls) and all(r == canonical_rate(r) for r in t.rates)
    lo, hi = t.bracket
    assert lo <= 1e-3 <= hi and hi / lo <= 1.05
    assert t.threshold == pytest.approx(0.03) and t.reference == 0.02 and t.reference_per_model is None
    assert t.ci95[0].value <= t.p_star.value <= t.ci95[1].value
    json.dumps(t.to_json())


@pytest.mark.parametrize("rtol", [0.05, 0.01, 0.2])
def test_search_meets_the_requested_tolerance(rtol):
    ev = Curve(sigmoid, seed=2)
    true = 0.01 / 7
    t = tolerable_rate(ev, 0.01, 0.1, 1e-4, 0.2, seed=1, rtol=rtol, ci_rtol=None)
    assert t.evaluations == 2 + bisections(1e-4, 0.2, rtol)
    lo, hi = t.bracket
    assert lo <= true <= hi and hi / lo <= 1 + rtol
    assert abs(math.log(t.p_star.value / true)) <= math.log(1 + rtol)


def test_search_with_a_cached_grid():
    ev = Curve(sigmoid, seed=2)
    grid = [0.001, 0.005, 0.01, 0.02, 0.05]
    t = tolerable_rate(ev, 0.01, 0.1, 1e-4, 0.2, seed=1, grid=grid, ci_rtol=None)
    # p_lo, then 0.001 (passes) and 0.005 (fails: the rest of the grid is not needed), p_hi, then bisection
    assert ev.calls[:4] == [1e-4, 0.001, 0.005, 0.2]
    assert t.evaluations == 4 + bisections(0.001, 0.005, 0.05)
    assert abs(math.log(t.p_star.value * 7 / 0.01)) <= math.log(1.05)
    with pytest.raises(ValueError, match="grid"):
        tolerable_rate(ev, 0.01, 0.1, 1e-4, 0.2, seed=1, grid=[0.5])


def test_bounded_answers_never_extrapolate():
    fails = Curve(lambda p: 0.2)
    t = tolerable_rate(fails, 0.01, 0.02, 1e-4, 0.1, seed=0)
    assert (t.p_star, t.evaluations, t.rates, t.bracket) == (Bounded(1e-4, "<"), 1, [1e-4], None)
    assert format_tolerable(t).startswith("< 0.01%")
    passes = Curve(lambda p: 0.021)
    t = tolerable_rate(passes, 0.01, 0.02, 1e-4, 0.1, seed=0)
    assert (t.p_star, t.evaluations, t.bracket) == (Bounded(0.1, ">"), 2, None)
    assert t.ci95 == [Bounded(0.1, ">"), Bounded(0.1, ">")]


def test_rates_above_a_failing_rate_do_not_rescue_it():
    """First crossing: a noisy dip above a failing rate does not make the higher rate tolerable."""
    ev = Curve(lambda p: 0.05 if 0.001 <= p < 0.002 else (0.025 if p < 0.001 else 0.026))
    t = tolerable_rate(ev, 0.01, 0.02, 1e-4, 0.1, seed=0, grid=[0.0015, 0.01], ci_rtol=None)
    assert t.p_star.value < 0.0015


# ----------------------------------------------------------------------------------- interval vs loop reference
def ref_percentile_inf(xs, q):
    s = sorted(xs)
    pos = q / 100 * (len(s) - 1)
    i = math.floor(pos)
    a, b = s[i], s[min(i + 1, len(s) - 1)]
    if pos == i or a == b:
        return a
    if a == -math.inf or b == math.inf:
        return a if a == -math.inf else b
    return a + (pos - i) * (b - a)


def ref_interval(mats, rates, reference, budget, seed, n_boot):
    """Loop reference: the documented draws (models, then chips), each replicate's whole curve, the first
    crossing in log p, the percentile interval with infinite ends."""
    M, C = len(mats[0]), len(mats[0][0])
    rng = np.random.default_rng(seed)
    mi = rng.integers(0, M, size=(n_boot, M)).tolist() if M > 1 else [[0]] * n_boot
    ci = rng.integers(0, C, size=(n_boot, C)).tolist() if C > 1 else [[0]] * n_boot
    out = []
    for b in range(n_boot):
        if isinstance(reference, list):
            thr = math.fsum(reference[i] for i in mi[b]) / len(mi[b]) + budget
        else:
            thr = reference + budget
        curve = [math.fsum(m[i][j] for i in mi[b] for j in ci[b]) / (len(mi[b]) * len(ci[b])) for m in mats]
        x = -math.inf
        for k, m in enumerate(curve):
            if m > thr + 1e-12:
                if k > 0:
                    f = (thr - curve[k - 1]) / (m - curve[k - 1])
                    f = min(max(f, 0.0), 1.0)
                    x = math.log(rates[k - 1]) + f * (math.log(rates[k]) - math.log(rates[k - 1]))
                break
        else:
            x = math.inf
        out.append(x)
    return ref_percentile_inf(out, 2.5), ref_percentile_inf(out, 97.5)


@pytest.mark.parametrize("reference", [0.1, [0.098, 0.101, 0.102]])
def test_interval_matches_the_loop_reference(reference):
    ev = Curve(sigmoid, M=3, C=15, seed=4, scale=0.004, centred=False)
    t = tolerable_rate(ev, 0.01, reference, 1e-4, 0.2, seed=77, n_boot=300, ci_rtol=None)
    mats = [ev(p) for p in t.rates]
    lo, hi = ref_interval(mats, t.rates, reference, 0.01, 77, 300)
    for end, want in zip(t.ci95, (lo, hi)):
        assert end.rel == "=" and math.log(end.value) == pytest.approx(want, abs=1e-9)
    if isinstance(reference, list):
        assert t.reference == pytest.approx(sum(reference) / 3) and t.reference_per_model == reference


def test_interval_ends_refined_to_ci_rtol():
    ev = Curve(sigmoid, M=3, C=30, seed=5, scale=0.006, centred=False)
    plain = tolerable_rate(Curve(sigmoid, M=3, C=30, seed=5, scale=0.006, centred=False), 0.01, 0.1, 1e-4, 0.2,
                           seed=3, ci_rtol=None)
    t = tolerable_rate(ev, 0.01, 0.1, 1e-4, 0.2, seed=3, ci_rtol=0.05)
    assert t.evaluations > plain.evaluations and len(ev.calls) == len(set(ev.calls))
    for end in t.ci95:
        assert end.rel == "="
        j = int(np.searchsorted(t.rates, end.value))
        assert t.rates[j] / t.rates[j - 1] <= 1.05 + 1e-12
    # the refinement does not move the point estimate's bracket check: p* still inside its final bracket
    assert t.bracket[0] <= t.p_star.value <= t.bracket[1]


def test_interval_covers_the_true_tolerable_rate():
    """Random models and chips around a known population curve: the 95% interval of p* covers the population's
    crossing (0.01 / 7) in most repetitions (200 repetitions, 10 models x 30 chips)."""
    true, hit = 0.01 / 7, 0
    for r in range(200):
        rng = np.random.default_rng(1000 + r)
        off = 0.003 * rng.standard_normal((10, 1)) + 0.003 * rng.standard_normal((1, 30)) \
            + 0.003 * rng.standard_normal((10, 30))
        t = tolerable_rate(lambda p: (sigmoid(p) + off).tolist(), 0.01, 0.1, 1e-4, 0.2, seed=r, n_boot=300)
        hit += t.ci95[0].value <= true <= t.ci95[1].value
    assert 0.85 <= hit / 200 <= 0.995, hit


def test_evaluate_contract_is_checked():
    shapes = iter([[[0.02, 0.02]], [[0.5, 0.5, 0.5]]])
    with pytest.raises(ValueError, match="same models and chips"):
        tolerable_rate(lambda p: next(shapes), 0.01, 0.02, 1e-4, 0.1, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tolerable_rate(lambda p: [[1.5]], 0.01, 0.02, 1e-4, 0.1, seed=0)
    with pytest.raises(ValueError, match="per-model"):
        tolerable_rate(lambda p: [[0.02], [0.02]], 0.01, [0.02, 0.02, 0.02], 1e-4, 0.1, seed=0)
    with pytest.raises(ValueError, match="p_lo"):
        tolerable_rate(lambda p: [[0.02]], 0.01, 0.02, 0.1, 0.01, seed=0)
    with pytest.raises(ValueError, match="budget"):
        tolerable_rate(lambda p: [[0.02]], -0.01, 0.02, 1e-4, 0.1, seed=0)


# --------------------------------------------------------------------------------------- V_min and energy saved
# rates 10^-2 at 0.5 V, one decade per 0.1 V: log10 rate = -2 - 10 (V - 0.5), nominal 1.0 V
LAW = """# synthetic law for the tests
# nominal_voltage_v = 1.0
voltage_v,ber
0.5,1e-2
0.6,1e-3
0.7,1e-4
0.8,1e-5
1.0,1e-7
"""


def test_vmin_and_saving_from_a_known_law_by_hand():
    prof = read_curve(LAW)
    # p = 10^-2.5 lies halfway (in log rate) between 0.5 V and 0.6 V: V_min = 0.55 V
    v = vmin_at_rate(prof, 10 ** -2.5)
    assert v.rel == "=" and v.value == pytest.approx(0.55, abs=1e-12)
    # V^2 model: saving = 1 - (0.55 / 1.0)^2 = 279/400
    ve = voltage_energy(prof, 10 ** -2.5)
    assert ve.saving.value == pytest.approx(float(1 - Fraction(55, 100) ** 2), abs=1e-12)
    assert ve.energy.value == pytest.approx(float(Fraction(55, 100) ** 2), abs=1e-12)
    assert ve.energy_model == ENERGY_MODEL_V2 and "assumed" in ENERGY_MODEL_V2 and "V^2" in ENERGY_MODEL_V2
    # p = 3e-6: log10 = -5.5229 -> between 0.8 V (1e-5) and 1.0 V (1e-7): V = 0.8 + 0.2 * (5.5229 - 5) / 2
    v = vmin_at_rate(prof, 3e-6)
    assert v.value == pytest.approx(0.8 + 0.2 * (-math.log10(3e-6) - 5) / 2, abs=1e-12)
    # exactly a measured rate: that voltage
    assert vmin_at_rate(prof, 1e-4) == Bounded(pytest.approx(0.7, abs=1e-12), "=")


def test_vmin_never_extrapolates():
    prof = read_curve(LAW)
    assert vmin_at_rate(prof, 0.02) == Bounded(0.5, "<=")       # safe at the lowest measured voltage already
    assert vmin_at_rate(prof, 1e-8) == Bounded(1.0, ">")        # not safe at any measured voltage
    zero = read_curve("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,0.01\n0.6,0\n1.0,0\n")
    assert vmin_at_rate(zero, 1e-3) == Bounded(0.6, "<=")       # a segment ending at rate 0: no log interpolation
    assert voltage_energy(prof, 1e-8).saving == Bounded(0.0, "<")
    assert voltage_energy(prof, 0.02).saving == Bounded(pytest.approx(0.75), ">=")


def test_bounds_and_interval_carried_through():
    prof = read_curve(LAW)
    # p* < 10^-2.5: V_min >= 0.55 V, saving <= 0.6975
    assert vmin_at_rate(prof, Bounded(10 ** -2.5, "<")) == Bounded(pytest.approx(0.55), ">=")
    assert vmin_at_rate(prof, Bounded(10 ** -2.5, ">")) == Bounded(pytest.approx(0.55), "<=")
    assert vmin_at_rate(prof, Bounded(1e-8, "<")) == Bounded(1.0, ">")
    assert vmin_at_rate(prof, Bounded(0.02, "<")).rel == "?"      # lower than a rate safe everywhere: unknown
    assert format_bounded(vmin_at_rate(prof, Bounded(0.02, "<"))) == "unknown"
    t = TolerableRate(Bounded(10 ** -2.5), [Bounded(1e-3), Bounded(1e-2)], 0.01, 0.03, 0.02, None, [], [], 0, None,
                      0.05, 3, 50, 2000, 0)
    ve = voltage_energy(prof, t)
    assert ve.v_min.value == pytest.approx(0.55)
    assert [b.value for b in ve.v_min_ci95] == pytest.approx([0.5, 0.6])          # higher rate -> lower voltage
    assert [b.value for b in ve.saving_ci95] == pytest.approx([1 - 0.36, 1 - 0.25])
    assert format_bounded(ve.v_min, lambda x: f"{x:.3f} V") == "0.550 V"
    json.dumps(ve.to_json())


def test_energy_column_replaces_the_v2_model():
    prof = read_curve("# nominal_voltage_v = 1.0\nvoltage_v,ber,energy\n0.5,1e-2,5\n0.6,1e-3,7\n0.8,1e-5,11\n"
                      "1.0,1e-7,20\n")
    assert energy_model(prof) == ENERGY_MODEL_PROFILE
    assert energy_ratio(prof, 0.55) == pytest.approx(6 / 20)          # linear in V between 5 and 7
    ve = voltage_energy(prof, 10 ** -2.5)
    assert ve.saving.value == pytest.approx(0.7)


def test_precision_tradeoff_by_hand():
    prof = read_curve(LAW)
    rows = [{"name": "rquant", "bits": 8, "clean_err": 0.047, "rerr": 0.26, "tolerable": 10 ** -2.5},
            {"name": "rquant:bits=4", "bits": 4, "clean_err": 0.05, "rerr": 0.3, "tolerable": Bounded(1e-3)},
            {"name": "normal:bits=4", "bits": 4, "clean_err": 0.09, "rerr": 0.9, "tolerable": Bounded(1e-8, "<")}]
    out = precision_tradeoff(rows, prof)
    assert out[0]["energy"]["value"] == pytest.approx(0.55 ** 2) and out[0]["clean_err"] == 0.047
    assert out[1]["v_min"]["value"] == pytest.approx(0.6)
    assert out[1]["energy"]["value"] == pytest.approx(4 / 8 * 0.36)           # bits x energy per bit at V_min
    assert out[1]["saving"]["value"] == pytest.approx(1 - 0.18)
    assert out[2]["v_min"] == {"value": 1.0, "rel": ">"} and out[2]["energy"]["rel"] == ">"
    assert all(r["energy_model"] == ENERGY_MODEL_V2 for r in out)
    json.dumps(out)


# ------------------------------------------------------------------------------------------ V_min from maps
def test_tolerable_voltage_on_profiled_maps():
    rng = np.random.default_rng(8)
    off = 0.002 * rng.standard_normal((3, 1)) + 0.002 * rng.standard_normal((1, 10))
    off = off - off.mean()
    volts = [1.0, 0.5, 0.8, 0.6, 0.75, 0.65]                 # any order

    def mean(v):                                              # 0.03 at 0.8 V and above, +1 point per 0.1 V below
        return 0.03 + 0.1 * max(0.0, 0.8 - v)

    mats = [(mean(v) + off).tolist() for v in volts]
    out = tolerable_voltage(volts, mats, 0.01, 0.03, seed=2, n_boot=300)
    assert out["v_min"].rel == "=" and out["v_min"].value == pytest.approx(0.7, abs=1e-9)
    assert out["voltages"] == sorted(volts)
    lo, hi = out["ci95"]
    assert lo.value <= 0.7 <= hi.value
    assert tolerable_voltage(volts, mats, 0.5, 0.03, seed=2)["v_min"] == Bounded(0.5, "<=")
    assert tolerable_voltage(volts, mats, 0.0, 0.0, seed=2)["v_min"] == Bounded(1.0, ">")


def test_stored_analysis_is_recomputed_from_its_matrices():
    from bitbench.configs.energy import analysis_json, check_analysis, tolerable_from_matrices
    from bitbench.configs.schema import FormatError

    ev = Curve(sigmoid, M=3, C=10, seed=4)
    t = tolerable_rate(ev, 0.01, [0.1, 0.1, 0.1], 1e-4, 0.2, seed=7, n_boot=200)
    mats = {p: ev(p) for p in t.rates}
    again = tolerable_from_matrices(mats, 0.01, [0.1, 0.1, 0.1], seed=7, n_boot=200)
    assert again.p_star == t.p_star and again.ci95 == t.ci95 and again.rates == t.rates
    a = analysis_json(t, mats, suite="s", model="m", defense="d", bits=8, spec="tolerable", train_seeds=[0, 1, 2],
                      pattern_seeds=list(range(10)), reference="own", config_hash="h", version="v", date="2025")
    assert check_analysis(json.loads(json.dumps(a))).p_star == t.p_star
    bad = json.loads(json.dumps(a))
    bad["p_star"]["value"] *= 1.01                 # an edited p*: not what the stored matrices give
    with pytest.raises(FormatError, match="edited or damaged"):
        check_analysis(bad)
