"""The tolerable bit error rate as an attack-style analysis spec: ``tolerable:budget=0.01``.

Not an attack of its own: it names a search over random bit error rates (docs/energy.md). The harness evaluates
each rate the search asks for as the ordinary attack ``random_p{p}`` on the suite's nested chips (the same
patterns and seeds; records cached like any other, so a rate evaluated before costs nothing) and the search
(:func:`bitbench.configs.energy.tolerable_rate`) turns the RErr matrices into p*(budget) with its 95% interval.

Spec forms::

    tolerable:budget=0.01                       within +1 point of the defense's own clean error
    tolerable:budget=0.01,reference=normal      within +1 point of the `normal` row's clean error (the paper's)
    tolerable:budget=0.025,p_lo=0.001,p_hi=0.1,rtol=0.1
"""

from __future__ import annotations

import math

from bitbench.configs.errors import UsageError
from bitbench.configs.registries import register_attack
from bitbench.configs.spec import SpecError, canonical_rate
from bitbench.configs.suite import MAX_PATTERNS

from .base import Attack, check_int

__all__ = ["TolerableRateAnalysis", "REFERENCES"]

REFERENCES = ("own", "normal")


def _frac(v, name: str, *, lo_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"tolerable: {name} must be a number, got {v!r}")
    v = float(v)
    if not ((0 < v) if lo_open else (0 <= v)) or v > 1:
        raise SpecError(f"tolerable: {name} must be a fraction in {'(0' if lo_open else '[0'}, 1] (0.01 = 1%), got "
                        f"{v!r}")
    return canonical_rate(v)


@register_attack("tolerable", pattern_help=None)
class TolerableRateAnalysis(Attack):
    """Tolerable bit error rate p*: the highest rate whose RErr stays within a budget (a search over random_p rates).

    Args:
        budget: allowed error increase over the reference, an absolute fraction (0.01 = +1 point).
        reference: 'own' (the defense's own clean error, per model) or 'normal' (the normal row's clean error).
        p_lo: lowest rate of the search (a fraction); p* below it is reported as '< p_lo'.
        p_hi: highest rate of the search; p* above it is reported as '> p_hi'.
        rtol: stop bisecting when the bracket's ratio is at most 1 + rtol.
        ci_rtol: evaluate more rates until each interval end lies in a bracket of ratio <= 1 + ci_rtol (0: no).
        max_evals: at most this many rates per defense.
        patterns: chips per rate (the suite's unless given), seeds base_seed .. base_seed + patterns - 1.
        base_seed: seed of chip 0 (the suite's unless given).
    """

    kind = "analysis"

    def __init__(self, budget: float = 0.01, reference: str = "own", p_lo: float = 0.0001, p_hi: float = 0.2,
                 rtol: float = 0.05, ci_rtol: float = 0.25, max_evals: int = 24, patterns: int = 50,
                 base_seed: int = 100):
        self.budget = _frac(budget, "budget")
        if reference not in REFERENCES:
            raise SpecError(f"tolerable: reference must be 'own' (the defense's own clean error) or 'normal' (the "
                            f"normal row's clean error of the same suite), got {reference!r}")
        self.reference = reference
        self.p_lo, self.p_hi = _frac(p_lo, "p_lo"), _frac(p_hi, "p_hi")
        if not self.p_lo < self.p_hi:
            raise SpecError(f"tolerable: p_lo ({self.p_lo!r}) must be below p_hi ({self.p_hi!r})")
        for name, v in (("rtol", rtol), ("ci_rtol", ci_rtol)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (name == "rtol" and v == 0):
                raise SpecError(f"tolerable: {name} must be a positive number (a relative bracket width, 0.05 = "
                                f"5%){' or 0 (no refinement)' if name == 'ci_rtol' else ''}, got {v!r}")
        if self.p_hi / self.p_lo <= 1 + rtol:
            raise SpecError(f"tolerable: the range [{self.p_lo!r}, {self.p_hi!r}] is narrower than rtol={rtol!r}")
        self.rtol, self.ci_rtol = float(rtol), float(ci_rtol)
        self.max_evals = check_int(max_evals, "max_evals", 2, 200)
        self.patterns = check_int(patterns, "patterns", 1, MAX_PATTERNS)
        self.base_seed = check_int(base_seed, "base_seed", 0, (1 << 64) - self.patterns)

    def rate_spec(self, p: float) -> str:
        """The attack spec evaluated at rate ``p``: the ordinary random attack on the same chips."""
        return f"random_p{canonical_rate(p)!r}:patterns={self.patterns},base_seed={self.base_seed}"

    def num_perturbations(self) -> int:
        return 0

    def perturbations(self, qm, **kw):
        raise UsageError(f"{self.spec} is an analysis over random_p rates, not an attack that perturbs a memory: run "
                         "it with `python -m benchmark run --attack tolerable:budget=0.01`")
