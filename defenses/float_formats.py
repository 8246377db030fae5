"""IEEE floating-point memory formats: weights stored as their raw bits (float32, float16, bfloat16, fp8).

A word is the float's bit pattern, held in the integer container of its width (the kernels flip integer words):

============  =================  ======  ===========  ===========  ==========================================
format        torch dtype        word    exponent     mantissa     special values
============  =================  ======  ===========  ===========  ==========================================
``float32``   float32            int32   8 (bias 127)  23          inf, NaN (IEEE 754 binary32)
``float16``   float16            int16   5 (bias 15)   10          inf, NaN (binary16)
``bfloat16``  bfloat16           int16   8 (bias 127)  7           inf, NaN (float32's top 16 bits)
``fp8e4m3``   float8_e4m3fn      uint8   4 (bias 7)    3           no inf; NaN = S.1111.111 only (OCP "fn")
``fp8e5m2``   float8_e5m2        uint8   5 (bias 15)   2           inf, NaN (IEEE-like)
============  =================  ======  ===========  ===========  ==========================================

Bit ``width - 1`` is the sign, then the exponent, then the mantissa down to bit 0. Encoding is torch's cast from
float32 (round to nearest, ties to even); a weight beyond the format's largest finite value is refused (it would
become inf, or saturate for fp8e4m3) rather than silently changed. Decoding is a reinterpretation of the word as
the float type (exact, no arithmetic: a view for float32, a widening cast otherwise), so a bit error decodes as it
would in hardware: an exponent flip can make a weight huge, infinite or NaN, and NaN/inf propagate to the logits
(the evaluation counts such an output as an error and records how many there were).

``flip`` restricts which bits may flip: ``'all'`` or ``'|'``-joined fields (``'exponent'``, ``'sign|mantissa'``);
the other bits are protected, as the high bits of sub-byte integer codes. There are no ranges (no context): the
memory is self-describing.

For attacks that work in code space (the budgeted attack) a word's *code value* is its sign-magnitude ordinal
(``+magnitude bits`` for a positive float, ``-magnitude bits`` for a negative one): monotone in the weight over the
finite values, with ``d(weight)/d(code)`` = the unit in the last place of the word.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitbench.configs.spec import SpecError
from bitbench.kernels import from_pattern, to_pattern

from .layout import Segments
from .memory import MemoryFormat

__all__ = ["FloatFormat", "FLOAT_KINDS", "FIELDS"]

# kind -> (float dtype, container dtype, exponent bits, mantissa bits)
FLOAT_KINDS = {
    "float32": (torch.float32, torch.int32, 8, 23),
    "float16": (torch.float16, torch.int16, 5, 10),
    "bfloat16": (torch.bfloat16, torch.int16, 8, 7),
    "fp8e4m3": (torch.float8_e4m3fn, torch.uint8, 4, 3),
    "fp8e5m2": (torch.float8_e5m2, torch.uint8, 5, 2),
}
FIELDS = ("sign", "exponent", "mantissa")


def _canonical_flip(flip) -> str:
    parts = [p.strip().lower() for p in str(flip).split("|")] if isinstance(flip, str) else []
    if parts == ["all"]:
        return "all"
    bad = [p for p in parts if p not in FIELDS]
    if not parts or bad or len(set(parts)) != len(parts):
        raise SpecError(f"bits must be 'all' or fields of the float joined with '|' ({', '.join(FIELDS)}; e.g. "
                        f"'exponent' or 'sign|mantissa'), got {flip!r}")
    chosen = [f for f in FIELDS if f in parts]
    return "all" if len(chosen) == len(FIELDS) else "|".join(chosen)


@dataclass(frozen=True)
class FloatFormat(MemoryFormat):
    """Weights as raw IEEE bits (the module docstring). ``kind``: one of :data:`FLOAT_KINDS`; ``flip``: the bits
    that may flip (``'all'``, or fields joined by ``'|'``)."""

    kind: str = "float32"
    flip: str = "all"

    def __post_init__(self):
        if self.kind not in FLOAT_KINDS:
            raise SpecError(f"float format must be one of {', '.join(FLOAT_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "flip", _canonical_flip(self.flip))

    # -- the word ------------------------------------------------------------------------------------------------
    has_context = False
    family = None          # no affine formula family: the C quantization accelerator does not apply
    native = False

    @property
    def float_dtype(self) -> torch.dtype:
        return FLOAT_KINDS[self.kind][0]

    @property
    def dtype(self) -> torch.dtype:
        """The integer container of a word (same width as the float)."""
        return FLOAT_KINDS[self.kind][1]

    @property
    def width(self) -> int:
        return torch.iinfo(self.dtype).bits

    @property
    def bits(self) -> int:
        """Bits per word (every bit of the container is a bit of the float)."""
        return self.width

    @property
    def exponent_bits(self) -> int:
        return FLOAT_KINDS[self.kind][2]

    @property
    def mantissa_bits(self) -> int:
        return FLOAT_KINDS[self.kind][3]

    @property
    def bias(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1

    def field_mask(self, name: str) -> int:
        """Bit mask of the ``sign``, ``exponent`` or ``mantissa`` field of a word."""
        e, m = self.exponent_bits, self.mantissa_bits
        masks = {"sign": 1 << (e + m), "exponent": ((1 << e) - 1) << m, "mantissa": (1 << m) - 1}
        if name not in masks:
            raise ValueError(f"field must be one of {FIELDS}, got {name!r}")
        return masks[name]

    @property
    def attackable(self) -> int:
        """Bit mask of the bits that may flip (:attr:`flip`)."""
        names = FIELDS if self.flip == "all" else self.flip.split("|")
        out = 0
        for n in names:
            out |= self.field_mask(n)
        return out

    @property
    def protected(self) -> int:
        """Bit mask of the bits that never flip (those outside :attr:`flip`)."""
        return ((1 << self.width) - 1) & ~self.attackable

    @property
    def max_finite(self) -> float:
        return float(torch.finfo(self.float_dtype).max)

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float64  # decode_words: every format is exact in float64

    @property
    def name(self) -> str:
        return self.kind if self.flip == "all" else f"{self.kind}[{self.flip}]"

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict:
        return {"float": self.kind, "flip": self.flip}

    @classmethod
    def from_dict(cls, d: dict) -> "FloatFormat":
        return cls(kind=d["float"], flip=d.get("flip", "all"))

    def layout(self, shapes) -> Segments:
        """One segment per tensor (no ranges: the segments only name the tensors)."""
        return Segments([int(torch.Size(s).numel()) for s in shapes])

    # -- encode / decode ---------------------------------------------------------------------------------------
    def quantize(self, flat: torch.Tensor, segments: Segments | None = None, *, context=None, check: bool = True,
                 deq_out: torch.Tensor | None = None):
        """The words of the 1-D memory ``flat`` (torch's round-to-nearest-even cast): ``(words, None, decoded
        written)``. ``check`` refuses NaN/inf weights and weights beyond the largest finite value."""
        if context is not None:
            raise ValueError(f"{self.name} weights have no ranges: context must be None")
        if not isinstance(flat, torch.Tensor) or not flat.is_floating_point():
            raise TypeError(f"flat must be a floating point tensor, got "
                            f"{flat.dtype if isinstance(flat, torch.Tensor) else type(flat).__name__}")
        f = flat.detach().reshape(-1)
        if check and f.numel():
            if not bool(torch.isfinite(f).all()):
                raise ValueError("flat contains NaN or infinite values; cannot store it")
            big = float(f.abs().max())
            if big > self.max_finite:
                raise SpecError(f"a weight of magnitude {big:g} exceeds the largest finite {self.kind} value "
                                f"{self.max_finite:g}: it cannot be stored in this format (scale or clip the model)")
        words = f.to(self.float_dtype, copy=True).view(self.dtype)
        if deq_out is not None:
            self.decode(words, None, out=deq_out)
        return words, None, deq_out is not None

    def decode(self, words: torch.Tensor, ctx=None, segments: Segments | None = None, *,
               dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None, per_word=None,
               reference: bool = False) -> torch.Tensor:
        """The weights the words hold, as ``dtype`` (or into ``out``): the word reinterpreted as the float type,
        then widened (exact). A fresh tensor (never a view of the words)."""
        v = words.view(self.float_dtype)
        if out is not None:
            return out.copy_(v)
        return v.to(dtype, copy=True)

    def decode_cache(self, ctx, segments) -> None:
        return None

    def decode_words(self, words: torch.Tensor, ctx, seg: torch.Tensor) -> torch.Tensor:
        """float64 weights of a few words (the same values :meth:`decode` gives, exactly)."""
        return words.reshape(-1).contiguous().view(self.float_dtype).to(torch.float64)

    # -- code space (the budgeted attack) ------------------------------------------------------------------------
    @property
    def _sign(self) -> int:
        return 1 << (self.width - 1)

    @property
    def code_max(self) -> int:
        """The ordinal of the largest finite value (module docstring)."""
        return int(to_pattern(torch.tensor(self.max_finite).to(self.float_dtype).view(self.dtype)))

    @property
    def code_min(self) -> int:
        return -self.code_max

    def code_values(self, words: torch.Tensor) -> torch.Tensor:
        """int64 sign-magnitude ordinals of the words (monotone in the weight over finite values)."""
        u = to_pattern(words)
        mag = u & (self._sign - 1)
        return torch.where(u >= self._sign, -mag, mag)

    def words_from_code_values(self, z: torch.Tensor) -> torch.Tensor:
        """Words of the ordinals nearest ``z`` (rounded, clamped to the finite values; 0 is +0)."""
        o = z.round().clamp_(self.code_min, self.code_max).to(torch.int64)
        return from_pattern(torch.where(o < 0, (-o) | self._sign, o), self.dtype)

    def dweight_dcode(self, words: torch.Tensor, ctx, segments) -> torch.Tensor:
        """float64 ``[N]``: the unit in the last place of each word, d(weight)/d(ordinal)."""
        u = to_pattern(words.reshape(-1))
        e = (u >> self.mantissa_bits) & ((1 << self.exponent_bits) - 1)
        exp = torch.clamp(e, min=1) - self.bias - self.mantissa_bits
        return torch.ldexp(torch.ones_like(exp, dtype=torch.float64), exp)
