"""configs.stats against straightforward loop implementations written here (the same documented draws), exact
arithmetic for the point statistics, and coverage on synthetic data."""
import hashlib
import json
import math
import random
import statistics
from fractions import Fraction

import numpy as np
import pytest

from bitbench.configs.stats import (CellStats, Resamples, adjacent_orderings, derive_seed, flips_rank_key,
                                    flips_summary, format_flips, paired_difference, rank_groups, rank_flips,
                                    summarize_cell)


# ------------------------------------------------------------------------------------ references (plain loops)
def ref_percentile(xs, q):
    """NumPy's default (linear) percentile, by hand."""
    s = sorted(xs)
    pos = q / 100 * (len(s) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(s) - 1)
    return s[i] + (pos - i) * (s[j] - s[i])


def ref_draws(rng, n, n_boot):
    """The documented draw: rng.integers(0, n, size=(n_boot, n)) if n > 1, else every replicate takes index 0."""
    if n == 1:
        return [[0] for _ in range(n_boot)]
    return rng.integers(0, n, size=(n_boot, n)).tolist()


def ref_sub_mean(v, rows, cols):
    return math.fsum(v[i][j] for i in rows for j in cols) / (len(rows) * len(cols))


def ref_summary(v, seed, n_boot):
    M, C = len(v), len(v[0])
    per_model = [Fraction(sum(Fraction(x) for x in r), C) for r in v]
    mean = sum(per_model) / M
    rng = np.random.default_rng(seed)
    mi, ci = ref_draws(rng, M, n_boot), ref_draws(rng, C, n_boot)
    reps = [ref_sub_mean(v, mi[b], ci[b]) for b in range(n_boot)]
    ss = sum((Fraction(x) - per_model[i]) ** 2 for i, r in enumerate(v) for x in r)
    return {"mean": mean, "per_model": per_model, "ci": [ref_percentile(reps, 2.5), ref_percentile(reps, 97.5)],
            "model_sd": statistics.stdev([float(p) for p in per_model]) if M > 1 else None,
            "chip_sd": math.sqrt(ss / (M * (C - 1))) if C > 1 else None}


def ref_paired(a, b, seed, n_boot):
    rng = np.random.default_rng(seed)
    ia, ib = ref_draws(rng, len(a), n_boot), ref_draws(rng, len(b), n_boot)
    ch = ref_draws(rng, len(a[0]), n_boot)
    reps = [ref_sub_mean(a, ia[k], ch[k]) - ref_sub_mean(b, ib[k], ch[k]) for k in range(n_boot)]
    return [ref_percentile(reps, 2.5), ref_percentile(reps, 97.5)]


def rerr_matrix(rng, M, C, mean, sa, sb, se, n_eval=1000):
    """RErr-like fractions k / n_eval with model, chip and interaction effects."""
    v = mean + sa * rng.standard_normal((M, 1)) + sb * rng.standard_normal((1, C)) + se * rng.standard_normal((M, C))
    return (np.round(np.clip(v, 0, 1) * n_eval) / n_eval).tolist()


# --------------------------------------------------------------------------------------------------- seeds
def test_derive_seed_is_the_documented_stable_hash():
    for s in ("default|randbet:p=0.1|random_p0.01", "", "ü"):
        assert derive_seed(s) == int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big")
    assert derive_seed("a") != derive_seed("b")
    with pytest.raises(TypeError):
        derive_seed(3)


# ------------------------------------------------------------------------------------------ summarize_cell
@pytest.mark.parametrize("M,C", [(3, 50), (1, 50), (5, 1), (2, 2), (4, 7)])
def test_summarize_cell_matches_the_loop_reference(M, C):
    v = rerr_matrix(np.random.default_rng(M * 100 + C), M, C, 0.1, 0.02, 0.03, 0.02)
    s = summarize_cell(v, seed=42, n_boot=300)
    r = ref_summary(v, 42, 300)
    assert s.mean == pytest.approx(float(r["mean"]), abs=1e-15)
    assert s.per_model == pytest.approx([float(p) for p in r["per_model"]], abs=1e-15)
    assert s.ci95 == pytest.approx(r["ci"], abs=1e-12)
    assert (s.model_sd is None) == (r["model_sd"] is None) and (s.chip_sd is None) == (r["chip_sd"] is None)
    if M > 1:
        assert s.model_sd == pytest.approx(r["model_sd"], rel=1e-12)
    if C > 1:
        assert s.chip_sd == pytest.approx(r["chip_sd"], rel=1e-12)
    assert (s.n_models, s.n_chips, s.n_boot, s.seed) == (M, C, 300, 42)
    assert s.ci95[0] <= s.mean <= s.ci95[1]
    json.dumps(s.to_json())


def test_summarize_cell_single_value_and_reproducibility():
    s = summarize_cell([[0.25]], seed=1)
    assert (s.mean, s.ci95, s.model_sd, s.chip_sd) == (0.25, [0.25, 0.25], None, None)
    v = rerr_matrix(np.random.default_rng(0), 3, 20, 0.2, 0.02, 0.02, 0.02)
    a, b, c = summarize_cell(v, seed=7), summarize_cell(v, seed=7), summarize_cell(v, seed=8)
    assert a == b and a.ci95 != c.ci95
    assert isinstance(a, CellStats) and all(type(x) is float for x in a.ci95 + a.per_model)


def test_resamples_are_the_cells_replicates():
    """Resamples.draw(M, C, seed) applies the draws summarize_cell makes (energy's curves rely on it)."""
    v = rerr_matrix(np.random.default_rng(3), 3, 10, 0.2, 0.02, 0.02, 0.02)
    res = Resamples.draw(3, 10, seed=5, n_boot=400)
    lo, hi = np.percentile(res.means(v), [2.5, 97.5])
    assert summarize_cell(v, seed=5, n_boot=400).ci95 == [lo, hi]
    clean = [0.01, 0.02, 0.04]
    want = [sum(clean[i] for i in row) / 3 for row in res.models.tolist()]
    assert res.model_means(clean) == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize("bad", [[], [[]], [[0.1, 0.2], [0.1]], [[0.1, float("nan")]], [[True, 0.1]], [[0.1, "x"]],
                                 [0.1, 0.2], [[float("inf")]]])
def test_malformed_matrices_are_refused(bad):
    with pytest.raises(ValueError):
        summarize_cell(bad, seed=0)


def test_arrays_are_accepted_and_checked_like_lists():
    v = np.random.default_rng(0).random((3, 5))
    assert summarize_cell(v, seed=1) == summarize_cell(v.tolist(), seed=1)
    with pytest.raises(ValueError, match="finite"):
        summarize_cell(np.array([[0.1, np.nan]]), seed=0)
    with pytest.raises(ValueError):
        summarize_cell(np.zeros((0, 3)), seed=0)


def test_bad_seed_or_n_boot():
    with pytest.raises(ValueError, match="seed"):
        summarize_cell([[0.1, 0.2]], seed=-1)
    with pytest.raises(ValueError, match="n_boot"):
        summarize_cell([[0.1, 0.2]], seed=0, n_boot=0)


def _coverage(M, C, sa, sb, se, reps, n_boot, seed):
    rng = np.random.default_rng(seed)
    hit = 0
    for r in range(reps):
        v = 0.3 + sa * rng.standard_normal((M, 1)) + sb * rng.standard_normal((1, C)) \
            + se * rng.standard_normal((M, C))
        lo, hi = summarize_cell(v.tolist(), seed=r, n_boot=n_boot).ci95
        hit += lo <= 0.3 <= hi
    return hit / reps


def test_ci_covers_a_known_mean_about_95_percent():
    """Crossed Gaussian data (model, chip and interaction effects): the interval covers the true mean in about
    95% of repetitions (400 repetitions: binomial sd 1.1 points; the crossed bootstrap is mildly conservative for
    the interaction and slightly liberal for 10 models)."""
    cov = _coverage(10, 30, 0.02, 0.02, 0.02, reps=400, n_boot=500, seed=11)
    assert 0.90 <= cov <= 0.985, cov


def test_ci_with_one_model_covers_chips():
    cov = _coverage(1, 40, 0.0, 0.02, 0.02, reps=400, n_boot=500, seed=12)
    assert 0.90 <= cov <= 0.985, cov


def test_ci_ignoring_the_shared_chips_would_under_cover():
    """Why crossed: with a strong chip effect shared by every model, resampling models alone (chips fixed) misses
    it. The crossed interval covers; the models-only interval (the one-chip rule applied to chip means) does not."""
    rng = np.random.default_rng(13)
    crossed = models_only = 0
    for r in range(300):
        v = 0.3 + 0.01 * rng.standard_normal((8, 1)) + 0.05 * rng.standard_normal((1, 10))
        lo, hi = summarize_cell(v.tolist(), seed=r, n_boot=400).ci95
        crossed += lo <= 0.3 <= hi
        lo2, hi2 = summarize_cell(v.mean(axis=1, keepdims=True).tolist(), seed=r, n_boot=400).ci95
        models_only += lo2 <= 0.3 <= hi2
    assert crossed / 300 >= 0.85 and models_only / 300 <= 0.5, (crossed, models_only)


# ------------------------------------------------------------------------------------------ paired difference
def test_paired_difference_matches_the_loop_reference():
    rng = np.random.default_rng(21)
    a = rerr_matrix(rng, 3, 25, 0.10, 0.01, 0.03, 0.01)
    b = rerr_matrix(rng, 5, 25, 0.12, 0.01, 0.03, 0.01)
    d = paired_difference(a, b, seed=9, n_boot=300)
    mean = lambda m: sum(Fraction(sum(Fraction(x) for x in r), len(r)) for r in m) / len(m)
    assert d.difference == pytest.approx(float(mean(a) - mean(b)), abs=1e-15)
    assert d.ci95 == pytest.approx(ref_paired(a, b, 9, 300), abs=1e-12)
    assert d.significant == (d.ci95[0] > 0 or d.ci95[1] < 0)
    json.dumps(d.to_json())


def test_paired_difference_one_model_each_and_degenerate():
    a, b = [[0.1, 0.3, 0.2]], [[0.2, 0.4, 0.3]]
    d = paired_difference(a, b, seed=1, n_boot=200)
    assert d.difference == pytest.approx(-0.1) and d.ci95 == pytest.approx([-0.1, -0.1])
    assert d.ci95 == pytest.approx(ref_paired(a, b, 1, 200), abs=1e-12)
    one = paired_difference([[0.1]], [[0.3]], seed=1)
    assert one.ci95 == [one.difference, one.difference] and not one.significant
    with pytest.raises(ValueError, match="same chips"):
        paired_difference([[0.1, 0.2]], [[0.1, 0.2, 0.3]], seed=0)


def test_pairing_removes_the_shared_chip_effect():
    """Two defenses on the same chips with a large common chip effect: the paired interval is far narrower than
    the two cells' intervals side by side, and it separates a small real difference."""
    rng = np.random.default_rng(22)
    chip = 0.08 * rng.standard_normal((1, 50))
    a = (0.30 + chip + 0.005 * rng.standard_normal((3, 50))).tolist()
    b = (0.31 + chip + 0.005 * rng.standard_normal((3, 50))).tolist()
    d = paired_difference(a, b, seed=3)
    sa, sb = summarize_cell(a, seed=3), summarize_cell(b, seed=3)
    assert d.significant and d.ci95[1] < 0
    assert d.ci95[1] - d.ci95[0] < 0.2 * (sa.ci95[1] - sa.ci95[0])
    assert sa.ci95[1] > sb.ci95[0]          # the separate intervals overlap


def test_paired_difference_covers_a_known_difference():
    rng = np.random.default_rng(23)
    hit = 0
    for r in range(300):
        chip = 0.03 * rng.standard_normal((1, 30))
        a = 0.2 + 0.01 * rng.standard_normal((8, 1)) + chip + 0.01 * rng.standard_normal((8, 30))
        b = 0.25 + 0.01 * rng.standard_normal((8, 1)) + chip + 0.01 * rng.standard_normal((8, 30))
        lo, hi = paired_difference(a.tolist(), b.tolist(), seed=r, n_boot=400).ci95
        hit += lo <= -0.05 <= hi
    assert 0.88 <= hit / 300 <= 0.99, hit


# ------------------------------------------------------------------------------------------------------- ranks
def _table():
    rng = np.random.default_rng(31)
    chip = 0.02 * rng.standard_normal((1, 40))

    def cell(mu):
        return (mu + chip + 0.003 * rng.standard_normal((3, 1)) + 0.003 * rng.standard_normal((3, 40))).tolist()

    return [{"name": "b", "values": cell(0.10)}, {"name": "a", "values": cell(0.05)},
            {"name": "c", "values": cell(0.1003)}, {"name": "d", "values": cell(0.30)},
            {"name": "paper", "mean": 0.08}]


def test_rank_groups_ties_and_mean_only_rows():
    out = {r["name"]: r for r in rank_groups(_table(), seed=5)}
    assert out["a"]["rank"] == 1 and out["a"]["better"] == []
    assert out["paper"]["rank"] == 2                          # only a's mean is better
    assert out["b"]["rank"] == out["c"]["rank"] == 3          # b and c tie (CI includes 0); a and paper beat them
    assert sorted(out["b"]["better"]) == ["a", "paper"] and sorted(out["c"]["better"]) == ["a", "paper"]
    assert out["d"]["rank"] == 5
    assert sorted(out["paper"]["compared_by_mean"]) == ["a", "b", "c", "d"]
    assert out["a"]["compared_by_mean"] == ["paper"]
    json.dumps(list(out.values()))


def test_rank_groups_agrees_with_paired_difference_and_ignores_order():
    cells = _table()[:4]
    out = rank_groups(cells, seed=5)
    vals = {c["name"]: c["values"] for c in cells}
    for r in out:
        want = []
        for q in cells:
            if q["name"] == r["name"]:
                continue
            x, y = sorted((q["name"], r["name"]))
            d = paired_difference(vals[x], vals[y], seed=derive_seed(json.dumps([5, x, y])))
            diff_q_minus_r = d.ci95 if x == q["name"] else [-d.ci95[1], -d.ci95[0]]
            if diff_q_minus_r[1] < 0:
                want.append(q["name"])
        assert sorted(r["better"]) == sorted(want)
        assert r["rank"] == 1 + len(want)
    shuffled = list(reversed(cells))
    again = {r["name"]: r["rank"] for r in rank_groups(shuffled, seed=5)}
    assert again == {r["name"]: r["rank"] for r in out}


def test_rank_groups_higher_is_better():
    out = {r["name"]: r["rank"] for r in rank_groups(_table(), lower_is_better=False, seed=5)}
    assert out["d"] == 1 and out["a"] == 5


def test_adjacent_orderings():
    adj = adjacent_orderings(_table(), seed=5)
    assert [(x["a"], x["b"]) for x in adj] == [("a", "paper"), ("paper", "b"), ("b", "c"), ("c", "d")]
    assert adj[0]["basis"] == "mean" and adj[0]["significant"] is None and adj[0]["ci95"] is None
    assert adj[2]["basis"] == "paired" and adj[2]["significant"] is False
    assert adj[3]["significant"] is True and adj[3]["ci95"][1] < 0
    assert adj[3]["difference"] == pytest.approx(np.mean(_table()[2]["values"]) - np.mean(_table()[3]["values"]))


def test_rank_cells_are_validated():
    with pytest.raises(ValueError, match="unique"):
        rank_groups([{"name": "a", "mean": 0.1}, {"name": "a", "mean": 0.2}], seed=0)
    with pytest.raises(ValueError, match="values"):
        rank_groups([{"name": "a"}], seed=0)
    with pytest.raises(ValueError, match="differs"):
        rank_groups([{"name": "a", "values": [[0.1, 0.2]], "mean": 0.9}], seed=0)


# ------------------------------------------------------------------------------------- censored flips-to-target
def test_format_flips_examples():
    assert format_flips(flips_summary([18, 20, 29, 19, 22], 50)) == "20 [18, 29] (5/5)"
    assert format_flips(flips_summary([None] * 5, 100)) == "> 100 (0/5)"
    assert format_flips(flips_summary([22, 35, None, 30, None], 50)) == "35 [22, > 50] (3/5)"
    assert format_flips(flips_summary([20], 50)) == "20 (1/1)"
    assert format_flips(flips_summary([None], 50)) == "> 50 (0/1)"
    assert format_flips(flips_summary([], 50)) == "–"


def test_median_never_a_number_on_a_censored_trial():
    s = flips_summary([10, None, 30, None, None], 100)
    assert s["median_censored"] and s["median"] == 100 and format_flips(s) == "> 100 [10, > 100] (2/5)"
    even = flips_summary([10, 20, None, None], 100)           # middle values 20 and "> 100": median > 60
    assert even["median_censored"] and even["median"] == 60
    exact = flips_summary([10, 20, 30, None], 100)
    assert not exact["median_censored"] and exact["median"] == 25
    assert (exact["min"], exact["max"], exact["reached"], exact["trials"]) == (10, 30, 3, 4)


def test_reference_median_loop():
    """The median against a loop that carries each value as an interval [lo, hi] (censored: [H, inf])."""
    rng = random.Random(3)
    for _ in range(300):
        T, n = rng.randint(1, 8), rng.randint(1, 60)
        f = [None if rng.random() < 0.3 else rng.randint(0, n) for _ in range(T)]
        s = flips_summary(f, n)
        lows = sorted(n if x is None else x for x in f)
        highs = sorted(math.inf if x is None else x for x in f)
        lo = (lows[(T - 1) // 2] + lows[T // 2]) / 2
        hi = (highs[(T - 1) // 2] + highs[T // 2]) / 2
        assert s["median"] == lo
        assert s["median_censored"] == (hi == math.inf)
        assert s["reached"] == sum(x is not None for x in f)


def test_per_trial_budgets_set_the_horizon():
    """A trial stopped early (attacker-side stop after 12 flips, target not reached) is censored at 12: the
    others' flips beyond 12 are unknown relative to it, so the summary holds within 12 flips."""
    s = flips_summary([18, None, 20, 25, 29], [50, 12, 50, 50, 50])
    assert s["horizon"] == 12 and s["reached"] == 0 and format_flips(s) == "> 12 (0/5)"
    full = flips_summary([18, 11, 20, 25, 29], [50, 12, 50, 50, 50])
    assert full["horizon"] == 50 and full["reached"] == 5
    with pytest.raises(ValueError, match="exceeds"):
        flips_summary([60], 50)
    with pytest.raises(ValueError, match="horizon"):
        flips_summary([None], 20, horizon=30)


def test_no_censored_trial_outranks_one_reached_later():
    """The issue's failure: a trial that stopped short (censored at n) ranked above every reached trial. Now a
    censored trial never ranks as more robust than one that reached the target after more flips, whatever the
    budgets; fewer trials reaching the target ranks as more robust only on a common horizon."""
    rng = random.Random(7)
    for _ in range(400):
        c, f = rng.randint(1, 50), rng.randint(1, 100)
        budget_b = max(f, rng.randint(1, 100))
        ranks = {r["name"]: r["rank"] for r in rank_flips([{"name": "censored", "flips_to_target": [None],
                                                            "budget": c},
                                                           {"name": "reached", "flips_to_target": [f],
                                                            "budget": budget_b}])}
        if f > c:
            assert ranks["censored"] >= ranks["reached"], (c, f)     # never above (here: a tie on horizon c)
        else:
            assert ranks["censored"] < ranks["reached"], (c, f)      # it resisted more than f flips
    # multi-trial cells: the share within the common horizon decides first, then the median
    out = {r["name"]: r for r in rank_flips([
        {"name": "stopped_early", "flips_to_target": [None, None, None, None, 20], "budget": [5, 5, 5, 5, 50]},
        {"name": "all_reached", "flips_to_target": [18, 20, 29, 19, 22], "budget": 50},
        {"name": "robust", "flips_to_target": [None] * 5, "budget": 50}])}
    assert {n: r["summary"]["horizon"] for n, r in out.items()} == {n: 5 for n in out}
    assert len({r["rank"] for r in out.values()}) == 1                # within 5 flips nobody was reached: a tie
    out = {r["name"]: r["rank"] for r in rank_flips([
        {"name": "all_reached", "flips_to_target": [18, 20, 29, 19, 22], "budget": 50},
        {"name": "three", "flips_to_target": [22, 35, None, 30, None], "budget": 50},
        {"name": "robust", "flips_to_target": [None] * 5, "budget": 50},
        {"name": "early", "flips_to_target": [3, 4, 5, 6, 7], "budget": 50}])}
    assert out == {"robust": 1, "three": 2, "all_reached": 3, "early": 4}


def test_flips_rank_key_order():
    cases = ([None] * 5, [10, None, None, None, None], [40, 45, None, None, None], [10, 20, 30, None, None],
             [10, 20, 25, None, None], [30, 30, 30, 30, 30], [10, 20, 29, 30, 40])
    keys = [flips_rank_key(flips_summary(f, 50)) for f in cases]        # most robust first
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    # same share and same median tie (no further tie-breaker is claimed)
    assert flips_rank_key(flips_summary([40, 45, None, None, None], 50)) == \
        flips_rank_key(flips_summary([1, 2, None, None, None], 50))
    assert flips_rank_key(flips_summary([], 50)) > keys[-1]
    # a censored median "> x" ranks above an exact x
    assert flips_rank_key({"trials": 2, "reached": 1, "median": 30.0, "median_censored": True}) < \
        flips_rank_key({"trials": 2, "reached": 1, "median": 30.0, "median_censored": False})
