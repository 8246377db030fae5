"""Seeded random bit flips (the exact pattern of shared/design/bit-error-patterns.md) and backend selection.

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
from ._common import (check_rate, check_same, check_tensor, check_uint, int_pattern, low_mask, mask_tensor,
                      check_bits, threshold)

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
    width = check_tensor(x, "x")
    m = check_bits(bits, width)
    p01 = check_rate(p01, "p01")
    p10 = p01 if p10 is None else check_rate(p10, "p10")
    t01, t10 = threshold(p01), threshold(p10)
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


def random_flip(x: torch.Tensor, p01: float, p10: float | None = None, *, seed: int, bits: int | None = None,
                protected=None, offset: int = 0, out: torch.Tensor | None = None,
                backend: str | None = None) -> torch.Tensor:
    """Flip random bits of integer tensor ``x`` (uint8, int8, int16, int32); returns a new tensor (or ``out``).

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
    """The xor mask that :func:`random_flip` applies (x's dtype): ``x ^ mask == random_flip(x, ...)``.

    Same arguments as :func:`random_flip`; the mask depends on x's bits only when p01 != p10."""
    return _run(x, p01, p10, seed, bits, protected, offset, out, backend, True)
