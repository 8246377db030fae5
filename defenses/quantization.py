"""Quantization schemes: how float weights become integer codes (encode), and codes become weights (decode).

:class:`QuantScheme` is the one definition of the formulas: the per-segment range parameters computed from
statistics (:meth:`QuantScheme.context`), encoding and decoding of a flat memory of segments (tensors), and the
few-word decoding adversarial attacks use. A fast path (the C kernel of :mod:`bitbench.kernels.fused_quant`)
declares which schemes it handles (:func:`bitbench.kernels.fused_quant.supports`) and gives the same bits; every
other scheme or device runs the torch path below.

The numerics are those of the method's original implementation (docs/numerics.md). ``m`` bits,
``L = 2^(m-1) - 1``, ``c`` the center code (``2^(m-1)`` for unsigned offset codes, 0 for two's complement codes),
``eps = 0.001``. Per segment (tensor) a :class:`QuantContext` ``(lo, hi, step)``:

* symmetric, fixed ``q_max``: ``[lo, hi] = [-q_max, q_max]``, ``step = (q_max + eps) / L``;
* symmetric, adaptive: ``r = max|w| + eps``; clipped: ``r = min(max|w| + eps, w_max)``; ``[lo, hi] = [-r, r]``,
  ``step = r / L``;
* asymmetric: ``[lo, hi] = [min w, max w]`` (clipped: both clamped to ``[-w_max, w_max]``; fixed: the given
  ``[q_min, q_max]``), no epsilon; ``step = (1 + eps) / L``, the step of the fixed symmetric scheme at q_max = 1 that
  quantizes the tensor mapped affinely onto [-1, 1].

``r`` and ``step`` are computed in float64 (binary64, as the original computes them with Python floats: the exact
``max|w|``, plus ``eps``, capped at ``w_max``, divided by ``L``; each a correctly rounded double operation) and then
rounded once to the compute dtype; ``q_max``, ``q_min`` and ``w_max`` enter as the nearest compute-dtype value.
Everything below is computed in the compute dtype.

Encode, one word (each line one correctly rounded operation in the compute dtype; no fused multiply-add):

* symmetric: ``v = clamp(w, lo, hi)``; ``x = v / step``; ``x = x + c``; ``x = clamp(x, code_min, code_max)``;
  ``q = T(x)``;
* asymmetric: ``y = w - lo``; ``y = y / s`` (``s = hi - lo``, or 1 where ``hi == lo``); ``y = y * 2``;
  ``y = y - 1``; ``y = y * live`` (``live`` = 1, or 0 where ``hi == lo``); ``v = clamp(y, -1, 1)``, then as the
  symmetric line with ``v``.

``T`` is round half to even (``'round'``) or the cast to the integer type (``'trunc'``), taken *after* the offset:
toward zero for two's complement codes, floor of ``w / step`` for offset codes (their ``x`` is >= 0).

Decode, one word: ``t = clamp(q, code_min, code_max) - c`` (exact), ``t = t * step``;

* symmetric: ``w_hat = clamp(t, lo, hi)``;
* asymmetric: ``t = clamp(t, -1, 1)``; ``t = t + 1``; ``t = t / 2``; ``t = t * (hi - lo)``; ``t = t + lo``;
  ``w_hat = clamp(t, lo, hi)``.

So every code of every word decodes inside its tensor's range (a bit error never moves a weight outside it), and a
constant tensor (``hi == lo``: zero-initialized biases, one-element tensors, a clipped range that collapses) encodes
to the center code and decodes to the constant under any code. Codes are computed in float32 and contexts are held
in float32 (their range parameters computed in float64, see above), except for 32-bit codes: everything in float64
(float32 cannot resolve their steps).

Storage: a word is an m-bit code (``2 <= m <= 16``, or 32 for signed codes) held in the smallest container:
uint8 (unsigned, ``m <= 8``), int8 (signed, ``m <= 8``), int16 (``9 <= m <= 16``), int32 (signed, ``m = 32``).
Container bits ``m..width-1`` are protected (never flip) and hold 0; a word reads as its m low bits: unsigned codes
as the container's unsigned bit pattern clamped to ``[0, 2^m - 1]`` (so protected bits set would read as the
largest code), signed codes as m-bit two's complement (bit m-1 is the sign). Where the container's own value is
the code (unsigned in uint8; signed with m = width: int8, int16, int32) codes are stored as that value; the C
accelerator handles only these (:attr:`QuantScheme.native`).

Layout and granularity (:mod:`.layout`): a flat memory is cut into :class:`Segments`, one context each: one per
tensor (``granularity='tensor'``), per output channel (``'channel'``) or per group of g consecutive weights of a
row (``'group:g'``). Every formula above applies per segment exactly as per tensor (epsilon, clamped decode,
constant segments). :meth:`QuantScheme.layout` gives the segments of a set of parameter shapes.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import torch

from bitbench.configs.spec import SpecError
from bitbench.kernels import fused_quant as _fast
from bitbench.kernels import from_pattern
from bitbench.kernels.fused_quant import Rounding

from .layout import Segments, canonical_granularity, parse_granularity, segment_ids, segment_starts
from .memory import MemoryFormat

__all__ = [
    "QuantScheme",
    "parse_granularity",
    "QuantContext",
    "Segments",
    "Rounding",
    "RANGE_EPS",
    "normal",
    "rquant",
    "scheme_from_dict",
    "quantize_tensor",
    "dequantize_tensor",
    "segment_ids",
    "segment_starts",
]

RANGE_EPS = 0.001  # the original's range epsilon (symmetric ranges; the 1.001 inner step of asymmetric ones)
_RANGES = ("fixed", "adaptive", "clipped")
_ROUNDING = {"round": Rounding.NEAREST_EVEN, "trunc": Rounding.TRUNCATE}
_CONTAINERS = {8: torch.int8, 16: torch.int16, 32: torch.int32}  # signed containers by width


def _positive_finite(v) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f > 0 and f != float("inf")


# A fixed range's width must be a finite float32 number, and so must its code step (width / (2^m - 1)) be a normal
# one: float32's smallest normal number and its largest finite number.
_FIXED_WIDTH = (1.1754943508222875e-38, 3.4028234663852886e38)


def _finite(v) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and abs(f) != float("inf")


# -- the per-segment context --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantContext:
    """Per-segment range parameters, tensors ``[S]`` in the scheme's compute dtype: the range ``[lo, hi]`` and the
    code step (symmetric: the weight step; asymmetric: the step on the [-1, 1] scale). See the module docstring."""

    lo: torch.Tensor
    hi: torch.Tensor
    step: torch.Tensor

    def __len__(self) -> int:
        return int(self.lo.shape[0]) if self.lo.dim() else 1

    def __getitem__(self, i) -> "QuantContext":
        return QuantContext(self.lo[i], self.hi[i], self.step[i])

    def to(self, device=None, dtype=None) -> "QuantContext":
        return QuantContext(*(t.to(device=device, dtype=dtype) for t in (self.lo, self.hi, self.step)))

    @property
    def device(self) -> torch.device:
        return self.lo.device

    def state_dict(self) -> dict:
        return {"lo": self.lo.cpu(), "hi": self.hi.cpu(), "step": self.step.cpu()}

    @classmethod
    def from_state_dict(cls, d: dict) -> "QuantContext":
        return cls(d["lo"], d["hi"], d["step"])

    @classmethod
    def cat(cls, parts: list["QuantContext"]) -> "QuantContext":
        return cls(*(torch.cat([getattr(p, k).reshape(-1) for p in parts]) for k in ("lo", "hi", "step")))

    def equal(self, other: "QuantContext") -> bool:
        return all(torch.equal(getattr(self, k), getattr(other, k)) for k in ("lo", "hi", "step"))


@functools.lru_cache(maxsize=256)
def _device_const(v: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.tensor(v, dtype=dtype, device=device)


def _check_float(w: torch.Tensor, what: str = "w"):
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"{what} must be a floating point tensor, got "
                        f"{w.dtype if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w.numel() and not bool(torch.isfinite(w).all()):
        raise ValueError(f"{what} contains NaN or infinite values; cannot quantize")


# -- the scheme --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantScheme(MemoryFormat):
    """How float weights become integer codes and back (formulas: the module docstring).

    Attributes:
        bits: m, the number of bits per word (2..16; signed codes also 32).
        signed: two's complement codes (True) or unsigned offset codes (False).
        range: ``'fixed'`` (``q_max``, or ``[q_min, q_max]`` when asymmetric), ``'adaptive'`` (per segment) or
            ``'clipped'`` (per segment, capped by ``w_max``).
        q_max: the fixed range (symmetric ``[-q_max, q_max]``; the upper end of an asymmetric fixed range).
        q_min: the lower end of an asymmetric fixed range (default ``-q_max``).
        w_max: the cap for ``range='clipped'`` (> 0).
        asymmetric: a ``[min, max]`` range mapped onto [-1, 1] instead of a symmetric ``[-r, r]``.
        rounding: ``'round'`` (to nearest, ties to even) or ``'trunc'`` (the cast after the offset); see
            :attr:`rounding_mode`.
        granularity: ``'tensor'``, ``'channel'`` or ``'group:g'``: one range per tensor, per output channel or per
            group of g consecutive weights of a row (:mod:`.layout`).
        label: optional preset name shown by :attr:`name` (not part of equality).
    """

    bits: int = 8
    signed: bool = False
    range: str = "adaptive"
    q_max: float = 1.0
    w_max: float | None = None
    asymmetric: bool = False
    rounding: str = "round"
    q_min: float | None = None
    granularity: str = "tensor"
    label: str | None = field(default=None, compare=False)

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise SpecError(f"bits must be an integer, got {self.bits!r}")
        if not (2 <= self.bits <= 16 or (self.signed and self.bits == 32)):
            raise SpecError(f"bits must be in 2..16 ({'or 32 ' if self.signed else ''}for "
                            f"{'signed' if self.signed else 'unsigned'} codes; 32-bit codes are signed), got "
                            f"bits={self.bits}")
        object.__setattr__(self, "granularity", canonical_granularity(self.granularity))
        if self.range not in _RANGES:
            raise SpecError(f"range must be one of {_RANGES}, got {self.range!r}")
        if self.rounding not in _ROUNDING:
            raise SpecError(f"rounding must be one of {tuple(_ROUNDING)}, got {self.rounding!r}")
        if self.range == "fixed":
            if self.asymmetric and self.q_min is not None:
                if not (_finite(self.q_min) and _finite(self.q_max) and float(self.q_min) < float(self.q_max)):
                    raise SpecError(f"an asymmetric fixed range needs finite q_min < q_max, got "
                                    f"[{self.q_min!r}, {self.q_max!r}]")
            elif not _positive_finite(self.q_max):
                raise SpecError(f"q_max must be a finite number > 0, got {self.q_max!r}")
            if self.q_min is not None and not self.asymmetric:
                raise SpecError("q_min is the lower end of an asymmetric fixed range; a symmetric fixed range "
                                "is [-q_max, q_max] (set asymmetric=True, or drop q_min)")
            lo = float(self.q_min) if self.q_min is not None else -float(self.q_max)
            width = (float(self.q_max) - lo) * 1.001  # the range with its epsilon, in the compute dtype
            if not _FIXED_WIDTH[0] * ((1 << self.bits) - 1) <= width <= _FIXED_WIDTH[1]:
                raise SpecError(f"the fixed range [{lo!r}, {self.q_max!r}] is too {'wide' if width > 1 else 'narrow'} "
                                f"for {self.bits}-bit codes computed in float32: its width must be in "
                                f"[{_FIXED_WIDTH[0] * ((1 << self.bits) - 1):.3g}, {_FIXED_WIDTH[1]:.3g}]")
        elif self.q_min is not None:
            raise SpecError("q_min belongs to range='fixed' with asymmetric=True")
        if self.range == "clipped" and (self.w_max is None or not _positive_finite(self.w_max)):
            raise SpecError(f"range='clipped' needs a finite w_max > 0, got w_max={self.w_max!r}")
        if self.w_max is not None and not _positive_finite(self.w_max):
            raise SpecError(f"w_max must be a finite number > 0, got {self.w_max!r}")

    # -- derived properties -------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Bits of the storage container: 8, 16 or 32."""
        return 8 if self.bits <= 8 else (16 if self.bits <= 16 else 32)

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype (container) of the codes."""
        return torch.uint8 if (self.width == 8 and not self.signed) else _CONTAINERS[self.width]

    @property
    def native(self) -> bool:
        """Codes are stored as the container's own value (unsigned in uint8; signed with m = width)."""
        return (self.dtype == torch.uint8) or (self.signed and self.bits == self.width)

    @property
    def family(self) -> str:
        """``'symmetric'`` or ``'asymmetric'``: which encode/decode formulas apply (the module docstring)."""
        return "asymmetric" if self.asymmetric else "symmetric"

    @property
    def rounding_mode(self) -> Rounding:
        return _ROUNDING[self.rounding]

    @property
    def levels(self) -> int:
        """L = 2**(m-1) - 1: the largest code magnitude of the range's ends (before the epsilon)."""
        return (1 << (self.bits - 1)) - 1

    @property
    def center(self) -> int:
        """Code of the range's middle (0 for signed codes, 2**(m-1) for unsigned ones)."""
        return 0 if self.signed else 1 << (self.bits - 1)

    @property
    def protected(self) -> int:
        """Bit mask of container bits that never flip: bits m..width-1 (the module docstring)."""
        return ((1 << self.width) - 1) & ~((1 << self.bits) - 1)

    @property
    def code_min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def code_max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 for 32-bit codes (float32 cannot hold them exactly), else float32."""
        return torch.float64 if self.bits > 16 else torch.float32

    @property
    def name(self) -> str:
        """Readable, compact name, e.g. ``u8-clipped0.1-asym-round``."""
        if self.range == "fixed":
            rng = f"fixed[{self.q_min:g},{self.q_max:g}]" if self.q_min is not None else f"fixed{self.q_max:g}"
        else:
            rng = {"adaptive": "adaptive", "clipped": f"clipped{self.w_max or 0:g}"}[self.range]
        parts = [f"{'s' if self.signed else 'u'}{self.bits}", rng, "asym" if self.asymmetric else "sym",
                 self.rounding]
        if self.granularity != "tensor":
            parts.append(self.granularity.replace(":", ""))
        base = "-".join(parts)
        return f"{self.label}({base})" if self.label else base

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["q_min"] is None:  # keeps the dict (and checkpoint keys) of schemes without it short
            d.pop("q_min")
        if d["granularity"] == "tensor":  # likewise: per-tensor schemes keep the keys they had
            d.pop("granularity")
        return d

    # -- words -------------------------------------------------------------------------------------------------
    has_context = True  # per-segment ranges (QuantContext) go with the words

    def layout(self, shapes) -> Segments:
        """The segments (one context each) of tensors of ``shapes`` in memory order, at :attr:`granularity`."""
        return Segments.of_shapes(shapes, self.granularity)

    def code_values(self, words: torch.Tensor) -> torch.Tensor:
        """The integer codes the words hold (the module docstring: the m low bits; an integer tensor)."""
        if self.native:
            if self.dtype == torch.uint8 and self.bits < 8:  # protected bits set read as the largest code
                return words.clamp(self.code_min, self.code_max)
            return words
        u = words.to(torch.int32) & ((1 << self.width) - 1)
        if self.signed:
            u = u & ((1 << self.bits) - 1)
            return u - ((u >> (self.bits - 1)) & 1) * (1 << self.bits)
        return u.clamp_(0, self.code_max)

    def store(self, q: torch.Tensor) -> torch.Tensor:
        """Words holding the integer codes ``q`` (values in ``[code_min, code_max]``): the inverse of
        :meth:`code_values`."""
        if self.native:
            return q.to(self.dtype)
        return from_pattern(q.to(torch.int64) & ((1 << self.bits) - 1), self.dtype)

    def words_from_code_values(self, z: torch.Tensor) -> torch.Tensor:
        """Words of the codes nearest the real code values ``z`` (rounded, clamped to the code range)."""
        return self.store(z.round().clamp_(self.code_min, self.code_max).to(torch.int64))

    # -- range parameters ---------------------------------------------------------------------------------------
    def _const(self, v: float, device) -> torch.Tensor:
        """``v`` as a 0-dim tensor of the compute dtype on ``device`` (cached: no host-to-device copy per step;
        divisors must be tensors: CUDA divides by a Python scalar as a multiplication by its reciprocal)."""
        return _device_const(float(v), self.compute_dtype, str(torch.device(device)))

    def statistics(self, flat: torch.Tensor, segments: Segments):
        """Per-segment ``(lo, hi)`` (asymmetric) or ``max |w|`` (symmetric) of a flat memory in the compute dtype;
        None for fixed ranges. Exact (max/min reductions are order-free); an empty segment gives 0."""
        if self.range == "fixed":
            return None
        dt = self.compute_dtype
        f = flat.detach()
        if f.dtype != dt:
            f = f.to(dt)
        fast = _fast.segment_minmax(f, segments.starts(), need_abs=not self.asymmetric) \
            if f.device.type == "cpu" else None
        if fast is not None:
            return fast
        n = len(segments)
        if segments.nonempty() and not segments.many:
            parts = list(f.split(segments.lengths))
            if self.asymmetric:  # multi-tensor reductions: a few kernel launches for the whole memory
                hi = torch.stack(torch._foreach_max(parts))
                lo = torch.stack(torch._foreach_max(list(torch.neg(f).split(segments.lengths)))).neg_()
                return lo, hi
            return torch.stack(torch._foreach_max(list(torch.abs(f).split(segments.lengths))))
        base = torch.zeros(n, dtype=dt, device=f.device)
        seg = segments.ids(f.device)
        if self.asymmetric:
            return (base.clone().scatter_reduce_(0, seg, f, "amin", include_self=False),
                    base.clone().scatter_reduce_(0, seg, f, "amax", include_self=False))
        return base.clone().scatter_reduce_(0, seg, f.abs(), "amax", include_self=False)

    def context_from_statistics(self, stats, num_segments: int, device="cpu") -> QuantContext:
        """The :class:`QuantContext` of ``num_segments`` segments from :meth:`statistics` (module docstring).

        The range parameters are computed in float64 from the exact statistics (as the original computes them with
        Python floats: ``max|w| + eps``, the cap at ``w_max``, the division by L) and rounded once to the compute
        dtype; the asymmetric range ends are the statistics themselves (exact)."""
        dt, f64 = self.compute_dtype, torch.float64
        L = _device_const(float(self.levels), f64, str(torch.device(device)))  # a tensor divisor: true division
        if self.asymmetric:
            if self.range == "fixed":
                lo = self._const(-float(self.q_max) if self.q_min is None else float(self.q_min), device) \
                    .expand(num_segments).clone()
                hi = self._const(float(self.q_max), device).expand(num_segments).clone()
            else:
                lo, hi = (s.to(device=device, dtype=dt) for s in stats)
                if self.range == "clipped":
                    w = float(self.w_max)
                    lo, hi = lo.clamp(-w, w), hi.clamp(-w, w)
            step = self._const((1.0 + RANGE_EPS) / self.levels, device).expand(num_segments).clone()
            return QuantContext(lo, hi, step)
        if self.range == "fixed":
            r = self._const(float(self.q_max), device).expand(num_segments).clone()
            step = self._const((float(self.q_max) + RANGE_EPS) / self.levels, device).expand(num_segments).clone()
            return QuantContext(torch.neg(r), r, step)
        r64 = stats.to(device=device, dtype=f64) + RANGE_EPS
        if self.range == "clipped":
            r64 = torch.minimum(r64, _device_const(float(self.w_max), f64, str(torch.device(device))))
        r, step = r64.to(dt), torch.div(r64, L).to(dt)
        return QuantContext(torch.neg(r), r, step)

    def context(self, flat: torch.Tensor, segments: Segments | None = None) -> QuantContext:
        """The per-segment ranges of the memory ``flat`` (one segment when ``segments`` is None)."""
        segments = segments if segments is not None else Segments.single(flat.numel())
        return self.context_from_statistics(self.statistics(flat.reshape(-1), segments), len(segments),
                                            flat.device)

    # -- encode / decode ----------------------------------------------------------------------------------------
    def _per_word(self, ctx: QuantContext, segments: Segments, encode: bool):
        """Per-word tensors of the torch path: (lo, hi, a, b) with a = step (symmetric) or the divisor s
        (asymmetric encode) or hi - lo (asymmetric decode), b = the live multiplier (asymmetric encode)."""
        lo, hi = segments.expand(ctx.lo), segments.expand(ctx.hi)
        if not self.asymmetric:
            return lo, hi, segments.expand(ctx.step), None
        span = ctx.hi - ctx.lo
        if not encode:
            return lo, hi, segments.expand(span), None
        live = span > 0
        return lo, hi, segments.expand(torch.where(live, span, torch.ones_like(span))), \
            segments.expand(live.to(span.dtype))

    def _encode_torch(self, f: torch.Tensor, ctx: QuantContext, segments: Segments) -> torch.Tensor:
        lo, hi, a, live = self._per_word(ctx, segments, encode=True)
        if self.asymmetric:
            v = torch.sub(f, lo).div_(a).mul_(2).sub_(1).mul_(live).clamp_(-1.0, 1.0)
            x = v.div_(ctx.step[:1].reshape(()) if len(ctx) else self._const(1.0, f.device))
        else:
            x = torch.clamp(f, lo, hi).div_(a)
        x.add_(self.center).clamp_(self.code_min, self.code_max)
        x = x.round_() if self.rounding_mode is Rounding.NEAREST_EVEN else x.trunc_()
        return x.to(self.dtype) if self.native else self.store(x.to(torch.int64))

    def encode(self, flat: torch.Tensor, ctx: QuantContext, segments: Segments | None = None, *,
               deq_out: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
        """Codes of the 1-D memory ``flat`` under ``ctx`` (any context: computed now, or given, e.g. frozen).

        With ``deq_out`` the decoded values are also written there when the fast path fuses both into one pass
        (``deq_out`` may be ``flat`` itself). Returns ``(codes, decoded_written)``."""
        segments = segments if segments is not None else Segments.single(flat.numel())
        f = flat.detach()
        if f.dtype != self.compute_dtype:
            f = f.to(self.compute_dtype)
        if f.device.type == "cpu" and _fast.supports(self):
            codes = torch.empty(f.shape, dtype=self.dtype)
            if _fast.encode(self, f, segments.starts(), ctx, codes, deq_out):
                return codes, deq_out is not None
        return self._encode_torch(f, ctx, segments), False

    def _decode_words(self, codes: torch.Tensor, lo, hi, a, step) -> torch.Tensor:
        t = self.code_values(codes).to(self.compute_dtype)
        if self.center:
            t.sub_(self.center)
        if self.asymmetric:
            t.mul_(step).clamp_(-1.0, 1.0).add_(1).div_(2).mul_(a).add_(lo)
        else:
            t.mul_(a)
        return torch.clamp(t, lo, hi, out=t)

    def decode(self, codes: torch.Tensor, ctx: QuantContext, segments: Segments | None = None, *,
               dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None,
               per_word: tuple | None = None, reference: bool = False) -> torch.Tensor:
        """Weights of the 1-D memory ``codes`` under ``ctx`` as ``dtype`` (optionally into ``out``).

        ``per_word`` is a cache from :meth:`decode_cache` (the torch path's per-word parameters). ``reference``:
        always the torch path, whose clamps are ``min(max(t, lo), hi)`` with NaN propagating (numpy's ``np.clip``)
        for *any* context -- also a non-finite or inverted (``lo > hi``) range, e.g. one whose metadata words took
        bit errors; the C path agrees with it only on finite ranges with ``lo <= hi``."""
        segments = segments if segments is not None else Segments.single(codes.numel())
        if not reference and codes.device.type == "cpu" and dtype == torch.float32 and _fast.supports(self):
            o = out if out is not None else torch.empty(codes.shape, dtype=torch.float32)
            if _fast.decode(self, codes, segments.starts(), ctx, o):
                return o
        pw = per_word if per_word is not None else self.decode_cache(ctx, segments)
        t = self._decode_words(codes, *pw)
        if out is not None:
            return out.copy_(t)
        return t.to(dtype)

    def decode_cache(self, ctx: QuantContext, segments: Segments) -> tuple:
        """The per-word parameters of :meth:`decode`'s torch path (cache them when decoding many patterns)."""
        lo, hi, a, _ = self._per_word(ctx, segments, encode=False)
        return lo, hi, a, (ctx.step[:1].reshape(()) if self.asymmetric and len(ctx) else None)

    def decode_words(self, codes: torch.Tensor, ctx: QuantContext, seg: torch.Tensor) -> torch.Tensor:
        """Weights of a few words holding ``codes`` (1-D), word i in segment ``seg[i]``, in the compute dtype: the
        same arithmetic as :meth:`decode`, bit for bit."""
        seg = seg.to(device=ctx.lo.device, dtype=torch.int64)
        lo, hi = ctx.lo[seg], ctx.hi[seg]
        a = (ctx.hi - ctx.lo)[seg] if self.asymmetric else ctx.step[seg]
        return self._decode_words(codes.reshape(-1), lo, hi, a,
                                  ctx.step[:1].reshape(()) if self.asymmetric and len(ctx) else None)

    def quantize(self, flat: torch.Tensor, segments: Segments | None = None, *, context: QuantContext | None = None,
                 check: bool = True, deq_out: torch.Tensor | None = None):
        """Context (computed unless given) and codes of the 1-D memory ``flat``: ``(codes, ctx, decoded_written)``.

        ``check`` refuses NaN/inf weights (a device sync on GPUs; the training hot path skips it)."""
        if check:
            _check_float(flat, "flat")
        segments = segments if segments is not None else Segments.single(flat.numel())
        flat = flat.reshape(-1)
        ctx = context if context is not None else self.context(flat, segments)
        if len(ctx) != len(segments):
            raise ValueError(f"the context has {len(ctx)} segments, the memory {len(segments)}")
        ctx = ctx.to(device=flat.device, dtype=self.compute_dtype)
        codes, done = self.encode(flat, ctx, segments, deq_out=deq_out)
        return codes, ctx, done

    def code_step(self, ctx: QuantContext) -> torch.Tensor:
        """Per-segment weight change of one code unit inside the range (dw/dq): ``step`` (symmetric) or
        ``step * (hi - lo) / 2`` (asymmetric). Outside the range decoding clamps (dw/dq = 0)."""
        if self.asymmetric:
            return ctx.step * (ctx.hi - ctx.lo) / 2
        return ctx.step

    def dweight_dcode(self, words: torch.Tensor, ctx: QuantContext, segments: Segments) -> torch.Tensor:
        """float64 ``[N]``: d(weight)/d(code) of every word (:meth:`code_step` of its segment), the linearization
        that attacks in code space use."""
        return segments.expand(self.code_step(ctx).to(device=words.device, dtype=torch.float64))


def scheme_from_dict(d: dict) -> QuantScheme:
    return QuantScheme(**d)


def normal(bits: int = 8, granularity: str = "tensor") -> QuantScheme:
    """The paper's fragile baseline: global fixed q_max = 1, symmetric, unsigned offset codes, truncation (a fixed
    range is the same for every segment, so its granularity changes no code)."""
    return QuantScheme(bits=bits, signed=False, range="fixed", q_max=1.0, asymmetric=False, rounding="trunc",
                       granularity=granularity, label="normal")


def rquant(bits: int = 8, w_max: float | None = None, granularity: str = "tensor") -> QuantScheme:
    """Robust quantization: per-tensor (per-channel, per-group) clipped adaptive, asymmetric, unsigned offset codes,
    round to nearest.

    ``w_max=None`` gives the adaptive range (no cap); with weight clipping in training pass its ``w_max``.
    """
    return QuantScheme(bits=bits, signed=False, range="clipped" if w_max is not None else "adaptive",
                       w_max=w_max, asymmetric=True, rounding="round", granularity=granularity, label="rquant")


# -- one tensor ------------------------------------------------------------------------------------------------
def quantize_tensor(w: torch.Tensor, scheme: QuantScheme, context: QuantContext | None = None):
    """Quantize one tensor (one segment): ``(codes of w's shape, QuantContext of one segment)``."""
    _check_float(w)
    codes, ctx, _ = scheme.quantize(w.detach().reshape(-1), Segments.single(w.numel()), context=context,
                                    check=False)
    return codes.view(w.shape), ctx


def dequantize_tensor(codes: torch.Tensor, ctx: QuantContext, scheme: QuantScheme,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode one tensor's codes (one-segment context) into ``dtype``."""
    if ctx.lo.dim() == 0:
        ctx = QuantContext(ctx.lo.reshape(1), ctx.hi.reshape(1), ctx.step.reshape(1))
    return scheme.decode(codes.reshape(-1), ctx, Segments.single(codes.numel()), dtype=dtype).view(codes.shape)
