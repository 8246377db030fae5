"""The paper-protocol suites (configs/cifar10.toml, cifar100.toml, mnist.toml) sweep the original's rates and train
with the paper's recipe; the embedded default suite records where it does not."""
from __future__ import annotations

from fractions import Fraction

import pytest

from bitbench.configs.registries import create_defense
from bitbench.configs.suite import load_suite
from bitbench.defenses import TrainConfig


def _grid(lo: Fraction, hi: Fraction) -> list[float]:
    """The 1 / 2.5 / 5 / 7.5 steps of every decade, from ``lo`` to ``hi`` inclusive (exact, then as floats)."""
    out = []
    for e in range(-8, 1):
        for m in (Fraction(1), Fraction(5, 2), Fraction(5), Fraction(15, 2)):
            v = m * Fraction(10) ** e
            if lo <= v <= hi:
                out.append(float(v))
    return out


@pytest.mark.parametrize("name,rates", [
    # percent values of the paper's CIFAR-10 and MNIST sweeps, as fractions
    ("cifar10", [v / 100 for v in (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5)]),
    ("mnist", [v / 100 for v in (0.1, 0.5, 1, 2, 3, 4, 5, 10, 15, 20)]),
    # CIFAR-100: 16 rates from 2.5e-6 to 1e-2, the decade grid of the CIFAR-10 sweep below 1%
    ("cifar100", _grid(Fraction(25, 10 ** 7), Fraction(1, 100))),
])
def test_suites_sweep_the_original_rates(name, rates):
    suite = load_suite(name)
    assert len(suite.rates) == len(rates) and suite.rates == pytest.approx(rates, rel=1e-12)
    if name == "cifar100":
        assert len(rates) == 16 and rates[0] == 2.5e-6 and rates[-1] == 1e-2
    assert suite.patterns == 50 and suite.base_seed == 100


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist"])
def test_paper_suites_train_with_the_paper_recipe(name):
    cfg = TrainConfig.from_dict(load_suite(name).train)
    assert cfg.schedule == "multistep" and cfg.milestone_epochs() == [2 * cfg.epochs // 5, 3 * cfg.epochs // 5,
                                                                       4 * cfg.epochs // 5]
    for spec in load_suite(name).defenses:
        assert create_defense(spec).recipe(cfg)["deviations"] == [], (name, spec)


def test_default_suite_records_its_cosine_schedule():
    cfg = TrainConfig.from_dict(load_suite("default").train)
    for spec in ("normal", "rquant", "clip", "randbet:p=0.1"):
        dev = create_defense(spec).recipe(cfg)["deviations"]
        assert dev == ["lr schedule 'cosine' (the paper: multistep, lr x0.1 at epochs floor(2E/5), floor(3E/5), "
                       "floor(4E/5))"], spec
