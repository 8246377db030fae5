"""The paper's defenses: Normal, RQuant, Clipping, RandBET."""

from __future__ import annotations

import math

from bitbench.configs.registries import register_defense
from bitbench.configs.spec import SpecError

from .base import Defense
from .quantization import QuantScheme, normal as normal_scheme, rquant as rquant_scheme
from .randbet import RandBETStep

__all__ = ["Normal", "RQuant", "Clip", "RandBET", "Quant", "BitErrorTraining", "resolve_threshold"]


def _check_bits(bits):
    QuantScheme(bits=bits)  # raises a clear error for bits outside 2..8


def _check_wmax(w_max):
    if not (isinstance(w_max, (int, float)) and not isinstance(w_max, bool) and 0 < w_max < math.inf):
        raise SpecError(f"w_max must be a finite number > 0, got {w_max!r}")


class _SchemeOnly(Defense):
    """QAT with a fixed preset scheme of ``bits`` bits (subclasses set ``preset``); no clipping."""

    preset = staticmethod(rquant_scheme)

    def __init__(self, bits: int = 8):
        _check_bits(bits)
        self.bits = bits

    def scheme(self) -> QuantScheme:
        return self.preset(self.bits)


@register_defense("normal")
class Normal(_SchemeOnly):
    """Quantization-aware training with the paper's fragile Normal quantization (global range 1, truncation).

    Args:
        bits: bits per weight (2..8, unsigned offset codes in uint8).
    """

    preset = staticmethod(normal_scheme)


@register_defense("rquant")
class RQuant(_SchemeOnly):
    """Robust quantization: per-tensor, asymmetric, unsigned offset codes, round to nearest.

    Args:
        bits: bits per weight (2..8, unsigned offset codes in uint8).
    """

    preset = staticmethod(rquant_scheme)


@register_defense("clip")
class Clip(Defense):
    """RQuant plus weight clipping: every parameter clamped to [-w_max, w_max] after each step.

    Args:
        w_max: clipping bound (0.1 in the paper; 0.05 is stronger).
        bits: bits per weight (2..8).
    """

    def __init__(self, w_max: float = 0.1, bits: int = 8):
        _check_bits(bits)
        _check_wmax(w_max)
        self.bits = bits
        self.w_max = float(w_max)

    def scheme(self) -> QuantScheme:
        return rquant_scheme(self.bits, self.w_max)


def resolve_threshold(threshold, num_classes: int | None):
    """``'auto'``: the paper's curriculum threshold, 1.75 (CIFAR-10, MNIST) or 3.5 (CIFAR-100: > 10 classes)."""
    if threshold is None:
        return None
    if isinstance(threshold, str):
        if threshold.lower() == "auto":
            return 3.5 if (num_classes or 10) > 10 else 1.75
        try:
            threshold = float(threshold)
        except ValueError:
            raise SpecError(f"threshold must be a number, 'auto' or none, got {threshold!r}") from None
    if not threshold > 0:
        raise SpecError(f"threshold must be > 0, got {threshold!r}")
    return float(threshold)


class BitErrorTraining(Defense):
    """Shared part of the bit error training defenses (RandBET, AdvBET): RQuant with clipping, a curriculum
    threshold and the clipped perturbed gradient. Not registered itself."""

    def _setup(self, w_max, bits, threshold, grad_clip) -> None:
        _check_bits(bits)
        _check_wmax(w_max)
        resolve_threshold(threshold, 10)
        if not (isinstance(grad_clip, (int, float)) and not isinstance(grad_clip, bool) and grad_clip > 0):
            raise SpecError(f"grad_clip must be a number > 0, got {grad_clip!r}")
        self.w_max = float(w_max)
        self.bits = bits
        self.threshold = threshold
        self.grad_clip = float(grad_clip)

    def scheme(self) -> QuantScheme:
        return rquant_scheme(self.bits, self.w_max)


@register_defense("randbet")
class RandBET(BitErrorTraining):
    """Random bit error training: RQuant + clipping + averaging clean and bit-error gradients, with curriculum.

    Args:
        p: bit error rate of the training patterns (a fraction: 0.01 = 1%).
        w_max: clipping bound.
        bits: bits per weight (2..8).
        threshold: curriculum loss threshold; 'auto' = 1.75 (10 classes) or 3.5 (100 classes); none = always on.
        grad_clip: the perturbed gradient is clipped elementwise to [-grad_clip, grad_clip].
    """

    def __init__(self, p: float = 0.01, w_max: float = 0.1, bits: int = 8, threshold: str = "auto",
                 grad_clip: float = 0.05):
        self._setup(w_max, bits, threshold, grad_clip)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise SpecError(f"p must be a rate (fraction) in [0, 1], got {p!r}")
        self.p = float(p)

    def make_step(self, *, seed: int, num_classes: int | None = None):
        return RandBETStep(self.p, grad_clip=self.grad_clip, threshold=resolve_threshold(self.threshold,
                                                                                         num_classes),
                           seed=1_000_003 + int(seed))


@register_defense("quant")
class Quant(Defense):
    """Quantization-aware training with any quantization scheme (the paper's ablations), optionally clipped.

    Args:
        bits: bits per weight (unsigned offset codes: 2..8 in uint8; signed two's complement: 8, 16 or 32).
        signed: two's complement codes (int8/int16/int32) instead of unsigned offset codes.
        range: 'fixed' (q_max for every tensor), 'adaptive' (per tensor) or 'clipped' (per tensor, capped at w_max).
        q_max: the range of range='fixed'.
        asymmetric: per-tensor [min, max] range instead of a symmetric one (not with range='fixed').
        rounding: 'round' (to nearest) or 'trunc' (toward zero).
        w_max: clip weights to [-w_max, w_max] after each step (none: no clipping); also the cap of 'clipped'.
    """

    def __init__(self, bits: int = 8, signed: bool = False, range: str = "adaptive", q_max: float = 1.0,
                 asymmetric: bool = True, rounding: str = "round", w_max: float | None = None):
        if w_max is not None:
            _check_wmax(w_max)
        self._scheme = QuantScheme(bits=bits, signed=bool(signed), range=range, q_max=float(q_max),
                                   w_max=None if w_max is None else float(w_max), asymmetric=bool(asymmetric),
                                   rounding=rounding, label="quant")
        self.bits = bits
        self.w_max = None if w_max is None else float(w_max)

    def scheme(self) -> QuantScheme:
        return self._scheme
