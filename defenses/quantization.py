"""Quantization schemes: how float weights become integer codes (encode), and codes become weights (decode).

:class:`QuantScheme` is the one definition of the formulas: the per-segment range parameters computed from
statistics (:meth:`QuantScheme.context`), encoding and decoding of a flat memory of segments (tensors), and the
few-word decoding adversarial attacks use. A fast path (the C kernel of :mod:`bitbench.kernels.fused_quant`)
declares which schemes it handles (:func:`bitbench.kernels.fused_quant.supports`) and gives the same bits; every
other scheme or device runs the torch path below.

The numerics are those of the method's original implementation (shared/design/original-numerics.md). ``m`` bits,
``L = 2^(m-1) - 1``, ``c`` the center code (``2^(m-1)`` for unsigned offset codes, 0 for two's complement codes),
``eps = 0.001``. Per segment (tensor) a :class:`QuantContext` ``(lo, hi, step)``:

* symmetric, fixed ``q_max``: ``[lo, hi] = [-q_max, q_max]``, ``step = (q_max + eps) / L``;
* symmetric, adaptive: ``r = max|w| + eps``; clipped: ``r = min(max|w| + eps, w_max)``; ``[lo, hi] = [-r, r]``,
  ``step = r / L``;
* asymmetric: ``[lo, hi] = [min w, max w]`` (clipped: both clamped to ``[-w_max, w_max]``; fixed: the given
  ``[q_min, q_max]``), no epsilon; ``step = (1 + eps) / L``, the step of the fixed symmetric scheme at q_max = 1 that
  quantizes the tensor mapped affinely onto [-1, 1].

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
to the center code and decodes to the constant under any code. Codes and contexts are computed in float32, except
32-bit codes, computed in float64 (float32 cannot resolve their steps).

Storage: signed codes are int8/int16/int32 (``m`` in 8, 16, 32); unsigned offset codes are uint8 for
``2 <= m <= 8``, their bits ``m..7`` are protected (never flip).

Layout: a flat memory is cut into :class:`Segments`, one context each. Per-tensor schemes use one segment per
tensor; finer contexts (per output channel, per group of g weights) are more, shorter segments of the same memory,
so a later memory format only needs its own context rule and encode/decode, with the same flat contract
(:meth:`QuantScheme.quantize`, :meth:`QuantScheme.decode`, :meth:`QuantScheme.decode_segment_words`).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import torch

from bitbench.configs.spec import SpecError
from bitbench.kernels import fused_quant as _fast
from bitbench.kernels.fused_quant import Rounding

__all__ = [
    "QuantScheme",
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
_SIGNED_DTYPES = {8: torch.int8, 16: torch.int16, 32: torch.int32}


def _positive_finite(v) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f > 0 and f != float("inf")


def _finite(v) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and abs(f) != float("inf")


# -- layout of a flat memory -----------------------------------------------------------------------------------
def segment_starts(lengths, device=None) -> torch.Tensor:
    """int64 ``[0, l0, l0 + l1, ..., N]``: segment boundaries of a flat memory."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.long)
    if len(lengths):
        out[1:] = torch.cumsum(torch.as_tensor(list(lengths), dtype=torch.long), 0)
    return out.to(device) if device is not None else out


def segment_ids(lengths, device=None) -> torch.Tensor:
    """Word -> segment index for a flat memory of segments with the given lengths."""
    lengths = torch.as_tensor(list(lengths), dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


class Segments:
    """How a flat memory splits into segments (one per tensor; per-tensor contexts), with per-device caches of
    the boundaries (int64 ``[S + 1]``) and the word -> segment ids (int64 ``[N]``)."""

    def __init__(self, lengths):
        self.lengths = [int(n) for n in lengths]
        if any(n < 0 for n in self.lengths):
            raise ValueError(f"segment lengths must be >= 0, got {self.lengths}")
        self._starts: dict = {}
        self._ids: dict = {}

    @classmethod
    def single(cls, n: int) -> "Segments":
        return cls([n])

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def starts(self, device="cpu") -> torch.Tensor:
        key = str(torch.device(device))
        if key not in self._starts:
            self._starts[key] = segment_starts(self.lengths, device=device)
        return self._starts[key]

    def ids(self, device="cpu") -> torch.Tensor:
        key = str(torch.device(device))
        if key not in self._ids:
            self._ids[key] = segment_ids(self.lengths, device=device)
        return self._ids[key]

    def expand(self, vals: torch.Tensor) -> torch.Tensor:
        """Per-segment values ``[S]`` -> per-word values ``[N]``: on CPUs a concatenation of expanded scalars
        (about 2x faster than a gather), on GPUs one gather kernel."""
        if vals.device.type == "cpu":
            return torch.cat([v.expand(n) for v, n in zip(vals.unbind(), self.lengths)]) if self.lengths \
                else vals.new_empty(0)
        return vals[self.ids(vals.device)]

    def nonempty(self) -> bool:
        return bool(self.lengths) and min(self.lengths) > 0


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
class QuantScheme:
    """How float weights become integer codes and back (formulas: the module docstring).

    Attributes:
        bits: m, the number of bits per word (signed: 8, 16 or 32; unsigned: 2..8).
        signed: two's complement codes (True) or unsigned offset codes in uint8 (False).
        range: ``'fixed'`` (``q_max``, or ``[q_min, q_max]`` when asymmetric), ``'adaptive'`` (per tensor) or
            ``'clipped'`` (per tensor, capped by ``w_max``).
        q_max: the fixed range (symmetric ``[-q_max, q_max]``; the upper end of an asymmetric fixed range).
        q_min: the lower end of an asymmetric fixed range (default ``-q_max``).
        w_max: the cap for ``range='clipped'`` (> 0).
        asymmetric: a ``[min, max]`` range mapped onto [-1, 1] instead of a symmetric ``[-r, r]``.
        rounding: ``'round'`` (to nearest, ties to even) or ``'trunc'`` (the cast after the offset); see
            :attr:`rounding_mode`.
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
    label: str | None = field(default=None, compare=False)

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"bits must be an int, got {self.bits!r}")
        if self.signed:
            if self.bits not in _SIGNED_DTYPES:
                raise SpecError(
                    f"signed codes need bits in {sorted(_SIGNED_DTYPES)} (int8/int16/int32), got bits={self.bits}")
        elif not 2 <= self.bits <= 8:
            raise SpecError(
                f"unsigned (offset) codes live in uint8 and need 2 <= bits <= 8, got bits={self.bits}; "
                "use signed=True for 16 or 32 bits")
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
        elif self.q_min is not None:
            raise SpecError("q_min belongs to range='fixed' with asymmetric=True")
        if self.range == "clipped" and (self.w_max is None or not _positive_finite(self.w_max)):
            raise SpecError(f"range='clipped' needs a finite w_max > 0, got w_max={self.w_max!r}")
        if self.w_max is not None and not _positive_finite(self.w_max):
            raise SpecError(f"w_max must be a finite number > 0, got {self.w_max!r}")

    # -- derived properties -------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the codes."""
        return _SIGNED_DTYPES[self.bits] if self.signed else torch.uint8

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
        """Bit mask of storage bits that never flip (bits m..7 of unsigned codes with m < 8)."""
        if self.signed:
            return 0
        return 0xFF & ~((1 << self.bits) - 1)

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
        base = "-".join([f"{'s' if self.signed else 'u'}{self.bits}", rng,
                         "asym" if self.asymmetric else "sym", self.rounding])
        return f"{self.label}({base})" if self.label else base

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["q_min"] is None:  # keeps the dict (and checkpoint keys) of schemes without it short
            d.pop("q_min")
        return d

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
        if segments.nonempty():
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
        """The :class:`QuantContext` of ``num_segments`` segments from :meth:`statistics` (module docstring)."""
        dt = self.compute_dtype
        eps = self._const(RANGE_EPS, device)
        L = self._const(float(self.levels), device)
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
            step = torch.div(self._const(1.0, device) + eps, L).expand(num_segments).clone()
            return QuantContext(lo, hi, step)
        if self.range == "fixed":
            r = self._const(float(self.q_max), device).expand(num_segments).clone()
            step = torch.div(r + eps, L)
        else:
            r = stats.to(device=device, dtype=dt) + eps
            if self.range == "clipped":
                r = torch.minimum(r, self._const(float(self.w_max), device))
            step = torch.div(r, L)
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
        return x.to(self.dtype)

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
        if not self.signed and self.bits < 8:  # codes with protected bits set read as the largest code
            codes = codes.clamp(self.code_min, self.code_max)
        t = codes.to(self.compute_dtype)
        if self.center:
            t.sub_(self.center)
        if self.asymmetric:
            t.mul_(step).clamp_(-1.0, 1.0).add_(1).div_(2).mul_(a).add_(lo)
        else:
            t.mul_(a)
        return torch.clamp(t, lo, hi, out=t)

    def decode(self, codes: torch.Tensor, ctx: QuantContext, segments: Segments | None = None, *,
               dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None,
               per_word: tuple | None = None) -> torch.Tensor:
        """Weights of the 1-D memory ``codes`` under ``ctx`` as ``dtype`` (optionally into ``out``).

        ``per_word`` is a cache from :meth:`decode_cache` (the torch path's per-word parameters)."""
        segments = segments if segments is not None else Segments.single(codes.numel())
        if codes.device.type == "cpu" and dtype == torch.float32 and _fast.supports(self):
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

    def decode_segment_words(self, codes: torch.Tensor, ctx: QuantContext, t: int) -> torch.Tensor:
        """Weights of a few words of segment ``t`` holding ``codes`` (any shape), in the compute dtype: the same
        arithmetic as :meth:`decode`, bit for bit."""
        c = ctx[t]
        n = codes.numel()
        lo, hi = c.lo.expand(n), c.hi.expand(n)
        a = (c.hi - c.lo).expand(n) if self.asymmetric else c.step.expand(n)
        return self._decode_words(codes.reshape(-1), lo, hi, a, c.step if self.asymmetric else None)

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


def scheme_from_dict(d: dict) -> QuantScheme:
    return QuantScheme(**d)


def normal(bits: int = 8) -> QuantScheme:
    """The paper's fragile baseline: global fixed q_max = 1, symmetric, unsigned offset codes, truncation."""
    return QuantScheme(bits=bits, signed=False, range="fixed", q_max=1.0, asymmetric=False, rounding="trunc",
                       label="normal")


def rquant(bits: int = 8, w_max: float | None = None) -> QuantScheme:
    """Robust quantization: per-tensor (clipped) adaptive, asymmetric, unsigned offset codes, round to nearest.

    ``w_max=None`` gives the adaptive range (no cap); with weight clipping in training pass its ``w_max``.
    """
    return QuantScheme(bits=bits, signed=False, range="clipped" if w_max is not None else "adaptive",
                       w_max=w_max, asymmetric=True, rounding="round", label="rquant")


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
