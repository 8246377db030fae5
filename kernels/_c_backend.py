"""C backend (cffi extension ``kernels._cpu_flip``) for CPU tensors; loaded lazily, never compiled here."""
from __future__ import annotations

import torch

_lib = None
_ffi = None
_error: str | None = None
_loaded = False

_HINT = ("build it with `pip install -e .` (or `pip install .`), or in place with "
         "`python setup.py build_ext --inplace`")


def load():
    """(ffi, lib) of the extension, or (None, None) with :func:`error` saying why."""
    global _lib, _ffi, _error, _loaded
    if not _loaded:
        _loaded = True
        try:
            from . import _cpu_flip  # type: ignore[attr-defined]
            _ffi, _lib = _cpu_flip.ffi, _cpu_flip.lib
        except Exception as e:  # ImportError, or a broken/mismatched binary
            _error = f"C extension kernels._cpu_flip is not available ({type(e).__name__}: {e}); {_HINT}"
    return _ffi, _lib


def available() -> bool:
    return load()[1] is not None


def error() -> str | None:
    load()
    return _error


def build_info() -> str | None:
    ffi, lib = load()
    return ffi.string(lib.bb_build_info()).decode() if lib is not None else None


_PTR = {8: "uint8_t *", 16: "uint16_t *", 32: "uint32_t *"}


def flip(x: torch.Tensor, out: torch.Tensor, prot: torch.Tensor | None, width: int, attack: int, offset: int,
         seed: int, t01: int, t10: int, mask_only: bool) -> None:
    """x, out (and prot) are contiguous CPU tensors of the same dtype and shape; writes into out."""
    ffi, lib = load()
    if lib is None:
        raise RuntimeError(_error)
    ptr = _PTR[width]
    xp = ffi.cast(ptr, x.data_ptr())
    op = ffi.cast(ptr, out.data_ptr())
    pp = ffi.cast(ptr, prot.data_ptr()) if prot is not None else ffi.NULL
    rc = lib.bb_flip(width, xp, op, pp, attack, x.numel(), offset, seed, t01, t10, int(mask_only),
                     torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"bb_flip failed with code {rc}")


def philox4x32_10(counter, key):
    """One Philox4x32-10 call in C: counter (4 ints), key (2 ints) -> list of 4 ints."""
    ffi, lib = load()
    if lib is None:
        raise RuntimeError(_error)
    c = ffi.new("uint32_t[4]", [int(v) & 0xFFFFFFFF for v in counter])
    k = ffi.new("uint32_t[2]", [int(v) & 0xFFFFFFFF for v in key])
    o = ffi.new("uint32_t[4]")
    lib.bb_philox4x32_10(c, k, o)
    return list(o)


def set_simd(level: int) -> None:
    """0: fastest SIMD variant (default); 1: AVX2/baseline variants only (to test them on AVX-512 machines)."""
    ffi, lib = load()
    if lib is None:
        raise RuntimeError(_error)
    lib.bb_set_simd(int(level))


_CODE_KIND = {torch.uint8: 0, torch.int8: 1, torch.int16: 2}


def encode_f32(w: torch.Tensor, starts: torch.Tensor, family: int, ctx, rounding: int, center: int, code_min: int,
               code_max: int, codes: torch.Tensor, deq: torch.Tensor) -> None:
    """See quant_cpu.h. All CPU, contiguous; w/deq and ctx.lo/hi/step float32; starts int64 [nseg+1]."""
    ffi, lib = load()
    if lib is None:
        raise RuntimeError(_error)
    f = "float *"
    rc = lib.bb_encode_f32(
        ffi.cast(f, w.data_ptr()), ffi.cast("int64_t *", starts.data_ptr()), starts.numel() - 1, int(family),
        ffi.cast(f, ctx.lo.data_ptr()), ffi.cast(f, ctx.hi.data_ptr()), ffi.cast(f, ctx.step.data_ptr()),
        int(rounding), int(center), int(code_min), int(code_max), _CODE_KIND[codes.dtype],
        ffi.cast("void *", codes.data_ptr()), ffi.cast(f, deq.data_ptr()), torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"bb_encode_f32 failed with code {rc} (family {family}, rounding {rounding})")


def decode_f32(codes: torch.Tensor, starts: torch.Tensor, family: int, ctx, center: int, code_min: int,
               code_max: int, out: torch.Tensor) -> None:
    ffi, lib = load()
    if lib is None:
        raise RuntimeError(_error)
    f = "float *"
    rc = lib.bb_decode_f32(ffi.cast("void *", codes.data_ptr()), ffi.cast("int64_t *", starts.data_ptr()),
                           starts.numel() - 1, int(family), ffi.cast(f, ctx.lo.data_ptr()),
                           ffi.cast(f, ctx.hi.data_ptr()), ffi.cast(f, ctx.step.data_ptr()), int(center),
                           int(code_min), int(code_max), _CODE_KIND[codes.dtype], ffi.cast(f, out.data_ptr()),
                           torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"bb_decode_f32 failed with code {rc} (family {family})")


def minmax_f32(w: torch.Tensor, starts: torch.Tensor, lo, hi, amax) -> bool:
    ffi, lib = load()
    if lib is None:
        raise RuntimeError(_error)
    f = "float *"
    ptr = (lambda t: ffi.cast(f, t.data_ptr()) if t is not None else ffi.NULL)
    rc = lib.bb_minmax_f32(ffi.cast(f, w.data_ptr()), ffi.cast("int64_t *", starts.data_ptr()), starts.numel() - 1,
                           ptr(lo), ptr(hi), ptr(amax))
    return rc == 0  # False: an empty segment
