"""Statistics across trained models and chips: cell summaries with bootstrap confidence intervals, paired
differences, rank groups, and censored flips-to-target summaries of adversarial trials.

Data model
----------
A *cell* (one defense under one attack) holds ``values[m][c]``: m = trained models (training seeds), c = chips
(the bit-error patterns, seeds shared by every model) or adversarial trials; values are fractions (0.05 = 5%).
Every model meets the same chips (a crossed design), so the matrix is rectangular. Inputs are plain lists of
numbers; outputs are dataclasses (``to_json()``) or dicts of plain floats, JSON-serializable. A malformed matrix
(ragged, empty, non-finite) raises :class:`ValueError`: the callers read values from validated records, so a bad
matrix here is a program bug, not bad input.

The bootstrap (one design for every function)
---------------------------------------------
The mean of a cell varies with both the training seed (model) and the chip. The two factors are *crossed*, not
nested: chip c is the same bit-error pattern for every model, so a chip that is hard for one model tends to be hard
for all. A nested bootstrap (models, then chips within each model independently) would treat every model's chips as
fresh draws and miss that shared chip effect. The crossed ("pigeonhole", Owen 2007) bootstrap resamples the model
rows and the chip columns independently with replacement -- one chip resample shared by all models of a replicate --
and takes the mean of the resampled sub-matrix. Its interval covers the uncertainty of the mean as an estimate over
new training seeds *and* new chips of the same protocol; it is mildly conservative for the model-by-chip
interaction, and, like any bootstrap over few models, it under-covers the model part when there are few models
(the bootstrap variance of a mean of M values is (M-1)/M of the usual estimate, and a percentile interval has no
t-correction): report the model count beside it. Measured on Gaussian data (model, chip and model x chip effects,
1000 repetitions): coverage 93% with 10 models x 30-50 chips, 89% with 5 models and 81% with 3 models when the
model sd (3.8 points) is comparable to the chip effects (5 + 5 points), 97% with 3 models that do not differ.
With one model the interval covers chips only (not training seeds); with one chip, models only.

Random draws, in this order, from ``numpy.random.default_rng(seed)``: for each model set (one per cell; two in a
paired comparison: a's, then b's) ``rng.integers(0, M, size=(n_boot, M))`` if M > 1 (nothing is drawn for M = 1),
then ``rng.integers(0, C, size=(n_boot, C))`` if C > 1. The 95% interval is the 2.5th and 97.5th percentile of the
replicates with NumPy's default (linear) interpolation. The numbers are a function of (values, seed, n_boot) for a
given NumPy version (NumPy does not promise identical Generator streams across releases). :func:`derive_seed`
turns a cell's identity string into a seed, so that each cell has its own stream and the numbers do not depend on
which other cells were computed.

Censored flips-to-target
------------------------
An adversarial trial that does not reach the evaluator's target within its flips is right-censored: its flips to
target are only known to exceed what it spent (``> n``). :func:`flips_summary` never turns a censored trial into
a number, and :func:`flips_rank_key` / :func:`rank_flips` rank by the share of trials that reach the target (fewer
= more robust), then by the median flips (more = more robust), on a common horizon so that a trial censored at n
never outranks one that reached the target only after more than n flips.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

__all__ = ["CellStats", "PairedDifference", "Resamples", "derive_seed", "summarize_cell", "paired_difference",
           "rank_groups", "adjacent_orderings", "flips_summary", "format_flips", "flips_rank_key", "rank_flips",
           "DEFAULT_N_BOOT"]

DEFAULT_N_BOOT = 2000
_PERCENTILES = (2.5, 97.5)


def derive_seed(identity: str) -> int:
    """A 64-bit seed from a stable hash of ``identity`` (the first 8 bytes of its UTF-8 SHA-256, big-endian):
    e.g. ``derive_seed("default|randbet:p=0.1|random_p0.01")``; the same string gives the same seed everywhere."""
    if not isinstance(identity, str):
        raise TypeError(f"derive_seed takes a string, got {type(identity).__name__}")
    return int.from_bytes(hashlib.sha256(identity.encode("utf-8")).digest()[:8], "big")


def _matrix(values, what: str = "values") -> np.ndarray:
    """``values[m][c]`` -> float64 [M, C]; ValueError if empty, ragged or not finite numbers."""
    if isinstance(values, np.ndarray):
        if values.ndim == 2 and values.size and values.dtype == np.float64:
            if not np.isfinite(values).all():
                raise ValueError(f"{what}: values must be finite (found NaN or inf)")
            return values
        rows = values.tolist() if values.ndim == 2 else None
    else:
        rows = values
    if not isinstance(rows, (list, tuple)) or not rows or not all(isinstance(r, (list, tuple)) for r in rows):
        raise ValueError(f"{what}: expected a non-empty list of per-model lists of values (models x chips)")
    n = len(rows[0])
    if n == 0 or any(len(r) != n for r in rows):
        raise ValueError(f"{what}: every model needs the same, non-zero number of chips; got "
                         f"{sorted({len(r) for r in rows})}")
    for r in rows:
        for x in r:
            if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
                raise ValueError(f"{what}: values must be numbers, got {x!r}")
    a = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: values must be finite (found NaN or inf)")
    return a


def _check_n_boot(n_boot) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    return n_boot


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (derive_seed makes one from a string), got {seed!r}")
    return seed


def _draw(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray | None:
    """Resampled indices [n_boot, n] (None for n = 1: nothing to resample, nothing drawn)."""
    return rng.integers(0, n, size=(n_boot, n)) if n > 1 else None


def _replicate_means(v: np.ndarray, models: np.ndarray | None, chips: np.ndarray | None, n_boot: int) -> np.ndarray:
    """Mean of each resampled sub-matrix ``v[models[b]][:, chips[b]]`` -> [n_boot] (the model average as a product
    with the draws' counts per model, the chip average as a gather)."""
    if models is not None:
        M = v.shape[0]
        counts = (models[:, :, None] == np.arange(M)).sum(axis=1, dtype=np.float64)
        col = counts @ v / M
    else:
        col = np.broadcast_to(v.mean(axis=0), (n_boot, v.shape[1]))
    if chips is None:
        return col.mean(axis=1)
    return np.take_along_axis(col, chips, axis=1).mean(axis=1)


def _ci(reps: np.ndarray) -> list[float]:
    lo, hi = np.percentile(reps, _PERCENTILES)
    return [float(lo), float(hi)]


@dataclass(frozen=True)
class Resamples:
    """One set of crossed bootstrap draws for a models x chips design, to apply the *same* resamples to several
    matrices of that design (e.g. one defense's RErr at several rates: :mod:`.energy`). ``models`` / ``chips``:
    int arrays [n_boot, M] / [n_boot, C], None where that factor has one level. Drawn as the module docstring says
    (models, then chips), so ``Resamples.draw(M, C, seed=s).means(v)`` equals the replicates of
    ``summarize_cell(v, seed=s)``."""

    n_models: int
    n_chips: int
    n_boot: int
    models: np.ndarray | None
    chips: np.ndarray | None

    @classmethod
    def draw(cls, n_models: int, n_chips: int, *, seed: int, n_boot: int = DEFAULT_N_BOOT) -> "Resamples":
        if n_models < 1 or n_chips < 1:
            raise ValueError(f"need at least one model and one chip, got {n_models} x {n_chips}")
        n_boot = _check_n_boot(n_boot)
        rng = np.random.default_rng(_check_seed(seed))
        models = _draw(rng, n_models, n_boot)
        return cls(n_models, n_chips, n_boot, models, _draw(rng, n_chips, n_boot))

    def means(self, values) -> np.ndarray:
        """The replicates' means of a [M, C] matrix (float64 [n_boot])."""
        v = values if isinstance(values, np.ndarray) and values.dtype == np.float64 else _matrix(values)
        if v.shape != (self.n_models, self.n_chips):
            raise ValueError(f"matrix of shape {v.shape} does not match the resamples' {self.n_models} models x "
                             f"{self.n_chips} chips")
        return _replicate_means(v, self.models, self.chips, self.n_boot)

    def model_means(self, per_model) -> np.ndarray:
        """The replicates' means of a per-model quantity (e.g. each model's clean error), resampled with the same
        model draws (float64 [n_boot])."""
        x = np.asarray(per_model, dtype=np.float64)
        if x.shape != (self.n_models,) or not np.isfinite(x).all():
            raise ValueError(f"expected {self.n_models} finite per-model values, got {per_model!r}"[:200])
        if self.models is None:
            return np.full(self.n_boot, float(x.mean()))
        return x[self.models].mean(axis=1)


@dataclass
class CellStats:
    """Summary of one cell (fractions).

    ``mean``: mean over models and chips (= the mean of ``per_model``); ``ci95``: [low, high] 95% crossed-bootstrap
    percentile interval of the mean (the point twice with a single value); ``per_model``: each model's mean over
    chips, in input order; ``model_sd``: sd of ``per_model`` (ddof 1; None with one model); ``chip_sd``: pooled
    within-model sd over chips, sqrt(sum (v[m][c] - per_model[m])^2 / (M (C - 1))) (None with one chip);
    ``n_models``, ``n_chips``, ``n_boot``, ``seed``: what the interval was computed from."""

    mean: float
    ci95: list
    per_model: list
    model_sd: float | None
    chip_sd: float | None
    n_models: int
    n_chips: int
    n_boot: int
    seed: int

    def to_json(self) -> dict:
        return asdict(self)


def summarize_cell(values, *, seed: int, n_boot: int = DEFAULT_N_BOOT) -> CellStats:
    """Mean, per-model means, model and chip spread and the 95% crossed-bootstrap interval of ``values[m][c]``
    (see the module docstring for the design and the draws). Vectorized: the replicates are computed as one
    gather, about n_boot x M x C operations."""
    v = _matrix(values)
    n_boot, seed = _check_n_boot(n_boot), _check_seed(seed)
    M, C = v.shape
    per_model = v.mean(axis=1)
    mean = float(per_model.mean())
    model_sd = float(np.std(per_model, ddof=1)) if M > 1 else None
    chip_sd = float(math.sqrt(((v - per_model[:, None]) ** 2).sum() / (M * (C - 1)))) if C > 1 else None
    if M == 1 and C == 1:
        ci = [mean, mean]
    else:
        ci = _ci(Resamples.draw(M, C, seed=seed, n_boot=n_boot).means(v))
    return CellStats(mean, ci, [float(x) for x in per_model], model_sd, chip_sd, M, C, n_boot, seed)


@dataclass
class PairedDifference:
    """mean(a) - mean(b) of two cells measured on the same chips, with its 95% bootstrap interval.

    ``significant``: the interval excludes 0 (``ci95[0] > 0`` or ``ci95[1] < 0``); never true when nothing could be
    resampled (one model each and one chip: a difference of single values)."""

    difference: float
    ci95: list
    significant: bool
    n_boot: int
    seed: int

    def to_json(self) -> dict:
        return asdict(self)


def paired_difference(a, b, *, seed: int, n_boot: int = DEFAULT_N_BOOT) -> PairedDifference:
    """mean(a) - mean(b) for ``a[m][c]`` and ``b[m'][c]``: two cells on the *same* chips (column c is the same
    bit-error pattern in both; the model counts may differ). Each replicate resamples a's models and b's models
    independently (different trained models) and the chips once, shared by both (the pairing), and takes the
    difference of the two sub-matrix means; draws in the order a's models, b's models, chips. The caller ensures
    that the columns are the same chips in the same order (equal counts are checked)."""
    va, vb = _matrix(a, "a"), _matrix(b, "b")
    n_boot, seed = _check_n_boot(n_boot), _check_seed(seed)
    if va.shape[1] != vb.shape[1]:
        raise ValueError(f"a paired difference needs the same chips: a has {va.shape[1]}, b has {vb.shape[1]}")
    diff = float(va.mean(axis=1).mean() - vb.mean(axis=1).mean())
    (Ma, C), Mb = va.shape, vb.shape[0]
    if Ma == 1 and Mb == 1 and C == 1:
        return PairedDifference(diff, [diff, diff], False, n_boot, seed)
    rng = np.random.default_rng(seed)
    ia, ib = _draw(rng, Ma, n_boot), _draw(rng, Mb, n_boot)
    chips = _draw(rng, C, n_boot)
    reps = _replicate_means(va, ia, chips, n_boot) - _replicate_means(vb, ib, chips, n_boot)
    ci = _ci(reps)
    return PairedDifference(diff, ci, bool(ci[0] > 0 or ci[1] < 0), n_boot, seed)


# ---------------------------------------------------------------------------------------------------------- ranks
def _cells(cells) -> list[dict]:
    """Validate named cells: ``{"name": str, "values": [[...]]}`` (per-chip data) or ``{"name": str, "mean": x}``
    (a mean alone, e.g. a row copied from a paper); both: the mean must match the values'."""
    out, seen = [], set()
    for i, c in enumerate(cells):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise ValueError(f"cell {i}: expected a dict with a 'name' string and 'values' or 'mean'")
        name = c["name"]
        if name in seen:
            raise ValueError(f"cell names must be unique; {name!r} appears twice")
        seen.add(name)
        v = c.get("values")
        if v is not None:
            m = _matrix(v, f"cell {name!r}")
            mean = float(m.mean(axis=1).mean())
            if c.get("mean") is not None and not math.isclose(float(c["mean"]), mean, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(f"cell {name!r}: 'mean' {c['mean']!r} differs from its values' mean {mean!r}")
        else:
            mu = c.get("mean")
            if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
                raise ValueError(f"cell {name!r}: needs 'values' (models x chips) or a finite 'mean'")
            m, mean = None, float(mu)
        out.append({"name": name, "values": m, "mean": mean})
    return out


def _pair_seed(seed: int, x: str, y: str) -> int:
    return derive_seed(json.dumps([seed, *sorted((x, y))]))


def _compare(p: dict, q: dict, seed: int, n_boot: int) -> tuple[str, float, list | None, bool | None]:
    """(basis, mean(p) - mean(q), CI or None, significant or None): 'paired' when both have per-chip data on the
    same number of chips, else 'mean' (no interval). The draws depend on the unordered pair only."""
    if p["values"] is None or q["values"] is None or p["values"].shape[1] != q["values"].shape[1]:
        return "mean", p["mean"] - q["mean"], None, None
    first, second = sorted((p, q), key=lambda c: c["name"])
    d = paired_difference(first["values"], second["values"], seed=_pair_seed(seed, p["name"], q["name"]),
                          n_boot=n_boot)
    if first is p:
        return "paired", d.difference, d.ci95, d.significant
    return "paired", -d.difference, [-d.ci95[1], -d.ci95[0]], d.significant


def rank_groups(cells, *, lower_is_better: bool = True, seed: int, n_boot: int = DEFAULT_N_BOOT) -> list[dict]:
    """Rank groups: rank of a cell = 1 + the number of cells *significantly* better than it.

    ``cells``: ``[{"name", "values": [[...]]}]`` and/or ``[{"name", "mean": x}]``. Two cells with per-chip data on
    the same number of chips are compared by :func:`paired_difference` (seed derived from ``seed`` and the two
    names, so a pair's numbers do not depend on the list's order); one is better when the interval excludes 0 in
    its favour, and cells whose interval includes 0 tie. A cell without per-chip data (or on other chips) is
    compared by its mean alone: a strictly better mean counts as better, with no significance claimed; its
    result says so in ``compared_by_mean``.

    Returns, in input order, ``{"name", "mean", "rank", "better": [names significantly better than it],
    "compared_by_mean": [names it was compared with by mean alone]}``. Ranks need not be consecutive (1, 1, 3)
    and significance is not transitive, so a rank is "how many are shown to beat it", not a partition."""
    cs = _cells(cells)
    n_boot, seed = _check_n_boot(n_boot), _check_seed(seed)
    sign = 1.0 if lower_is_better else -1.0
    better = {c["name"]: [] for c in cs}
    by_mean = {c["name"]: [] for c in cs}
    for i, p in enumerate(cs):
        for q in cs[i + 1:]:
            basis, d, ci, sig = _compare(p, q, seed, n_boot)
            if basis == "mean":
                by_mean[p["name"]].append(q["name"])
                by_mean[q["name"]].append(p["name"])
                p_better, q_better = sign * d < 0, sign * d > 0
            else:
                p_better = bool(sig) and sign * ci[1] < 0
                q_better = bool(sig) and sign * ci[0] > 0
            if p_better:
                better[q["name"]].append(p["name"])
            if q_better:
                better[p["name"]].append(q["name"])
    return [{"name": c["name"], "mean": c["mean"], "rank": 1 + len(better[c["name"]]), "better": better[c["name"]],
             "compared_by_mean": by_mean[c["name"]]} for c in cs]


def adjacent_orderings(cells, *, lower_is_better: bool = True, seed: int,
                       n_boot: int = DEFAULT_N_BOOT) -> list[dict]:
    """For a table sorted by mean (best first; equal means keep input order): is each neighbouring ordering
    significant? One dict per neighbouring pair, top to bottom: ``{"a", "b" (a above b), "difference":
    mean(a) - mean(b), "ci95", "significant", "basis"}``; ``basis`` 'paired' (the same comparison and draws as
    :func:`rank_groups`) or 'mean' (a cell without per-chip data: ``ci95`` and ``significant`` None)."""
    cs = _cells(cells)
    n_boot, seed = _check_n_boot(n_boot), _check_seed(seed)
    order = sorted(cs, key=lambda c: c["mean"] if lower_is_better else -c["mean"])
    out = []
    for p, q in zip(order, order[1:]):
        basis, d, ci, sig = _compare(p, q, seed, n_boot)
        out.append({"a": p["name"], "b": q["name"], "difference": d, "ci95": ci, "significant": sig,
                    "basis": basis})
    return out


# ------------------------------------------------------------------------------------- censored flips-to-target
def _flips_input(flips_to_target, budget) -> tuple[list, list]:
    f = list(flips_to_target)
    if isinstance(budget, (list, tuple)):
        b = list(budget)
        if len(b) != len(f):
            raise ValueError(f"budget: one value per trial expected ({len(f)}), got {len(b)}")
    else:
        b = [budget] * len(f)
    for x in b:
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            raise ValueError(f"budget: flips are integers >= 0, got {x!r}")
    for x, n in zip(f, b):
        if x is None:
            continue
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            raise ValueError(f"flips_to_target: integers >= 0 or None (not reached), got {x!r}")
        if x > n:
            raise ValueError(f"flips_to_target {x} exceeds the trial's budget {n}")
    return f, b


def _own_horizon(f: list, b: list) -> int | None:
    """The flips up to which every trial's outcome is known: the smallest budget of a censored trial (else the
    largest budget: every trial reached the target)."""
    cens = [n for x, n in zip(f, b) if x is None]
    return min(cens) if cens else (max(b) if b else None)


def flips_summary(flips_to_target, budget, *, horizon: int | None = None) -> dict:
    """Flips-to-target over adversarial trials, censoring shown explicitly.

    ``flips_to_target[t]``: flips at which trial t first reached the evaluator's target, or None: not reached
    within ``budget`` (an int for every trial, or one per trial: the flips the trial spent when it stopped
    without reaching the target, e.g. an attacker-side stop). Such a trial is right-censored: "> n".

    The summary holds within a *horizon* H: the smallest budget of a censored trial (beyond it the order of the
    trials is unknown), or a smaller common ``horizon`` given to compare cells (:func:`rank_flips`); a trial that
    reached the target after more than H flips counts as censored at H. With one budget for all trials, H is that
    budget. Returns ``{"trials", "reached" (within H), "horizon", "median", "median_censored", "min", "max"}``:

    * ``median`` over *all* trials, censored ones as "> H" (the usual median: the middle value, or the mean of the
      two middle values). If it falls on a censored trial it is not a number: ``median_censored`` is true and
      ``median`` is the lower bound, H (or (x + H) / 2 when only the upper of two middle values is censored);
    * ``min`` / ``max`` over the trials that reached the target (None if none did).
    """
    f, b = _flips_input(flips_to_target, budget)
    own = _own_horizon(f, b)
    if horizon is not None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0:
            raise ValueError(f"horizon: an integer >= 0, got {horizon!r}")
        if own is not None and horizon > own:
            raise ValueError(f"horizon {horizon} exceeds what the trials show (known up to {own} flips)")
    H = own if horizon is None else horizon
    hit = sorted(x for x in f if x is not None and x <= H)
    T = len(f)
    out = {"trials": T, "reached": len(hit), "horizon": H, "median": None, "median_censored": False,
           "min": float(hit[0]) if hit else None, "max": float(hit[-1]) if hit else None}
    if not T:
        return out
    vals = hit + [math.inf] * (T - len(hit))        # censored trials sort last: each is "> H"
    lo, hi = vals[(T - 1) // 2], vals[T // 2]
    if hi == math.inf:
        out["median"], out["median_censored"] = (float(H) if lo == math.inf else (lo + H) / 2), True
    else:
        out["median"] = (lo + hi) / 2
    return out


def format_flips(s: dict) -> str:
    """``'20 [18, 29] (5/5)'``: median [min, max] (reached/trials); censored values as ``'> n'``:
    ``'> 100 (0/5)'``, ``'35 [22, > 50] (3/5)'`` (the range's upper end is censored when some trial did not reach
    the target within the horizon); one trial: ``'20 (1/1)'``; no trials: ``'–'``."""
    T, k = s["trials"], s["reached"]
    if not T:
        return "–"
    med = f"> {s['median']:g}" if s["median_censored"] else f"{s['median']:g}"
    rng = ""
    if T > 1 and k:
        top = f"{s['max']:g}" if k == T else f"> {s['horizon']:g}"
        rng = f" [{s['min']:g}, {top}]"
    return f"{med}{rng} ({k}/{T})"


def flips_rank_key(s: dict) -> tuple:
    """Sort key (ascending = more robust first) of a :func:`flips_summary`: the share of trials that reached the
    target within the horizon (fewer = more robust, compared exactly), then the median flips (more = more robust;
    a censored median "> x" ranks above an exact x). Compare summaries on a common horizon (:func:`rank_flips`):
    on different horizons a trial censored early would outrank one reached later. No trials: sorts last."""
    if not s["trials"]:
        return (Fraction(2), 0.0, 0)
    return (Fraction(s["reached"], s["trials"]), -s["median"], 0 if s["median_censored"] else 1)


def rank_flips(cells) -> list[dict]:
    """Rank adversarial cells ``[{"name", "flips_to_target", "budget"}]`` (as :func:`flips_summary` takes them) on
    their common horizon, the smallest of their horizons: rank = 1 + the number of cells with a strictly better
    :func:`flips_rank_key` (equal keys tie). No significance test (few trials): the rank orders, it does not
    separate. Returns, in input order, ``{"name", "rank", "summary"}`` (the summary on the common horizon)."""
    named = []
    for i, c in enumerate(cells):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or "flips_to_target" not in c \
                or "budget" not in c:
            raise ValueError(f"cell {i}: expected a dict with 'name', 'flips_to_target' and 'budget'")
        f, b = _flips_input(c["flips_to_target"], c["budget"])
        named.append((c["name"], f, b))
    horizons = [h for _, f, b in named if (h := _own_horizon(f, b)) is not None]
    H = min(horizons) if horizons else None
    sums = [(n, flips_summary(f, b, horizon=H)) for n, f, b in named]
    keys = [flips_rank_key(s) for _, s in sums]
    return [{"name": n, "rank": 1 + sum(k < key for k in keys), "summary": s} for (n, s), key in zip(sums, keys)]
