"""The paper's defenses (Normal, RQuant, Clipping, RandBET, the ``quant`` ablations), each at any granularity of
its ranges (``granularity=tensor|channel|group:g``), and the float storage formats (``float32``, ``float16``,
``bfloat16``, ``fp8e4m3``, ``fp8e5m2``: the normally trained float model stored as raw IEEE bits)."""

from __future__ import annotations

import math

from bitbench.configs.registries import register_defense
from bitbench.configs.spec import SpecError

from .base import NUMERICS, Defense, with_training
from .float_formats import FLOAT_KINDS, FloatFormat
from .quantization import QuantScheme, normal as normal_scheme, rquant as rquant_scheme
from .randbet import CURRICULA, RandBETStep

__all__ = ["Normal", "RQuant", "Clip", "RandBET", "Quant", "BitErrorTraining", "resolve_threshold", "FloatStorage",
           "Float32", "Float16", "BFloat16", "FP8E4M3", "FP8E5M2"]


def _check_bits(bits, granularity="tensor"):
    QuantScheme(bits=bits, granularity=granularity)  # raises a clear error for bits outside 2..16, a bad granularity


def _check_wmax(w_max):
    if not (isinstance(w_max, (int, float)) and not isinstance(w_max, bool) and 0 < w_max < math.inf):
        raise SpecError(f"w_max must be a finite number > 0, got {w_max!r}")


def _number(v, name: str, *, optional: bool = False):
    """A spec's numeric parameter as a float (None where ``optional``); :class:`SpecError` otherwise."""
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{name} must be a finite number{' or none' if optional else ''}, got {v!r}")
    return float(v)


def _check_optional_wmax(w_max):
    if w_max is not None:
        _check_wmax(w_max)
    return None if w_max is None else float(w_max)


class _ClippedAtOne(Defense):
    """QAT with a preset scheme of ``bits`` bits (subclasses set ``preset``), clipped at ``w_max`` = 1 like every
    model of the paper (``w_max=none`` turns the clip off; the result record says so)."""

    preset = staticmethod(rquant_scheme)
    PAPER_W_MAX = 1.0

    def __init__(self, bits: int = 8, w_max: float | None = 1.0, granularity: str = "tensor"):
        _check_bits(bits, granularity)
        self.bits = bits
        self.w_max = _check_optional_wmax(w_max)
        self.granularity = granularity

    def scheme(self) -> QuantScheme:
        return self.preset(self.bits, granularity=self.granularity)

    @property
    def storage_format(self) -> bool:
        """A storage format unless ``w_max`` asks for a clip other than the paper's (then it is a clip recipe)."""
        return self.w_max in (None, self.PAPER_W_MAX)


@register_defense("normal")
class Normal(_ClippedAtOne):
    """Quantization-aware training with the paper's fragile Normal quantization (global range 1, truncation),
    weights clipped at 1 after each step (the paper's configs).

    Args:
        bits: bits per weight (2..16, unsigned offset codes: uint8 up to 8 bits, int16 words above).
        w_max: clip every parameter to [-w_max, w_max] after each step (the paper: 1; none: no clipping).
        granularity: ranges per 'tensor', per output 'channel' or per 'group:g' of g weights (Normal's range is
            fixed, the same for every segment).
    """

    preset = staticmethod(normal_scheme)


@register_defense("rquant")
class RQuant(_ClippedAtOne):
    """Robust quantization: per-tensor (or per-channel, per-group) asymmetric ranges, unsigned offset codes, round
    to nearest; weights clipped at 1 after each step (the paper's configs).

    Args:
        bits: bits per weight (2..16, unsigned offset codes: uint8 up to 8 bits, int16 words above).
        w_max: clip every parameter to [-w_max, w_max] after each step (the paper: 1; none: no clipping).
        granularity: one range per 'tensor', per output 'channel' or per 'group:g' of g consecutive weights of a
            row (group:128: the usual LLM int4 format; the last group of a row may be shorter).
    """

    def scheme(self) -> QuantScheme:
        return rquant_scheme(self.bits, self.w_max, self.granularity)

    def storage_scheme(self) -> QuantScheme:
        """A model not trained (and clipped) here is stored with its own ranges (no cap at w_max): the cap is the
        training clip's, and would silently clamp weights such as layer-norm scales above 1."""
        return rquant_scheme(self.bits, None, self.granularity)


@register_defense("clip")
class Clip(Defense):
    """RQuant plus weight clipping: every parameter clamped to [-w_max, w_max] after each step.

    Args:
        w_max: clipping bound (0.1 in the paper; 0.05 is stronger).
        bits: bits per weight (2..16).
        granularity: ranges per 'tensor', per output 'channel' or per 'group:g' of g weights.
    """

    def __init__(self, w_max: float = 0.1, bits: int = 8, granularity: str = "tensor"):
        _check_bits(bits, granularity)
        _check_wmax(w_max)
        self.bits = bits
        self.w_max = float(w_max)
        self.granularity = granularity

    def scheme(self) -> QuantScheme:
        return rquant_scheme(self.bits, self.w_max, self.granularity)


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

    curriculum = "loss"

    def _setup(self, w_max, bits, threshold, grad_clip, curriculum: str = "loss", granularity: str = "tensor") -> None:
        _check_bits(bits, granularity)
        self.granularity = granularity
        _check_wmax(w_max)
        resolve_threshold(threshold, 10)
        if not (isinstance(grad_clip, (int, float)) and not isinstance(grad_clip, bool) and grad_clip > 0):
            raise SpecError(f"grad_clip must be a number > 0, got {grad_clip!r}")
        if curriculum not in CURRICULA:
            raise SpecError(f"curriculum must be one of {', '.join(CURRICULA)}, got {curriculum!r}")
        self.w_max = float(w_max)
        self.bits = bits
        self.threshold = threshold
        self.grad_clip = float(grad_clip)
        self.curriculum = curriculum

    def recipe(self, train=None) -> dict:
        d = super().recipe(train)
        cur = "none" if (self.curriculum == "loss" and self.threshold is None) else self.curriculum
        d.update(curriculum=cur, grad_clip=self.grad_clip, perturbed_pass="train mode, buffers of the clean pass")
        if cur in ("loss", "step") and self.threshold is not None:
            d["threshold"] = self.threshold
        if cur == "step":
            d["deviations"].append("curriculum 'step' (the original's alternative: p ramped in 20 steps over the "
                                   "first half of training; the paper: the loss curriculum at the full rate)")
        elif cur != "loss":
            d["deviations"].append(f"curriculum {cur!r} (the paper: the loss curriculum, threshold 1.75 / 3.5)")
        return d

    def scheme(self) -> QuantScheme:
        return rquant_scheme(self.bits, self.w_max, self.granularity)


@register_defense("randbet")
class RandBET(BitErrorTraining):
    """Random bit error training: RQuant + clipping + averaging clean and bit-error gradients, with curriculum.

    Args:
        p: bit error rate of the training patterns (a fraction: 0.01 = 1%).
        w_max: clipping bound.
        bits: bits per weight (2..16).
        threshold: curriculum loss threshold; 'auto' = 1.75 (10 classes) or 3.5 (100 classes); none = always on.
        grad_clip: the perturbed gradient is clipped elementwise to [-grad_clip, grad_clip].
        curriculum: 'loss' (the paper: on once the clean loss is low), 'step' (the same gating, p ramped up in
            20 steps over the first half of training) or 'none' (always on).
        granularity: ranges per 'tensor', per output 'channel' or per 'group:g' of g weights (training quantizes
            with the same ranges).
    """

    def __init__(self, p: float = 0.01, w_max: float = 0.1, bits: int = 8, threshold: str = "auto",
                 grad_clip: float = 0.05, curriculum: str = "loss", granularity: str = "tensor"):
        self._setup(w_max, bits, threshold, grad_clip, curriculum, granularity)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise SpecError(f"p must be a rate (fraction) in [0, 1], got {p!r}")
        self.p = float(p)

    def make_step(self, *, seed: int, num_classes: int | None = None):
        return RandBETStep(self.p, grad_clip=self.grad_clip, threshold=resolve_threshold(self.threshold,
                                                                                         num_classes),
                           seed=1_000_003 + int(seed), curriculum=self.curriculum)


@register_defense("quant")
class Quant(Defense):
    """Quantization-aware training with any quantization scheme (the paper's ablations), optionally clipped.

    Args:
        bits: bits per weight (2..16; signed codes also 32): uint8/int8 words up to 8 bits, int16 up to 16, int32.
        signed: two's complement codes instead of unsigned offset codes.
        range: 'fixed' (q_max for every tensor), 'adaptive' (per segment) or 'clipped' (per segment, capped at
            w_max).
        q_max: the range of range='fixed' ([-q_max, q_max], or [q_min, q_max] when asymmetric).
        asymmetric: a [min, max] range mapped onto [-1, 1] instead of a symmetric one.
        rounding: 'round' (to nearest) or 'trunc' (toward zero).
        w_max: clip weights to [-w_max, w_max] after each step (none: no clipping); also the cap of 'clipped'.
        q_min: the lower end of an asymmetric fixed range (default -q_max).
        granularity: segments with one range each: 'tensor', output 'channel' or 'group:g' of g weights.
    """

    def __init__(self, bits: int = 8, signed: bool = False, range: str = "adaptive", q_max: float = 1.0,
                 asymmetric: bool = True, rounding: str = "round", w_max: float | None = None,
                 q_min: float | None = None, granularity: str = "tensor"):
        if w_max is not None:
            _check_wmax(w_max)
        self._scheme = QuantScheme(bits=bits, signed=bool(signed), range=range, q_max=_number(q_max, "q_max"),
                                   w_max=None if w_max is None else float(w_max), asymmetric=bool(asymmetric),
                                   rounding=rounding, q_min=_number(q_min, "q_min", optional=True),
                                   granularity=granularity, label="quant")
        self.bits = bits
        self.w_max = None if w_max is None else float(w_max)

    def scheme(self) -> QuantScheme:
        return self._scheme

    @property
    def storage_format(self) -> bool:
        """Any scheme is a storage format; with ``w_max`` the defense is a clip recipe."""
        return self.w_max is None


# -- float storage formats ---------------------------------------------------------------------------------------
class FloatStorage(Defense):
    """The normally trained float model (plain SGD, no quantization in the forward pass; clipped at w_max = 1 after
    each step like every model of the paper) stored as the raw IEEE bits of a float format (subclasses set
    ``kind``; :mod:`.float_formats`). Storing changes no training: every float format with the same ``w_max``
    stores the one trained model, cached under one checkpoint (``float-<key>.pt``; the key holds the float recipe
    and ``w_max``, not the format)."""

    kind = "float32"
    PAPER_W_MAX = 1.0
    checkpoint_name = "float"

    def __init__(self, bits: str = "all", w_max: float | None = 1.0):
        self._format = FloatFormat(self.kind, bits)
        self.w_max = _check_optional_wmax(w_max)

    def scheme(self) -> FloatFormat:
        return self._format

    def training_scheme(self):
        return None  # float training

    @property
    def storage_format(self) -> bool:
        """A storage format unless ``w_max`` asks for a clip other than the paper's (then it is a clip recipe)."""
        return self.w_max in (None, self.PAPER_W_MAX)

    def identity(self) -> dict:
        """The trained weights depend on the float recipe and w_max only (not on the format or its bits)."""
        return {"defense": "float", "training": "float", "w_max": self.w_max, "numerics": NUMERICS}

    def recipe(self, train=None) -> dict:
        d = {"quantization": f"none (float training), stored as {self._format.name}", "clip": self.w_max,
             "deviations": []}
        if self.w_max is None:
            d["deviations"].append("no weight clipping (the paper clips every model after each step, at w_max = 1 "
                                   "for Normal and RQuant)")
        return with_training(d, train)


_FLOAT_ARGS = """

    Args:
        bits: the bits that may flip: 'all', or fields joined by '|' (sign, exponent, mantissa; e.g. 'exponent',
            'sign|mantissa'); the others are protected.
        w_max: clip every parameter to [-w_max, w_max] after each training step (the paper: 1; none: no clipping).
            Every float format with the same w_max stores the same trained model.
    """


def _float_defense(kind: str, cls_name: str, title: str):
    cls = type(cls_name, (FloatStorage,), {"kind": kind, "__doc__": title + _FLOAT_ARGS, "__module__": __name__})
    return register_defense(kind)(cls)


assert set(FLOAT_KINDS) == {"float32", "float16", "bfloat16", "fp8e4m3", "fp8e5m2"}
Float32 = _float_defense("float32", "Float32", "The normally trained float model stored as IEEE float32 words "
                                               "(int32 words: 1 sign, 8 exponent, 23 mantissa bits).")
Float16 = _float_defense("float16", "Float16", "The normally trained float model stored as IEEE float16 words "
                                               "(int16 words: 1 sign, 5 exponent, 10 mantissa bits).")
BFloat16 = _float_defense("bfloat16", "BFloat16", "The normally trained float model stored as bfloat16 words "
                                                  "(int16 words: 1 sign, 8 exponent, 7 mantissa bits).")
FP8E4M3 = _float_defense("fp8e4m3", "FP8E4M3", "The normally trained float model stored as fp8 e4m3 words (OCP "
                                               "'fn': uint8 words, no inf, max 448).")
FP8E5M2 = _float_defense("fp8e5m2", "FP8E5M2", "The normally trained float model stored as fp8 e5m2 words (uint8 "
                                               "words: 1 sign, 5 exponent, 2 mantissa bits, IEEE inf/NaN).")
