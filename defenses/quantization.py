"""Quantization of float weights into real integer codes, and back.

Conventions (see the paper-protocol design note):

* ``m`` bits per word. Signed schemes store two's complement codes in int8/int16/int32 (``m`` in {8, 16, 32}).
  Unsigned (offset) schemes store ``c + 2**(m-1)`` in uint8 for ``2 <= m <= 8``; bits ``m..7`` are protected.
* Every tensor is mapped affinely onto [-1, 1] by a per-tensor *center* ``mid`` and *half range* ``half``:
  ``x = clamp((w - mid) / half, -1, 1)``, then ``c = T(x * L)`` with ``L = 2**(m-1) - 1`` and ``T`` rounding
  (to nearest, ties to even) or truncation (toward zero). Dequantization is ``w_hat = c * scale + mid`` with
  ``scale = half / L`` (the step ``delta``).

  - symmetric, fixed range ``q_max``: ``mid = 0``, ``half = q_max``;
  - symmetric, adaptive: ``half = max|w|``; clipped adaptive: ``half = min(max|w|, w_max)``;
  - asymmetric: ``[lo, hi] = [min w, max w]`` (clipped: both clamped to ``[-w_max, w_max]``),
    ``mid = (hi + lo) / 2``, ``half = (hi - lo) / 2``.

  A tensor with ``half == 0`` (constant, e.g. zero-initialised biases, or a clipped asymmetric range whose ends
  both clamp to the same bound) uses ``half = 1`` without NaN; every word of it maps to the center code and
  dequantizes exactly to ``mid``.

The same formulas run on one tensor (:func:`quantize_tensor`, the reference) and on a flat memory of many tensors
with per-tensor (segmented) statistics (:func:`quantize_flat`); both give bit-identical codes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from bitbench.configs.spec import SpecError

__all__ = [
    "QuantScheme",
    "normal",
    "rquant",
    "scheme_from_dict",
    "quantize_tensor",
    "dequantize_tensor",
    "quantize_flat",
    "dequantize_flat",
    "segment_ids",
]

_RANGES = ("fixed", "adaptive", "clipped")
_ROUNDING = ("round", "trunc")
_SIGNED_DTYPES = {8: torch.int8, 16: torch.int16, 32: torch.int32}


@dataclass(frozen=True)
class QuantScheme:
    """How float weights become integer codes.

    Attributes:
        bits: m, the number of bits per word (signed: 8, 16 or 32; unsigned: 2..8).
        signed: two's complement codes (True) or unsigned offset codes in uint8 (False).
        range: ``'fixed'`` (use ``q_max``), ``'adaptive'`` (per tensor) or ``'clipped'`` (per tensor, capped by
            ``w_max``).
        q_max: the fixed range for ``range='fixed'``.
        w_max: the cap for ``range='clipped'`` (> 0).
        asymmetric: per-tensor [min, max] range instead of a symmetric [-r, r].
        rounding: ``'round'`` (to nearest) or ``'trunc'`` (toward zero).
        label: optional preset name shown by :attr:`name` (not part of equality).
    """

    bits: int = 8
    signed: bool = False
    range: str = "adaptive"
    q_max: float = 1.0
    w_max: float | None = None
    asymmetric: bool = False
    rounding: str = "round"
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
            raise SpecError(f"rounding must be one of {_ROUNDING}, got {self.rounding!r}")
        if self.range == "fixed":
            if not (float(self.q_max) > 0) or float(self.q_max) == float("inf"):
                raise SpecError(f"q_max must be a finite number > 0, got {self.q_max!r}")
            if self.asymmetric:
                raise SpecError("range='fixed' is symmetric by definition; asymmetric=True needs range "
                                 "'adaptive' or 'clipped'")
        if self.range == "clipped":
            if self.w_max is None or not (float(self.w_max) > 0) or float(self.w_max) == float("inf"):
                raise SpecError(f"range='clipped' needs a finite w_max > 0, got w_max={self.w_max!r}")
        elif self.w_max is not None and not (float(self.w_max) > 0):
            raise SpecError(f"w_max must be > 0, got {self.w_max!r}")

    # -- derived properties -------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the codes."""
        return _SIGNED_DTYPES[self.bits] if self.signed else torch.uint8

    @property
    def levels(self) -> int:
        """L = 2**(m-1) - 1: the largest code magnitude produced by quantization."""
        return (1 << (self.bits - 1)) - 1

    @property
    def center(self) -> int:
        """Code of the value ``mid`` (0 for signed codes, 2**(m-1) for unsigned ones)."""
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
        rng = {"fixed": f"fixed{self.q_max:g}", "adaptive": "adaptive", "clipped": f"clipped{self.w_max or 0:g}"}
        base = "-".join([f"{'s' if self.signed else 'u'}{self.bits}", rng[self.range],
                         "asym" if self.asymmetric else "sym", self.rounding])
        return f"{self.label}({base})" if self.label else base

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict:
        return asdict(self)


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


# -- range parameters ----------------------------------------------------------------------------------------------
def _finish_range(lo: torch.Tensor | None, hi: torch.Tensor | None, amax: torch.Tensor | None,
                  scheme: QuantScheme, like: torch.Tensor):
    """Per-tensor (mid, half, live) from statistics; tensors of shape [T] (or 0-dim) in the compute dtype.

    ``live`` is None, or (for a clipped asymmetric range, the only one where ``half == 0`` can hold for words that
    differ from ``mid``) a bool tensor, False where ``half`` was 0 (see :func:`_codes_from_x`)."""
    dt = scheme.compute_dtype
    if scheme.range == "fixed":
        half = torch.full_like(amax if amax is not None else lo, float(scheme.q_max), dtype=dt)
        mid = torch.zeros_like(half)
        return mid, half, None
    if scheme.asymmetric:
        lo, hi = lo.to(dt), hi.to(dt)
        if scheme.range == "clipped":
            w = float(scheme.w_max)
            lo, hi = lo.clamp(-w, w), hi.clamp(-w, w)
        mid = (hi + lo) / 2
        half = (hi - lo) / 2
    else:
        half = amax.to(dt)
        if scheme.range == "clipped":
            half = half.clamp(max=float(scheme.w_max))
        mid = torch.zeros_like(half)
    positive = half > 0
    live = positive if (scheme.asymmetric and scheme.range == "clipped") else None
    half = torch.where(positive, half, torch.ones_like(half))
    return mid, half, live


def _codes_from_x(w: torch.Tensor, mid, half, scheme: QuantScheme, live=None) -> torch.Tensor:
    """``live`` (broadcastable to ``w``): False where the tensor's range is degenerate (``half == 0`` before it
    was replaced by 1); those words get the center code. Implemented as a per-tensor multiplier ``L * live``
    (``x * 0 = 0`` for the clamped, finite ``x``), so it costs no extra pass."""
    dt = scheme.compute_dtype
    x = ((w.to(dt) - mid) / half).clamp_(-1.0, 1.0)
    if live is None:
        x.mul_(scheme.levels)
    else:
        x.mul_(live)
    x = x.round_() if scheme.rounding == "round" else x.trunc_()
    if not scheme.signed:
        x.add_(scheme.center)
    return x.to(scheme.dtype)


def _levels(live, scheme: QuantScheme):
    """Per-tensor multiplier: L where the range is live, 0 where it is degenerate (None: L everywhere)."""
    if live is None:
        return None
    dt = scheme.compute_dtype  # built in the compute dtype: 2**31 - 1 is not a float32
    return torch.where(live, torch.tensor(float(scheme.levels), dtype=dt, device=live.device),
                       torch.zeros((), dtype=dt, device=live.device))


def _check_float(w: torch.Tensor, what: str = "w"):
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"{what} must be a floating point tensor, got "
                        f"{w.dtype if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w.numel() and not bool(torch.isfinite(w).all()):
        raise ValueError(f"{what} contains NaN or infinite values; cannot quantize")


def quantize_tensor(w: torch.Tensor, scheme: QuantScheme):
    """Reference: quantize one tensor. Returns ``(codes, scale, mid)``; ``scale``/``mid`` are 0-dim tensors."""
    _check_float(w)
    dt = scheme.compute_dtype
    wd = w.detach()
    if wd.numel() == 0:  # same (mid, scale) as an empty segment of quantize_flat
        z = torch.zeros((), dtype=dt, device=w.device)
        mid, half, _ = _finish_range(z, z, z, scheme, wd)
        return torch.empty(w.shape, dtype=scheme.dtype, device=w.device), half / scheme.levels, mid
    lo = wd.min().to(dt) if scheme.asymmetric else None
    hi = wd.max().to(dt) if scheme.asymmetric else None
    amax = wd.abs().max().to(dt) if not scheme.asymmetric else None
    mid, half, live = _finish_range(lo, hi, amax, scheme, wd)
    codes = _codes_from_x(wd, mid, half, scheme, _levels(live, scheme))
    return codes, half / scheme.levels, mid


def dequantize_tensor(codes: torch.Tensor, scale, mid, scheme: QuantScheme,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference: ``(code - center) * scale + mid`` as ``dtype``."""
    return dequantize_expanded(codes, torch.as_tensor(scale), torch.as_tensor(mid), scheme, dtype=dtype)


# -- flat (segmented) versions ------------------------------------------------------------------------------------
def segment_starts(lengths, device=None) -> torch.Tensor:
    """int64 ``[0, l0, l0 + l1, ..., N]``: segment boundaries of a flat memory."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.long)
    if len(lengths):
        out[1:] = torch.cumsum(torch.as_tensor(list(lengths), dtype=torch.long), 0)
    return out.to(device) if device is not None else out


def segment_ids(lengths, device=None) -> torch.Tensor:
    """Word -> tensor index for a flat memory of tensors with the given lengths."""
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


def expand_segments(vals: torch.Tensor, seg: torch.Tensor, lengths=None) -> torch.Tensor:
    """Per-tensor values -> per-word values (``vals[seg]``).

    On CPUs with known ``lengths`` a concatenation of expanded scalars (about 2x faster than an index gather);
    on GPUs one gather kernel.
    """
    if lengths is not None and vals.device.type == "cpu":
        return torch.cat([v.expand(n) for v, n in zip(vals.unbind(), lengths)])
    return vals[seg]


def _segment_stats(f: torch.Tensor, seg: torch.Tensor, num_segments: int, lengths, scheme: QuantScheme,
                   starts: torch.Tensor | None = None):
    """Per-tensor (lo, hi, amax) of a flat memory; exact (reductions of max/min are order-free)."""
    dt = scheme.compute_dtype
    if scheme.range == "fixed":
        return None, None, torch.zeros(num_segments, dtype=dt, device=f.device)
    if starts is not None and f.device.type == "cpu":
        from bitbench import kernels

        r = kernels.fused_segment_minmax(f, starts, need_abs=not scheme.asymmetric)
        if r is not None:
            return (r[0], r[1], None) if scheme.asymmetric else (None, None, r)
    if lengths is not None and num_segments and min(lengths) > 0:
        # Multi-tensor reductions over per-tensor views (a few kernel launches for the whole memory).
        if scheme.asymmetric:
            hi = torch.stack(torch._foreach_max(list(f.split(lengths))))
            lo = torch.stack(torch._foreach_max(list(torch.neg(f).split(lengths)))).neg_()
            return lo, hi, None
        return None, None, torch.stack(torch._foreach_max(list(torch.abs(f).split(lengths))))
    base = torch.zeros(num_segments, dtype=dt, device=f.device)
    if scheme.asymmetric:
        lo = base.clone().scatter_reduce_(0, seg, f, "amin", include_self=False)
        hi = base.clone().scatter_reduce_(0, seg, f, "amax", include_self=False)
        return lo, hi, None
    return None, None, base.clone().scatter_reduce_(0, seg, f.abs(), "amax", include_self=False)


def quantize_flat(flat: torch.Tensor, seg: torch.Tensor, num_segments: int, scheme: QuantScheme, *,
                  lengths: list[int] | None = None, check: bool = True):
    """Quantize a flat memory of ``num_segments`` tensors at once (per-tensor ranges by segmented reductions).

    Args:
        flat: 1-D float tensor, the tensors concatenated in C order.
        seg: 1-D int64 tensor, ``seg[i]`` = index of the tensor that word ``i`` belongs to (non-decreasing).
        lengths: the tensors' sizes (enables multi-tensor reductions, faster than scatter reductions).
        check: refuse NaN/inf weights (a device sync on GPUs; the training hot path skips it).
    Returns:
        ``(codes, scale, mid)``: codes 1-D of ``scheme.dtype``; scale and mid of shape ``[num_segments]``.
    Bit-identical to :func:`quantize_tensor` applied tensor by tensor.
    """
    codes, scale, mid, _ = quantize_flat_fused(flat, seg, num_segments, scheme, lengths=lengths, check=check)
    return codes, scale, mid


def quantize_flat_fused(flat: torch.Tensor, seg: torch.Tensor, num_segments: int, scheme: QuantScheme, *,
                        lengths: list[int] | None = None, check: bool = True, starts: torch.Tensor | None = None,
                        deq_out: torch.Tensor | None = None):
    """:func:`quantize_flat`, optionally also writing the dequantized values into ``deq_out`` (which may be
    ``flat`` itself). On CPUs with the C extension both happen in one fused pass (``starts``: int64 segment
    boundaries, ``[0, ..., N]``). Returns ``(codes, scale, mid, deq_done)``; bit-identical either way."""
    if check:
        _check_float(flat, "flat")
    dt = scheme.compute_dtype
    f = flat.detach()
    if f.dtype != dt:
        f = f.to(dt)
    lo, hi, amax = _segment_stats(f, seg, num_segments, lengths, scheme, starts)
    mid, half, live = _finish_range(lo, hi, amax, scheme, f)
    lev = _levels(live, scheme)
    scale = half / scheme.levels
    if starts is not None and f.device.type == "cpu":
        from bitbench import kernels

        codes = torch.empty(f.shape, dtype=scheme.dtype)
        lev_t = lev if lev is not None else torch.full_like(half, float(scheme.levels))
        if kernels.fused_quant_dequant(f, starts, mid, half, lev_t, scale, rounding=scheme.rounding == "round",
                                       center=scheme.center, codes=codes, deq=deq_out):
            return codes, scale, mid, deq_out is not None
    codes = _codes_from_x(f, expand_segments(mid, seg, lengths), expand_segments(half, seg, lengths), scheme,
                          None if lev is None else expand_segments(lev, seg, lengths))
    return codes, scale, mid, False


def dequantize_flat(codes: torch.Tensor, seg: torch.Tensor, scale: torch.Tensor, mid: torch.Tensor,
                    scheme: QuantScheme, dtype: torch.dtype = torch.float32,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantize a flat memory: ``(code - center) * scale[seg] + mid[seg]``; optionally into ``out``."""
    return dequantize_expanded(codes, scale[seg], mid[seg], scheme, dtype=dtype, out=out)


def dequantize_expanded(codes: torch.Tensor, scale_w: torch.Tensor, mid_w: torch.Tensor, scheme: QuantScheme,
                        dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """Like :func:`dequantize_flat` with per-word scale/mid already expanded (the fast path for many patterns)."""
    dt = scheme.compute_dtype
    x = codes.to(dt)
    if scheme.center:
        x.sub_(scheme.center)
    # two correctly rounded ops (no FMA): identical on every path
    if out is not None and out.dtype == dt and out.shape == x.shape:
        return torch.mul(x, scale_w, out=out).add_(mid_w)
    x.mul_(scale_w).add_(mid_w)
    if out is not None:
        return out.copy_(x)
    return x.to(dtype)
