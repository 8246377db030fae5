"""The energy axis: tolerable bit error rate, lowest safe voltage and energy saved (pure computations).

Tolerable rate
--------------
p*(budget) is the highest bit error rate at which a defense's mean RErr (over models and chips) stays within an
accuracy *budget* (an absolute fraction: 0.01 = +1 point) above a *reference* clean error: the defense's own (its
models' clean errors, resampled with the models) or a given one (e.g. the ``normal`` row's clean error of the same
suite: a fixed number). Precisely, with the evaluated rates p_1 < ... < p_K and mean RErr m_k, the *first
crossing*: the first rate whose mean exceeds the threshold t = reference + budget (1e-12 slack for rounding) is
p_j, and p* is the crossing of the straight line through (log p_{j-1}, m_{j-1}) and (log p_j, m_j) with t -- the
rate is interpolated linearly in log p between evaluated rates, never extrapolated. If even the lowest rate fails,
p* is reported as "< p_lo"; if every rate passes, "> p_hi". Rates above a failing one never rescue it ("stays
within").

The search (:func:`tolerable_rate`) evaluates ``p_lo``, then any ``grid`` rates in ascending order up to the
first that fails (rates whose records are cached cost nothing: pass the suite's rates), then ``p_hi``, then bisects
the bracket [highest passing, lowest failing]
geometrically (at sqrt(lo * hi), canonical to 12 digits as rate specs are) until hi / lo <= 1 + rtol. Why
bisection in log p: the only assumption is monotonicity -- RErr is non-decreasing in p per chip up to noise,
because a chip's bit errors at a lower rate are a subset of those at a higher one -- and each evaluation then halves
the log-bracket: from [p_lo, p_hi] it takes exactly ceil(log2(ln(p_hi / p_lo) / ln(1 + rtol))) evaluations after
the two ends (rates spanning 1e-4..0.2 at rtol = 0.05: 8, 10 in all). A grid of G fresh rates buys only a factor
(p_hi / p_lo)^(1/G), so a grid pays only where it is cached; interpolation steps (secant) would save an
evaluation or two on smooth curves but lose the guaranteed count on the sigmoid-shaped RErr curves. Each
evaluation is one call ``evaluate(p)`` -> the models x chips RErr matrix at rate p; the caller evaluates on the
nested chips and caches, and no rate is asked twice.

The interval: the crossed bootstrap of :mod:`.stats` -- one set of resamples (models, chips) applied to the
matrices of *every* evaluated rate, so each replicate is a whole resampled curve -- and the same first-crossing
estimator per replicate; the 95% interval is the percentile interval of the replicates' log p* (linear
interpolation; a replicate that fails at the lowest evaluated rate counts as -inf and one that passes everywhere
as +inf, so an interval end may be a bound, "< p" or "> p"). The curve is known only at the evaluated rates, which
the search places around the point estimate; ``ci_rtol`` evaluates more rates until each finite interval end lies
in a bracket of ratio <= 1 + ci_rtol. Measured on synthetic sigmoid curves (Gaussian model, chip and interaction
effects; 300 repetitions): coverage 91% with 10 models x 30 chips, 82% with 3 models x 50 chips (the few-model
under-coverage of :mod:`.stats`), at 11-12 evaluations each (rates 1e-4..0.2, rtol 0.05, ci_rtol 0.25).

Voltage and energy
------------------
V_min(p) is the lowest voltage whose rate (:attr:`.voltage.VoltageProfile.rates`) is <= p, log rate interpolated
linearly in voltage between neighbouring measured points (a segment ending at a measured rate of 0 cannot be
interpolated in log rate: V_min is then "<=" that point). Never extrapolated: "<=" the lowest measured voltage if
that one is safe already ("not below the lowest measured voltage"), "> the highest" if none is ("not safe at any
measured voltage"). Energy per access: the profile's ``energy`` column, interpolated linearly in voltage, or --
an *assumption*, the first-order CMOS model of dynamic energy -- proportional to V^2. Energy saved = 1 -
E(V_min) / E(V_nominal). Values that are only bounded are :class:`Bounded` (``value``, ``rel``), with ``rel`` one
of ``=``, ``<``, ``>``, ``<=``, ``>=`` or ``?`` (unknown, value None), carried through every step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .schema import KINDS, Field, FormatError, list_of, show_value
from .spec import canonical_rate
from .stats import DEFAULT_N_BOOT, Resamples, _check_n_boot, _check_seed, _matrix
from .voltage import VoltageProfile

__all__ = ["Bounded", "TolerableRate", "VoltageEnergy", "tolerable_rate", "tolerable_from_matrices", "tolerable_voltage", "vmin_at_rate",
           "voltage_energy", "energy_ratio", "energy_model", "precision_tradeoff", "format_bounded",
           "format_tolerable", "ENERGY_MODEL_V2", "TOLERABLE_FORMAT", "TOLERABLE_FIELD", "analysis_json",
           "check_analysis", "energy_saving", "tolerable_cell", "tolerable_verdict", "analysis_title", "budget_text", "ENERGY_MODEL_PROFILE", "EPS"]

EPS = 1e-12                 # slack when comparing a mean RErr with its threshold (fractions)
ENERGY_MODEL_V2 = ("assumed: dynamic energy per access proportional to V^2 (the first-order CMOS model), "
                   "relative to the nominal voltage")
ENERGY_MODEL_PROFILE = "the profile's energy column, interpolated linearly in voltage, relative to the nominal voltage"
_RELS = ("=", "<", ">", "<=", ">=", "?")


@dataclass(frozen=True)
class Bounded:
    """A value known exactly (``rel`` '='), only as a bound ('<', '>', '<=', '>=': the true value is rel value),
    or not at all ('?', value None)."""

    value: float | None
    rel: str = "="

    def __post_init__(self):
        if self.rel not in _RELS:
            raise ValueError(f"rel must be one of {_RELS}, got {self.rel!r}")
        if (self.value is None) != (self.rel == "?"):
            raise ValueError("an unknown value ('?') has value None, and only it")

    def to_json(self) -> dict:
        return {"value": self.value, "rel": self.rel}

    @property
    def exact(self) -> bool:
        return self.rel == "="


_UNKNOWN = Bounded(None, "?")
_FLIP = {"=": "=", "<": ">", ">": "<", "<=": ">=", ">=": "<=", "?": "?"}


def _monotone(b: Bounded, f: Callable[[float], float], increasing: bool) -> Bounded:
    """f(b) for a monotone f (the relation flips for a decreasing f)."""
    if b.rel == "?":
        return _UNKNOWN
    return Bounded(float(f(b.value)), b.rel if increasing else _FLIP[b.rel])


def format_bounded(b: Bounded, fmt: Callable[[float], str] = lambda x: f"{x:g}") -> str:
    """``'0.62 V'``-style text: ``fmt(value)`` with the relation in front (``'< 0.01%'``, ``'>= 0.55 V'``);
    ``'unknown'`` for '?'."""
    if b.rel == "?":
        return "unknown"
    rel = {"=": "", "<": "< ", ">": "> ", "<=": "≤ ", ">=": "≥ "}[b.rel]
    return rel + fmt(b.value)


def _pct(x: float) -> str:
    return f"{x * 100:.3g}%"


# ------------------------------------------------------------------------------------------ first crossings
def _crossings(x: np.ndarray, means: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """First crossing of each curve (rows of ``means`` [B, K] over ascending ``x`` [K]) above ``thr`` [B]:
    x interpolated linearly between the last passing and the first failing point; -inf if the first point fails,
    +inf if none does."""
    fail = means > thr[:, None] + EPS
    anyf = fail.any(axis=1)
    j = np.argmax(fail, axis=1)
    out = np.full(means.shape[0], np.inf)
    out[anyf & (j == 0)] = -np.inf
    mid = anyf & (j > 0)
    if mid.any():
        r = np.nonzero(mid)[0]
        jj = j[r]
        m0, m1 = means[r, jj - 1], means[r, jj]
        t = np.clip((thr[r] - m0) / (m1 - m0), 0.0, 1.0)
        out[r] = x[jj - 1] + t * (x[jj] - x[jj - 1])
    return out


def _quantile(sorted_x: np.ndarray, q: float) -> float:
    """NumPy's linear percentile of sorted values that may hold -inf/+inf (an end next to an infinite value is
    that infinite value)."""
    n = len(sorted_x)
    pos = q / 100 * (n - 1)
    i = int(math.floor(pos))
    a, b = sorted_x[i], sorted_x[min(i + 1, n - 1)]
    frac = pos - i
    if frac == 0 or a == b:
        return float(a)
    if a == -np.inf:
        return -math.inf
    if b == np.inf:
        return math.inf
    return float(a + frac * (b - a))


def _ci_of(reps: np.ndarray) -> tuple[float, float]:
    s = np.sort(reps)
    return _quantile(s, 2.5), _quantile(s, 97.5)


# ------------------------------------------------------------------------------------------------ reference
def _reference(reference, n_models: int | None):
    """-> (mean reference, per-model list or None)."""
    if isinstance(reference, (list, tuple)):
        vals = [float(x) for x in reference]
        if not vals or not all(math.isfinite(x) and 0 <= x <= 1 for x in vals):
            raise ValueError(f"reference: per-model clean errors are fractions in [0, 1], got {reference!r}"[:200])
        if n_models is not None and len(vals) != n_models:
            raise ValueError(f"reference: {len(vals)} per-model clean errors for {n_models} models")
        return sum(vals) / len(vals), vals
    if isinstance(reference, bool) or not isinstance(reference, (int, float)) or not (0 <= reference <= 1):
        raise ValueError(f"reference: a clean error (fraction in [0, 1]) or a list of per-model clean errors, got "
                         f"{reference!r}")
    return float(reference), None


def _check_budget(budget) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (0 <= budget <= 1):
        raise ValueError(f"budget: an absolute error increase, a fraction in [0, 1] (0.01 = +1 point), got "
                         f"{budget!r}")
    return float(budget)


def _thresholds(res: Resamples, ref_mean: float, ref_models, budget: float) -> np.ndarray:
    if ref_models is None:
        return np.full(res.n_boot, ref_mean + budget)
    return res.model_means(ref_models) + budget


# --------------------------------------------------------------------------------------------- tolerable rate
@dataclass
class TolerableRate:
    """Result of :func:`tolerable_rate` (rates are fractions).

    ``p_star``: the estimate ('='), or '<' p_lo (even the lowest rate fails), or '>' p_hi (every rate passes);
    ``ci95``: [low, high] ends of the 95% interval, each possibly a bound; ``threshold``: the mean-RErr limit,
    reference + budget; ``reference``: the mean reference clean error (``reference_per_model``: the per-model
    values when the reference is the defense's own); ``rates`` / ``mean_rerr``: every evaluated rate, ascending,
    and the mean RErr there; ``evaluations``: the number of ``evaluate`` calls (= len(rates)); ``bracket``: the
    final [passing, failing] rates of the search (None when p* is a bound)."""

    p_star: Bounded
    ci95: list
    budget: float
    threshold: float
    reference: float
    reference_per_model: list | None
    rates: list
    mean_rerr: list
    evaluations: int
    bracket: list | None
    rtol: float
    n_models: int
    n_chips: int
    n_boot: int
    seed: int

    def to_json(self) -> dict:
        return asdict(self)


def _rate_bound(x: float, lo: float, hi: float) -> Bounded:
    """A crossing in log p -> Bounded rate ('<' lowest evaluated, '>' highest)."""
    if x == -math.inf:
        return Bounded(lo, "<")
    if x == math.inf:
        return Bounded(hi, ">")
    return Bounded(float(math.exp(x)))


def tolerable_rate(evaluate: Callable, budget: float, reference, p_lo: float, p_hi: float, *, seed: int,
                   rtol: float = 0.05, grid=None, n_boot: int = DEFAULT_N_BOOT, ci_rtol: float | None = 0.25,
                   max_evals: int = 64) -> TolerableRate:
    """p*(budget): the highest rate at which the mean RErr stays within ``reference + budget`` (module docstring).

    ``evaluate(p)`` returns the models x chips RErr matrix (fractions) at rate p (same models and chips at every
    rate); ``reference``: a clean error (fraction, fixed) or the per-model clean errors of the matrix's models (the
    defense's own; resampled with the models); ``0 < p_lo < p_hi <= 1``; ``rtol``: stop when the bracket's ratio is
    <= 1 + rtol; ``grid``: rates in [p_lo, p_hi] to evaluate before bisecting (cached ones); ``ci_rtol``: refine
    the interval's ends too (None: no; each refinement is one more evaluation, typically 2-4 at 0.25);
    ``max_evals``: a hard cap on evaluations (the bracket is then wider than rtol, and ``bracket`` shows it).
    Evaluations: p_lo (alone if it fails), the grid rates (ascending, up to the first that fails), p_hi (nothing
    more if it and the grid pass), then ceil(log2(ln(hi / lo) / ln(1 + rtol))) bisections of the bracket [lo, hi]
    these leave, then the ``ci_rtol`` refinements."""
    budget = _check_budget(budget)
    n_boot, seed = _check_n_boot(n_boot), _check_seed(seed)
    for name, v in (("p_lo", p_lo), ("p_hi", p_hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 1):
            raise ValueError(f"{name}: a rate in (0, 1], got {v!r}")
    p_lo, p_hi = canonical_rate(p_lo), canonical_rate(p_hi)
    if not p_lo < p_hi:
        raise ValueError(f"p_lo ({p_lo!r}) must be below p_hi ({p_hi!r})")
    if not (isinstance(rtol, (int, float)) and rtol > 0) or (ci_rtol is not None and not ci_rtol > 0):
        raise ValueError(f"rtol and ci_rtol must be positive, got {rtol!r}, {ci_rtol!r}")
    grid = sorted({canonical_rate(g) for g in (grid or [])})
    if any(not (p_lo <= g <= p_hi) for g in grid):
        raise ValueError(f"grid rates must lie in [p_lo, p_hi] = [{p_lo}, {p_hi}], got {grid}")
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 2:
        raise ValueError(f"max_evals must be an integer >= 2, got {max_evals!r}")
    ref_mean, ref_models = _reference(reference, None)
    thr = ref_mean + budget

    mats: dict[float, np.ndarray] = {}
    shape: list = []
    hi = None

    def ev(p: float) -> bool:
        """Evaluate (once) and say whether the mean passes."""
        if p not in mats:
            m = _matrix(evaluate(p), f"evaluate({p!r})")
            if shape and m.shape != shape[0]:
                raise ValueError(f"evaluate({p!r}) returned {m.shape[0]} models x {m.shape[1]} chips; earlier "
                                 f"rates had {shape[0][0]} x {shape[0][1]} (the same models and chips at every rate)")
            if m.min() < 0 or m.max() > 1:
                raise ValueError(f"evaluate({p!r}) returned values outside [0, 1] (RErr is a fraction)")
            if not shape:
                shape.append(m.shape)
                _reference(reference, m.shape[0])
            mats[p] = m
        return float(mats[p].mean(axis=1).mean()) <= thr + EPS

    if ev(p_lo):
        lo, hi = p_lo, None
        for g in grid:                  # ascending; every evaluated rate below hi passes
            if g in (p_lo, p_hi):
                continue
            if not ev(g):
                hi = g
                break                   # the first failing grid rate: rates above it never make it pass
            lo = g
        if not ev(p_hi) and hi is None:  # p_hi is evaluated in any case: the replicates' curves reach up to it
            hi = p_hi
    if hi is not None:
        while hi / lo > 1 + rtol and len(mats) < max_evals:
            mid = canonical_rate(math.sqrt(lo * hi))
            if not lo < mid < hi:
                break
            if ev(mid):
                lo = mid
            else:
                hi = mid

    def summarize():
        return _summarize(mats, shape[0], thr, ref_mean, ref_models, budget, seed, n_boot)

    rates, x, means, point, ci = summarize()
    while ci_rtol is not None and len(mats) < max_evals:
        todo = set()
        for e in ci:
            if math.isfinite(e):
                j = int(np.searchsorted(x, e))
                j = min(max(j, 1), len(x) - 1)
                a, b = rates[j - 1], rates[j]
                mid = canonical_rate(math.sqrt(a * b))
                if b / a > 1 + ci_rtol and a < mid < b:
                    todo.add(mid)
        if not todo:
            break
        for p in sorted(todo)[:max_evals - len(mats)]:
            ev(p)
        rates, x, means, point, ci = summarize()
    return _result(mats, shape[0], rates, means, point, ci, budget, thr, ref_mean, ref_models, rtol, n_boot, seed)


def _summarize(mats: dict, shape, thr, ref_mean, ref_models, budget, seed, n_boot):
    """The point estimate and the crossed-bootstrap interval (in log p) of evaluated matrices ``{rate: M x C}``."""
    rates = sorted(mats)
    x = np.log(np.asarray(rates))
    full = np.asarray([[float(mats[p].mean(axis=1).mean()) for p in rates]])
    point = _crossings(x, full, np.asarray([thr]))[0]
    M, C = shape
    if M == 1 and C == 1:
        ci = (point, point)
    else:
        res = Resamples.draw(M, C, seed=seed, n_boot=n_boot)
        reps = np.stack([res.means(mats[p]) for p in rates], axis=1)
        ci = _ci_of(_crossings(x, reps, _thresholds(res, ref_mean, ref_models, budget)))
    return rates, x, full[0], point, ci


def _result(mats, shape, rates, means, point, ci, budget, thr, ref_mean, ref_models, rtol, n_boot, seed):
    M, C = shape
    fails = [p for p, m in zip(rates, means) if m > thr + EPS]
    bracket = None
    if math.isfinite(point):
        first = rates.index(fails[0])
        bracket = [rates[first - 1], rates[first]]
    return TolerableRate(_rate_bound(point, rates[0], rates[-1]),
                         [_rate_bound(ci[0], rates[0], rates[-1]), _rate_bound(ci[1], rates[0], rates[-1])],
                         budget, thr, ref_mean, ref_models, rates, [float(m) for m in means], len(mats), bracket,
                         float(rtol), M, C, n_boot, seed)


def tolerable_from_matrices(matrices: dict, budget: float, reference, *, seed: int, rtol: float = 0.05,
                            n_boot: int = DEFAULT_N_BOOT) -> TolerableRate:
    """The estimate and interval of :func:`tolerable_rate` from matrices already evaluated, ``{rate: models x chips
    RErr}`` (no search: what a stored analysis is checked against; the same numbers for the same matrices, seed and
    n_boot)."""
    budget = _check_budget(budget)
    n_boot, seed = _check_n_boot(n_boot), _check_seed(seed)
    if not matrices:
        raise ValueError("no evaluated rates")
    mats = {canonical_rate(float(p)): _matrix(m, f"matrices[{p!r}]") for p, m in matrices.items()}
    shapes = {m.shape for m in mats.values()}
    if len(shapes) != 1:
        raise ValueError(f"every rate needs the same models and chips, got shapes {sorted(shapes)}")
    shape = shapes.pop()
    ref_mean, ref_models = _reference(reference, shape[0])
    thr = ref_mean + budget
    rates, x, means, point, ci = _summarize(mats, shape, thr, ref_mean, ref_models, budget, seed, n_boot)
    return _result(mats, shape, rates, means, point, ci, budget, thr, ref_mean, ref_models, rtol, n_boot, seed)


def format_tolerable(t: TolerableRate) -> str:
    """``'0.81% [0.62%, 0.95%]'`` (p* [95% interval], percent); bounds as ``'< 0.01%'``."""
    return f"{format_bounded(t.p_star, _pct)} [{format_bounded(t.ci95[0], _pct)}, {format_bounded(t.ci95[1], _pct)}]"


# ----------------------------------------------------------------------------------------------------- V_min
def vmin_at_rate(profile: VoltageProfile, p) -> Bounded:
    """V_min for a rate p (a float or a :class:`Bounded` rate): the lowest voltage whose rate is <= p (module
    docstring). For a float: '=' interpolated, '<=' the lowest measured voltage (already safe there; or the
    measured point of rate 0 ending the segment), '>' the highest (not safe at any measured voltage). A bounded
    p: p < x gives V_min >= V_min(x), p > x gives V_min <= V_min(x), '?' where the bound says nothing."""
    if isinstance(p, Bounded):
        if p.rel == "?":
            return _UNKNOWN
        v = vmin_at_rate(profile, p.value)
        if p.rel == "=":
            return v
        if p.rel in ("<", "<="):          # a lower rate needs a higher voltage
            return {"=": Bounded(v.value, ">="), ">": v}.get(v.rel, _UNKNOWN)
        return {"=": Bounded(v.value, "<="), "<=": v}.get(v.rel, _UNKNOWN)
    p = float(p)
    if not (math.isfinite(p) and 0 <= p <= 1):
        raise ValueError(f"rate {p!r} is not a fraction in [0, 1]")
    V, r = profile.voltages, profile.rates
    if r[0] <= p:
        return Bounded(float(V[0]), "<=")
    if r[-1] > p:
        return Bounded(float(V[-1]), ">")
    j = next(k for k in range(len(r)) if r[k] <= p)
    i = j - 1
    if r[j] == 0:
        return Bounded(float(V[j]), "<=")
    t = (math.log(p) - math.log(r[i])) / (math.log(r[j]) - math.log(r[i]))
    return Bounded(float(V[i] + t * (V[j] - V[i])))


def energy_model(profile: VoltageProfile) -> str:
    """The energy model in words (say it next to every saving)."""
    return ENERGY_MODEL_PROFILE if profile.energy is not None else ENERGY_MODEL_V2


def energy_ratio(profile: VoltageProfile, v: float) -> float:
    """E(v) / E(V_nominal) per access: (v / V_nominal)^2 (assumed), or the profile's energy column interpolated
    linearly in voltage (v within the measured range)."""
    v = float(v)
    if profile.energy is None:
        return (v / profile.nominal_voltage) ** 2
    V, E = profile.voltages, profile.energy

    def at(u):
        if not V[0] <= u <= V[-1]:
            raise ValueError(f"voltage {u:g} V outside the profile's energy column ({V[0]:g}-{V[-1]:g} V)")
        return float(np.interp(u, V, E))

    return at(v) / at(profile.nominal_voltage)


def _saving(profile: VoltageProfile, v: Bounded, scale: float = 1.0) -> Bounded:
    """1 - scale * E(V) / E(V_nom): decreasing in V."""
    return _monotone(v, lambda u: 1.0 - scale * energy_ratio(profile, u), increasing=False)


def energy_saving(profile: VoltageProfile, v: Bounded) -> Bounded:
    """The energy per access saved at voltage ``v`` (a :class:`Bounded`, volts) against the nominal voltage:
    1 - E(v) / E(V_nominal), the relation flipped (a lower voltage saves more)."""
    return _saving(profile, v)


@dataclass
class VoltageEnergy:
    """V_min and the energy saved for one tolerable rate: ``v_min`` / ``v_min_ci95`` (volts; the interval from
    p*'s: a higher rate allows a lower voltage), ``energy`` / ``energy_ci95`` (energy per access relative to the
    nominal voltage, times ``bits / reference_bits``), ``saving`` / ``saving_ci95`` (1 - energy), the
    ``nominal_voltage`` and the ``energy_model`` in words."""

    v_min: Bounded
    v_min_ci95: list
    energy: Bounded
    energy_ci95: list
    saving: Bounded
    saving_ci95: list
    nominal_voltage: float
    energy_model: str

    def to_json(self) -> dict:
        return asdict(self)


def voltage_energy(profile: VoltageProfile, tolerable, *, bits: int | None = None,
                   reference_bits: int = 8) -> VoltageEnergy:
    """V_min and energy saved against the nominal voltage for a :class:`TolerableRate` (or a :class:`Bounded`
    rate / a float: no interval), optionally for a memory of ``bits`` bits per weight against one of
    ``reference_bits`` (memory energy = bits x energy per bit; per-bit energy at V_min)."""
    if isinstance(tolerable, TolerableRate):
        p, (plo, phi) = tolerable.p_star, tolerable.ci95
    else:
        p = tolerable if isinstance(tolerable, Bounded) else Bounded(float(tolerable))
        plo = phi = p
    scale = 1.0 if bits is None else bits / reference_bits
    v, v_lo, v_hi = vmin_at_rate(profile, p), vmin_at_rate(profile, phi), vmin_at_rate(profile, plo)

    def energy(b):
        return _monotone(b, lambda u: scale * energy_ratio(profile, u), increasing=True)

    return VoltageEnergy(v, [v_lo, v_hi], energy(v), [energy(v_lo), energy(v_hi)], _saving(profile, v, scale),
                         [_saving(profile, v_hi, scale), _saving(profile, v_lo, scale)], profile.nominal_voltage,
                         energy_model(profile))


# --------------------------------------------------------------------------------------- V_min from error maps
def tolerable_voltage(voltages, matrices, budget: float, reference, *, seed: int,
                      n_boot: int = DEFAULT_N_BOOT) -> dict:
    """V_min measured directly on profiled error maps: ``matrices[k]`` is the models x patterns RErr matrix with
    the map of ``voltages[k]`` (same models and pattern placements at every voltage). From the highest voltage
    down, the first voltage whose mean RErr exceeds reference + budget fails; V_min is the crossing, mean RErr
    interpolated linearly in voltage between it and the next higher (passing) voltage; '>' the highest voltage if
    it fails already, '<=' the lowest if every voltage passes. Interval: the crossed bootstrap with the same
    resamples at every voltage. Returns ``{"v_min", "ci95" (Bounded), "threshold", "voltages" (ascending),
    "mean_rerr"}``."""
    budget = _check_budget(budget)
    n_boot, seed = _check_n_boot(n_boot), _check_seed(seed)
    if len(voltages) != len(matrices) or len(voltages) < 1:
        raise ValueError("one RErr matrix per voltage expected")
    order = sorted(range(len(voltages)), key=lambda k: -float(voltages[k]))     # descending voltage
    vs = [float(voltages[k]) for k in order]
    if len(set(vs)) != len(vs):
        raise ValueError(f"duplicate voltages in {vs}")
    mats = [_matrix(matrices[k], f"matrices[{k}]") for k in order]
    if any(m.shape != mats[0].shape for m in mats):
        raise ValueError("every voltage needs the same models and patterns (matrices of one shape)")
    M, C = mats[0].shape
    ref_mean, ref_models = _reference(reference, M)
    thr = ref_mean + budget
    x = -np.asarray(vs)                                   # ascending in "badness"
    means = np.asarray([[float(m.mean(axis=1).mean()) for m in mats]])
    point = _crossings(x, means, np.asarray([thr]))[0]
    if M == 1 and C == 1:
        ci = (point, point)
    else:
        res = Resamples.draw(M, C, seed=seed, n_boot=n_boot)
        reps = np.stack([res.means(m) for m in mats], axis=1)
        ci = _ci_of(_crossings(x, reps, _thresholds(res, ref_mean, ref_models, budget)))

    def volt(c):
        if c == -math.inf:
            return Bounded(vs[0], ">")
        if c == math.inf:
            return Bounded(vs[-1], "<=")
        return Bounded(float(-c))

    return {"v_min": volt(point), "ci95": [volt(ci[1]), volt(ci[0])], "threshold": thr,
            "voltages": vs[::-1], "mean_rerr": [float(m) for m in means[0][::-1]]}


# --------------------------------------------------------------------------------------- precision trade-off
def precision_tradeoff(rows, profile: VoltageProfile, *, reference_bits: int = 8) -> list[dict]:
    """Weight-memory energy of a defense's precision variants relative to a ``reference_bits``-bit model at the
    nominal voltage: energy = (bits / reference_bits) x E(V_min) / E(V_nominal), with V_min from each row's
    tolerable rate (computed with the budget and reference you state, e.g. +1 point over the normal 8-bit model's
    clean error: the paper's "energy saved at <= 1 point accuracy loss").

    ``rows``: ``[{"name", "bits", "tolerable": TolerableRate | Bounded | float, ...}]``; other keys (``clean_err``,
    ``rerr``) are passed through. Returns one dict per row: its keys plus ``p_star``, ``v_min``, ``energy``,
    ``saving`` (each a Bounded's JSON) with ``_ci95`` lists where the rate has an interval, and
    ``energy_model``."""
    out = []
    for i, r in enumerate(rows):
        bits = r.get("bits") if isinstance(r, dict) else None
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1 or "tolerable" not in r:
            raise ValueError(f"row {i}: expected a dict with integer 'bits' >= 1 and 'tolerable'")
        ve = voltage_energy(profile, r["tolerable"], bits=bits, reference_bits=reference_bits)
        t = r["tolerable"]
        p = t.p_star if isinstance(t, TolerableRate) else (t if isinstance(t, Bounded) else Bounded(float(t)))
        d = {k: v for k, v in r.items() if k != "tolerable"}
        d["p_star"] = p.to_json()
        if isinstance(t, TolerableRate):
            d["p_star_ci95"] = [b.to_json() for b in t.ci95]
        j = ve.to_json()
        for k in ("v_min", "energy", "saving"):
            d[k] = j[k]
            if isinstance(t, TolerableRate):
                d[k + "_ci95"] = j[k + "_ci95"]
        d["energy_model"] = ve.energy_model
        d["reference_bits"] = reference_bits
        out.append(d)
    return out


# ------------------------------------------------------------------------------ the analysis: file and declaration
TOLERABLE_FORMAT = "bitbench.tolerable/1"
_ANALYSIS_KEYS = ("format", "suite", "model", "defense", "bits", "spec", "train_seeds", "pattern_seeds", "budget",
                  "reference", "reference_err", "reference_per_model", "threshold", "rates", "per_model_rerr",
                  "p_star", "ci95", "evaluations", "bracket", "rtol", "n_boot", "seed", "config_hash", "version",
                  "date")

#: The one declaration of the tolerable rate's column: the ``run`` table, the entry field (``tolerable``: a list of
#: analyses, :func:`check_analysis`), LEADERBOARD.md and the website take title, doc and direction from it.
TOLERABLE_FIELD = Field("tolerable", list_of(KINDS["dict"]), "record", "tolerable bit error rate analyses "
                        f"(`{TOLERABLE_FORMAT}` objects, docs/energy.md): p* = the highest rate whose mean RErr stays "
                        "within `budget` of the reference clean error, with its 95% interval and the RErr matrices "
                        "of every evaluated rate (rechecked on read)", default=[], title="Tolerable p",
                        fmt="text", entry="entry", lower_is_better=False)


def _bounded_json(b: Bounded) -> dict:
    return {"value": b.value, "rel": b.rel}


def _bounded_of(d, where: str) -> Bounded:
    if not isinstance(d, dict) or set(d) != {"value", "rel"}:
        raise FormatError(where, f"expected {{value, rel}}, got {show_value(d)}")
    try:
        return Bounded(d["value"], d["rel"])
    except ValueError as e:
        raise FormatError(where, str(e)) from None


def analysis_json(t: TolerableRate, matrices: dict, *, suite: str, model: str, defense: str, bits: int, spec: str,
                  train_seeds: list, pattern_seeds: list | None, reference: str, config_hash: str, version: str,
                  date: str) -> dict:
    """The file / entry object of one analysis (:data:`TOLERABLE_FORMAT`): ``t`` with the matrices it came from
    (``{rate: models x chips RErr}``), the identity of the row and ``reference`` ('own' or 'normal')."""
    rates = list(t.rates)
    return {"format": TOLERABLE_FORMAT, "suite": suite, "model": model, "defense": defense, "bits": int(bits),
            "spec": spec, "train_seeds": list(train_seeds), "pattern_seeds": pattern_seeds, "budget": t.budget,
            "reference": reference, "reference_err": t.reference, "reference_per_model": t.reference_per_model,
            "threshold": t.threshold, "rates": rates,
            "per_model_rerr": [[[float(v) for v in row] for row in np.asarray(matrices[p], dtype=float).tolist()]
                               for p in rates],
            "p_star": _bounded_json(t.p_star), "ci95": [_bounded_json(b) for b in t.ci95],
            "evaluations": t.evaluations, "bracket": t.bracket, "rtol": t.rtol, "n_boot": t.n_boot,
            "seed": t.seed, "config_hash": config_hash, "version": version, "date": date}


def check_analysis(a, where: str = "tolerable") -> TolerableRate:
    """Validate an analysis object and recompute p* and its interval from its matrices (an edit never matches);
    returns the recomputed :class:`TolerableRate`. Raises :class:`~.schema.FormatError`."""
    if not isinstance(a, dict):
        raise FormatError(where, f"expected an object, got {show_value(a)[:80]}")
    if a.get("format") != TOLERABLE_FORMAT:
        raise FormatError(f"{where}.format", f"expected {TOLERABLE_FORMAT!r}, got {show_value(a.get('format'))}")
    if set(a) != set(_ANALYSIS_KEYS):
        missing, extra = sorted(set(_ANALYSIS_KEYS) - set(a)), sorted(set(a) - set(_ANALYSIS_KEYS))
        raise FormatError(where, f"fields differ from the format's: missing {missing}, unknown {extra}")
    for k in ("suite", "model", "defense", "spec", "config_hash", "version", "date"):
        if not KINDS["str"].check(a[k]):
            raise FormatError(f"{where}.{k}", f"expected a non-empty string, got {show_value(a[k])}")
    if a["reference"] not in ("own", "normal"):
        raise FormatError(f"{where}.reference", f"expected 'own' or 'normal', got {show_value(a['reference'])}")
    for k in ("budget", "reference_err", "threshold"):
        if not KINDS["frac"].check(a[k]) and not (k == "threshold" and KINDS["num"].check(a[k])):
            raise FormatError(f"{where}.{k}", f"expected a fraction, got {show_value(a[k])}")
    rates, mats = a["rates"], a["per_model_rerr"]
    if not list_of(KINDS["frac"]).check(rates) or not rates or rates != sorted(set(rates)):
        raise FormatError(f"{where}.rates", "expected the evaluated rates, ascending, each once")
    if not isinstance(mats, list) or len(mats) != len(rates):
        raise FormatError(f"{where}.per_model_rerr", f"expected one models x chips matrix per rate ({len(rates)})")
    n_models = len(a["train_seeds"]) if isinstance(a["train_seeds"], list) else -1
    for i, m in enumerate(mats):
        if not isinstance(m, list) or len(m) != n_models or not all(list_of(KINDS["frac"]).check(r) and r
                                                                   for r in m):
            raise FormatError(f"{where}.per_model_rerr[{i}]", f"expected {n_models} lists (one per model of "
                                                              "train_seeds) of RErr fractions, one per chip")
    ref = a["reference_per_model"] if a["reference"] == "own" else a["reference_err"]
    if a["reference"] == "own" and not (list_of(KINDS["frac"]).check(ref) and len(ref) == n_models):
        raise FormatError(f"{where}.reference_per_model", "reference 'own': one clean error per model expected")
    if not KINDS["posint"].check(a["n_boot"]) or not KINDS["count"].check(a["seed"]):
        raise FormatError(f"{where}.n_boot", "expected the bootstrap's replicates (>= 1) and seed (>= 0)")
    if not KINDS["num"].check(a["rtol"]) or a["rtol"] <= 0:
        raise FormatError(f"{where}.rtol", f"expected a positive number, got {show_value(a['rtol'])}")
    try:
        t = tolerable_from_matrices(dict(zip(rates, mats)), a["budget"], ref, seed=a["seed"], rtol=a["rtol"],
                                    n_boot=a["n_boot"])
    except ValueError as e:
        raise FormatError(where, str(e)) from None
    stored = [_bounded_of(a["p_star"], f"{where}.p_star")] + [
        _bounded_of(b, f"{where}.ci95[{i}]") for i, b in enumerate(a["ci95"] if isinstance(a["ci95"], list)
                                                                   and len(a["ci95"]) == 2 else [None, None])]
    for got, want, k in zip([t.p_star, *t.ci95], stored, ("p_star", "ci95[0]", "ci95[1]")):
        if got.rel != want.rel or not math.isclose(got.value, want.value, rel_tol=1e-9, abs_tol=1e-15):
            raise FormatError(f"{where}.{k}", f"{show_value(want.to_json())} is not what the stored RErr matrices "
                                              f"give ({show_value(got.to_json())}): the analysis was edited or "
                                              "damaged")
    if a["evaluations"] != len(rates) or abs(a["threshold"] - t.threshold) > 1e-12:
        raise FormatError(f"{where}.evaluations", "evaluations / threshold do not match the stored rates and budget")
    return t


def budget_text(budget: float) -> str:
    """``0.01`` -> ``'+1 point'``, ``0.025`` -> ``'+2.5 points'``."""
    pts = f"{budget * 100:.3g}"
    return f"+{pts} point" + ("" if pts == "1" else "s")


def tolerable_cell(p_star: Bounded, ci95) -> str:
    """The table cell of p* (every table: run, LEADERBOARD.md, the website's text): ``'0.81% [0.62%, 0.95%]'``."""
    return f"{format_bounded(p_star, _pct)} [{format_bounded(ci95[0], _pct)}, {format_bounded(ci95[1], _pct)}]"


def tolerable_verdict(p_star: Bounded, budget: float, reference: str) -> str:
    """``'tolerates p ≤ 0.81% at +1 point'`` (``'... over normal'`` for the normal row's reference)."""
    ref = "" if reference == "own" else " over normal"
    at = f"at {budget_text(budget)}{ref}"
    if p_star.rel == "<":
        return f"fails at every evaluated rate {at} (p* < {_pct(p_star.value)})"
    if p_star.rel == ">":
        return f"tolerates every evaluated rate {at} (p* > {_pct(p_star.value)})"
    return f"tolerates p ≤ {_pct(p_star.value)} {at}"


def analysis_title(a: dict) -> str:
    """The column title of one kind of analysis: ``'Tolerable p +1 point'`` (``'... over normal'``)."""
    return f"{TOLERABLE_FIELD.title} {budget_text(a['budget'])}" + ("" if a["reference"] == "own" else " over normal")
