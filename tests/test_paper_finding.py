"""The paper's central finding on the embedded suite: Normal >> RQuant > Clipping >= RandBET under random bit errors.

Reduced for CI (5 epochs, 10 shared patterns, three rates); the full-size suite runs by hand with
``python -m benchmark suite default``. Each pair is compared where the suite's sweep separates it (on MNIST-size
models: Normal vs RQuant at 0.5-5%, RQuant vs Clipping at 5-20%, Clipping vs RandBET at 15-20%), and
*pattern by pattern*: every model meets the same chips, so the paired difference is the telling statistic. A margin
counts when the mean paired difference exceeds the standard deviation of the differences across patterns (the
pattern-to-pattern spread) and the worse model is worse on most patterns.
"""

from __future__ import annotations

import statistics

import pytest

from bitbench.harness import Harness, RunOptions
from bitbench.configs.suite import load_suite

DEFENSES = ["normal", "rquant", "clip", "randbet:p=0.1"]
RATES = [0.02, 0.1, 0.2]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finding")
    suite = load_suite("default")
    suite = suite.replace(rates=RATES, headline_rate=0.1, patterns=10, train=dict(suite.train, epochs=5))
    h = Harness(suite, RunOptions(cache_dir=str(tmp / "cache"), results_dir=str(tmp / "results"), device="cpu",
                                  progress=False))
    out = {}
    for d in DEFENSES:
        for r in RATES:
            rec = h.run_cell(d, f"random_p{r!r}")
            out[(d, r)] = rec
    return out


def _paired(results, worse: str, better: str, rate: float):
    a = results[(worse, rate)].per_pattern_rerr
    b = results[(better, rate)].per_pattern_rerr
    assert len(a) == len(b) == 10
    diffs = [x - y for x, y in zip(a, b)]
    return statistics.mean(diffs), statistics.pstdev(diffs), sum(d > 0 for d in diffs)


def test_models_are_trained(results):
    for d in DEFENSES:
        assert results[(d, 0.1)].clean_err < 0.10, f"{d}: clean error {results[(d, 0.1)].clean_err}"


@pytest.mark.parametrize("worse, better, rate", [
    ("normal", "rquant", 0.02),
    ("rquant", "clip", 0.1),
    ("clip", "randbet:p=0.1", 0.2),
])
def test_ordering_with_margins_beyond_the_pattern_spread(results, worse, better, rate):
    mean, spread, n_worse = _paired(results, worse, better, rate)
    summary = {k: round(100 * results[(k, rate)].rerr.mean, 2) for k in DEFENSES}
    assert mean > spread, f"{worse} vs {better} at p={rate}: mean paired diff {mean:.4f} <= spread {spread:.4f}; " \
                          f"RErr % {summary}"
    assert n_worse >= 8, f"{worse} worse than {better} on only {n_worse}/10 patterns at p={rate}; RErr % {summary}"


def test_full_ordering_at_high_rates(results):
    # The chain as a whole at the high rates (at 2% RandBET's higher clean error can still dominate its RErr).
    for r in (0.1, 0.2):
        m = {d: results[(d, r)].rerr.mean for d in DEFENSES}
        assert m["normal"] >= m["clip"] and m["rquant"] >= m["clip"], (r, m)
        assert m["clip"] >= m["randbet:p=0.1"] - 0.01, (r, m)
