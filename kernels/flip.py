"""Seeded random bit flips (the exact pattern of docs/patterns.md) and backend selection.

Three backends compute the same bits: ``torch`` (reference, any device), ``c`` (cffi extension, CPU tensors) and
``cupy`` (CUDA tensors). The default picks the fastest one available for the tensor's device; the ``backend=``
keyword or the environment variable ``BITBENCH_KERNEL_BACKEND`` (``auto``, ``torch``, ``c`` or ``cupy``) forces one.
The environment variable applies to the devices it fits: ``c`` forces the C backend for CPU tensors (an error if it
is not built) and leaves CUDA tensors on auto; ``cupy`` likewise for CUDA tensors; ``torch`` forces the reference
everywhere.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import _c_backend, _cupy_backend, _torch_backend
from ._common import (check_bits, check_rate, check_same, check_tensor, check_uint, from_pattern, int_pattern,
                      low_mask, mask_tensor, threshold, to_pattern, word_view)

ENV_BACKEND = "BITBENCH_KERNEL_BACKEND"
BACKENDS = ("torch", "c", "cupy")
_CHOICES = ("auto",) + BACKENDS
_MAX_INDEX = 1 << 63  # word indices are held in int64 by the reference


def _env_backend() -> str:
    value = os.environ.get(ENV_BACKEND, "").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"environment variable {ENV_BACKEND}={value!r} is not one of {', '.join(_CHOICES)}")
    return value


def resolve_backend(device: torch.device | str, backend: str | None = None) -> str:
    """The backend that random_flip uses for tensors on ``device`` (``backend``: None, 'auto', 'torch', 'c',
    'cupy'; None reads BITBENCH_KERNEL_BACKEND)."""
    device = torch.device(device)
    explicit = backend is not None
    if explicit:
        if not isinstance(backend, str) or backend.lower() not in _CHOICES:
            raise ValueError(f"backend={backend!r} is not one of {', '.join(map(repr, _CHOICES))} (or None)")
        backend = backend.lower()
    else:
        backend = _env_backend()
    where = "backend" if explicit else f"{ENV_BACKEND}"
    if backend == "torch":
        return "torch"
    if device.type == "cpu":
        if backend == "c":
            if not _c_backend.available():
                raise RuntimeError(f"{where}='c' was requested but {_c_backend.error()}")
            return "c"
        if backend == "cupy" and explicit:
            raise ValueError("backend='cupy' needs a CUDA tensor; x is on the CPU (use 'c', 'torch' or None)")
        return "c" if _c_backend.available() else "torch"
    if device.type == "cuda":
        if backend == "cupy":
            if not _cupy_backend.available():
                raise RuntimeError(f"{where}='cupy' was requested but {_cupy_backend.error()}")
            return "cupy"
        if backend == "c" and explicit:
            raise ValueError("backend='c' needs a CPU tensor; x is on a CUDA device (use 'cupy', 'torch' or None)")
        return "cupy" if _cupy_backend.available() else "torch"
    if backend in ("c", "cupy") and explicit:
        raise ValueError(f"backend={backend!r} does not run on device type {device.type!r}; use 'torch'")
    return "torch"


def backends() -> dict:
    """Which backends are available and which one serves CPU and CUDA tensors.

    Returns {'cpu': 'c' | 'torch', 'cuda': 'cupy' | 'torch' | None (no CUDA), 'available': [...],
    'c_error': reason or None, 'cupy_error': reason or None, 'c_build': compile info or None,
    'env': value of BITBENCH_KERNEL_BACKEND or None}."""
    available = ["torch"]
    if _c_backend.available():
        available.append("c")
    if _cupy_backend.available():
        available.append("cupy")

    def pick(dev):
        try:
            return resolve_backend(dev)
        except (RuntimeError, ValueError) as e:
            return f"error: {e}"

    return {
        "cpu": pick("cpu"),
        "cuda": pick("cuda") if torch.cuda.is_available() else None,
        "available": available,
        "c_error": _c_backend.error(),
        "cupy_error": _cupy_backend.error(),
        "c_build": _c_backend.build_info(),
        "env": os.environ.get(ENV_BACKEND) or None,
    }


def _run(x, p01, p10, seed, bits, protected, offset, out, backend, mask_only):
    p01 = check_rate(p01, "p01")
    p10 = p01 if p10 is None else check_rate(p10, "p10")
    xw = word_view(x)
    if xw is not x:  # a float tensor: its raw bits, as the integer words of the same width
        if out is not None and (not isinstance(out, torch.Tensor) or out.dtype != (x.dtype if not mask_only
                                                                                   else xw.dtype)):
            raise TypeError(f"out must be a tensor of dtype {x.dtype if not mask_only else xw.dtype}")
        res = _flip(xw, threshold(p01), threshold(p10), seed, bits, protected, offset,
                    None if out is None else word_view(out), backend, mask_only)
        return res if mask_only else res.view(x.dtype)
    return _flip(x, threshold(p01), threshold(p10), seed, bits, protected, offset, out, backend, mask_only)


def _flip(x, t01, t10, seed, bits, protected, offset, out, backend, mask_only):
    """The flip rule with integer thresholds t01, t10 (every backend computes the same bits)."""
    width = check_tensor(x, "x")
    m = check_bits(bits, width)
    seed = check_uint(seed, "seed", 64)
    offset = check_uint(offset, "offset", 63)
    n = x.numel()
    if offset + n > _MAX_INDEX:
        raise ValueError(f"offset={offset} + x.numel()={n} exceeds 2^63 words")

    prot_const, prot = 0, None
    if isinstance(protected, torch.Tensor):
        prot = mask_tensor(protected, x, width, "protected")
    elif protected is not None:
        prot_const = int_pattern(protected, width, "protected")
    attack = low_mask(m) & ~prot_const

    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    else:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor (or None); got {type(out).__name__}")
        check_same(x, out, "x", "out")
    name = resolve_backend(x.device, backend)

    if n == 0:
        return out
    if (t01 == 0 and t10 == 0) or attack == 0:  # nothing can flip
        if mask_only:
            out.zero_()
        elif out is not x:
            out.copy_(x)
        return out

    xc = x.contiguous()
    pc = prot.contiguous() if prot is not None else None
    target = out if out.is_contiguous() else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if name == "cupy":
        try:
            _cupy_backend.flip(xc, target, pc, width, attack, offset, seed, t01, t10, mask_only)
        except Exception as e:
            if str(backend or _env_backend()).lower() == "cupy":
                raise  # forced: do not hide the failure
            _cupy_backend._error = f"CuPy kernel failed ({type(e).__name__}: {e})"
            _cupy_backend._cupy = None
            warnings.warn(f"kernels: {_cupy_backend._error}; using the torch reference on the GPU",
                          RuntimeWarning, stacklevel=3)
            name = "torch"
    if name == "c":
        _c_backend.flip(xc, target, pc, width, attack, offset, seed, t01, t10, mask_only)
    elif name == "torch":
        _torch_backend.flip(xc, target, pc, attack, offset, seed, t01, t10, mask_only)
    if target is not out:
        out.copy_(target)
    return out


_MAX_KERNEL_PAIRS = 8  # distinct per-bit threshold pairs served by the fast kernels; more: the torch reference


def threshold_flip_mask(x: torch.Tensor, t01, t10=None, *, seed: int, bits: int | None = None, protected=None,
                        offset: int = 0, backend: str | None = None) -> torch.Tensor:
    """The xor mask of the flip rule with integer thresholds given per bit (x's dtype, x's shape).

    Bit b of word i (i = offset + j for element j of x in C order) flips iff it is attackable (b < bits, not
    protected) and r(seed, i, b) < t01[j, b] when the bit is 0, < t10[j, b] when it is 1 -- the rule of
    :func:`random_flip` with a threshold per cell (``T(p) = min(floor(p * 2^32), 2^32)``, see :func:`threshold`).

    Args:
        t01, t10: Python ints or int64 tensors broadcastable to ``[x.numel(), bits]`` with values in
            [0, 2^32]; t10 defaults to t01. Scalar thresholds give exactly :func:`random_flip_mask`.
        seed, bits, protected, offset, backend: as for :func:`random_flip`.
    A few distinct threshold pairs (a profiled chip with a handful of cell classes) run on the fast backends,
    one launch per pair; otherwise the torch reference compares every cell.
    """
    width = check_tensor(x, "x")
    m = check_bits(bits, width)
    t10 = t01 if t10 is None else t10
    if not isinstance(t01, torch.Tensor) and not isinstance(t10, torch.Tensor):
        return _flip(x, _check_threshold(t01), _check_threshold(t10), seed, m, protected, offset, None, backend,
                     True)
    n = x.numel()
    t01 = torch.as_tensor(t01, dtype=torch.int64, device=x.device).expand(n, m)
    t10 = torch.as_tensor(t10, dtype=torch.int64, device=x.device).expand(n, m)
    if n and (int(torch.minimum(t01.min(), t10.min())) < 0 or int(torch.maximum(t01.max(), t10.max())) > 1 << 32):
        raise ValueError("thresholds must be integers in [0, 2^32]")
    seed = check_uint(seed, "seed", 64)
    offset = check_uint(offset, "offset", 63)
    prot_const, prot = 0, None
    if isinstance(protected, torch.Tensor):
        prot = to_pattern(mask_tensor(protected, x, width, "protected")).reshape(-1)
    elif protected is not None:
        prot_const = int_pattern(protected, width, "protected")
    attack = low_mask(m) & ~prot_const
    out = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    if n == 0 or attack == 0:
        return out
    xu = to_pattern(x.reshape(-1))
    pairs = torch.unique(torch.stack([t01.reshape(-1), t10.reshape(-1)], 1), dim=0)
    pairs = pairs[(pairs[:, 0] > 0) | (pairs[:, 1] > 0)]
    if pairs.shape[0] <= _MAX_KERNEL_PAIRS:
        mask = torch.zeros_like(xu)
        shifts = torch.arange(m, dtype=torch.int64, device=x.device)
        for a, b in pairs.tolist():
            cells = (t01 == a) & (t10 == b)                      # [n, m]: the cells of this class
            others = ((~cells).to(torch.int64) << shifts).sum(1) | prot_const
            if prot is not None:
                others |= prot
            others &= low_mask(width)
            mask |= to_pattern(_flip(x, a, b, seed, m, from_pattern(others, x.dtype).reshape(x.shape), offset,
                                     None, backend, True)).reshape(-1)
    else:
        mask = torch.empty_like(xu)
        for s in range(0, n, _torch_backend.CHUNK):
            e = min(n, s + _torch_backend.CHUNK)
            mask[s:e] = _torch_backend.threshold_mask_patterns(xu[s:e], t01[s:e], t10[s:e], attack, offset + s, seed)
        if prot is not None:
            mask &= ~prot
    return from_pattern(mask & attack, x.dtype).reshape(x.shape)


def _check_threshold(t) -> int:
    t = check_uint(t, "threshold", 33)
    if t > 1 << 32:
        raise ValueError(f"threshold {t} exceeds 2^32")
    return t


def random_flip(x: torch.Tensor, p01: float, p10: float | None = None, *, seed: int, bits: int | None = None,
                protected=None, offset: int = 0, out: torch.Tensor | None = None,
                backend: str | None = None) -> torch.Tensor:
    """Flip random bits of integer tensor ``x`` (uint8, int8, int16, int32); returns a new tensor (or ``out``).

    A float tensor (float32, float16, bfloat16, float8_e4m3fn, float8_e5m2) is flipped as its raw bits: exactly
    the flips of its integer view (``x.view(torch.int32)`` for float32, int16 for 16-bit floats, uint8 for fp8), so
    a chip is the same chip for every format of one word width.

    Bit b of word i (i = offset + j for element j of x in C order) flips iff it is attackable (b < bits, not
    protected) and Philox4x32-10 number r(seed, i, b) < T(p01) if the bit is 0, < T(p10) if it is 1.

    Args:
        p01, p10: rates of 0->1 and 1->0 flips in [0, 1]; p10 defaults to p01.
        seed: Python int in [0, 2^64); pattern k of a benchmark uses base_seed + k.
        bits: number m of attackable low bits (1..width; default: the dtype width). Bits >= m never flip.
        protected: None, a Python int bit mask for every word, or an integer tensor of x's shape with one mask per
            word; protected bits never flip. Signed masks are read as their two's-complement pattern.
        offset: global index of x's first word, so that the tensors of one model form one memory.
        out: optional preallocated tensor (x's dtype, shape and device) written in place and returned.
            ``out=x`` flips x in place; any other overlap between out and x (or protected) is undefined.
        backend: None (auto / BITBENCH_KERNEL_BACKEND), 'auto', 'torch', 'c' (CPU) or 'cupy' (CUDA).
    """
    return _run(x, p01, p10, seed, bits, protected, offset, out, backend, False)


def random_flip_mask(x: torch.Tensor, p01: float, p10: float | None = None, *, seed: int, bits: int | None = None,
                     protected=None, offset: int = 0, out: torch.Tensor | None = None,
                     backend: str | None = None) -> torch.Tensor:
    """The xor mask that :func:`random_flip` applies (x's dtype; for a float tensor the integer dtype of its
    words): ``x ^ mask == random_flip(x, ...)``.

    Same arguments as :func:`random_flip`; the mask depends on x's bits only when p01 != p10."""
    return _run(x, p01, p10, seed, bits, protected, offset, out, backend, True)
