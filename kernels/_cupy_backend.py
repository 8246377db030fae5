"""CUDA backend through CuPy (RawModule compiled from flip_cuda.cu by NVRTC), loaded lazily.

Tensors are handed over without copies (DLPack) and kernels run on torch's current stream of the tensor's device.
Without CuPy or a usable driver, kernels/ uses the torch reference on the GPU instead.
"""
from __future__ import annotations

import ctypes
import os
import threading

import torch

_cupy = None
_error: str | None = None
_probed = False
_modules: dict = {}
_sms: dict = {}
_lock = threading.Lock()

_SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flip_cuda.cu")
_THREADS = 256


def load():
    """The cupy module, or None with :func:`error` saying why."""
    global _cupy, _error, _probed
    if not _probed:
        with _lock:
            if not _probed:
                if not torch.cuda.is_available():
                    _error = "CUDA not available to torch"
                else:
                    try:
                        import cupy  # noqa: PLC0415 (lazy on purpose)
                        if cupy.cuda.runtime.getDeviceCount() < 1:
                            raise RuntimeError("no CUDA device visible to CuPy")
                        _cupy = cupy
                    except Exception as e:  # ImportError, CUDARuntimeError, driver mismatch ...
                        _error = f"CuPy is not usable ({type(e).__name__}: {e})"
                _probed = True
    return _cupy


def available() -> bool:
    return load() is not None


def error() -> str | None:
    load()
    return _error


def source() -> str:
    with open(_SOURCE_PATH, encoding="utf-8") as f:
        return f.read()


def _module(dev: int):
    mod = _modules.get(dev)
    if mod is None:
        cp = load()
        if cp is None:
            raise RuntimeError(_error)
        with cp.cuda.Device(dev):
            mod = cp.RawModule(code=source())  # plain C++ without headers: no options needed
            for name in ("bb_flip_u8", "bb_flip_u16", "bb_flip_u32", "bb_philox_many"):
                mod.get_function(name)  # compile now so that errors surface here
        _modules[dev] = mod
        _sms[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    return mod


def _launch(x: torch.Tensor, name: str, grid: int, args_fn):
    """Launch kernel ``name`` on torch's current stream of x's device; args_fn(cupy) builds the arguments."""
    cp = load()
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    mod = _module(dev)
    kern = mod.get_function(name)
    with cp.cuda.Device(dev):
        stream = cp.cuda.ExternalStream(torch.cuda.current_stream(dev).cuda_stream, dev)
        with stream:
            kern((grid,), (_THREADS,), args_fn(cp))


#: C types of the scalar kernel arguments after (x, out, prot), in order (see flip_cuda.cu).
SCALAR_TYPES = ("int32", "uint32", "int64", "uint64", "uint32", "uint32", "uint32", "uint32", "uint32", "uint32",
                "int32")


def kernel_scalars(use_prot: bool, attack: int, n: int, offset: int, seed: int, t01: int, t10: int,
                   mask_only: bool) -> tuple:
    """The scalar arguments of bb_flip_u{8,16,32} after (x, out, prot), as Python ints (types: SCALAR_TYPES)."""
    en01, en10 = int(t01 != 0), int(t10 != 0)
    return (int(use_prot), attack, n, offset, seed & 0xFFFFFFFF, seed >> 32, (t01 - en01) & 0xFFFFFFFF,
            (t10 - en10) & 0xFFFFFFFF, en01, en10, int(mask_only))


_CTYPES = {"int32": ctypes.c_int32, "uint32": ctypes.c_uint32, "int64": ctypes.c_int64, "uint64": ctypes.c_uint64}
_functions: dict = {}
_fast_error: list = []  # why the direct driver launch was given up (then CuPy's launcher is used)


def _launch_direct(x: torch.Tensor, name: str, grid: int, pointers: tuple, scalars: tuple) -> None:
    """Launch through cuLaunchKernel with raw device pointers on torch's current stream.

    No DLPack export, no CuPy stream object: a few microseconds of host work per launch, which is what small
    memories (60k words) and per-step patterns in training pay. The kernel and its arguments are the same as on
    the CuPy path, so the result is identical.
    """
    cp = load()
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    key = (dev, name)
    entry = _functions.get(key)
    if entry is None:
        k = _module(dev).get_function(name)  # a RawKernel; its compiled Function holds the CUfunction
        fn = getattr(k, "kernel", k)
        # argument slots, reused by every launch of this kernel (filled in place below; the launch copies them)
        vals = [ctypes.c_void_p() for _ in pointers] + [_CTYPES[t]() for t in SCALAR_TYPES]
        params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        entry = _functions[key] = (int(fn.ptr), vals, params, threading.Lock())
    f, vals, params, lock = entry
    with lock:
        for slot, v in zip(vals, pointers + tuple(scalars)):
            slot.value = v
        _launch_now(cp, f, grid, params, dev)


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # a plain int handle, no Stream object


def _launch_now(cp, f, grid, params, dev):
    stream = _raw_stream(dev) if _raw_stream is not None else torch.cuda.current_stream(dev).cuda_stream
    if torch.cuda.current_device() == dev:
        cp.cuda.driver.launchKernel(f, grid, 1, 1, _THREADS, 1, 1, 0, stream, ctypes.addressof(params), 0)
    else:
        with torch.cuda.device(dev):
            cp.cuda.driver.launchKernel(f, grid, 1, 1, _THREADS, 1, 1, 0, stream, ctypes.addressof(params), 0)


def flip(x: torch.Tensor, out: torch.Tensor, prot: torch.Tensor | None, width: int, attack: int, offset: int,
         seed: int, t01: int, t10: int, mask_only: bool) -> None:
    """x, out (and prot) are contiguous CUDA tensors of the same dtype, shape and device; writes into out."""
    import numpy as np  # noqa: PLC0415

    n = x.numel()
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    _module(dev)
    grid = max(1, min((n + _THREADS - 1) // _THREADS, _sms[dev] * 32))
    plain = kernel_scalars(prot is not None, attack, n, offset, seed, t01, t10, mask_only)
    if not _fast_error and os.environ.get("BITBENCH_CUPY_LAUNCH", "direct") == "direct":
        try:
            ptrs = (x.data_ptr(), out.data_ptr(), (prot if prot is not None else x).data_ptr())
            _launch_direct(x, f"bb_flip_u{width}", grid, ptrs, plain)
            return
        except Exception as e:  # an older CuPy without driver.launchKernel: fall back for good
            _fast_error.append(f"{type(e).__name__}: {e}")
    scalars = tuple(getattr(np, t)(v) for t, v in zip(SCALAR_TYPES, plain))

    def args(cp):
        xc = cp.from_dlpack(x.reshape(-1))
        oc = cp.from_dlpack(out.view(-1))
        pc = cp.from_dlpack(prot.reshape(-1)) if prot is not None else xc
        return (xc, oc, pc) + scalars

    _launch(x, f"bb_flip_u{width}", grid, args)


def philox4x32_10(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox on the GPU for n pairs: counter [n, 4], key [n, 2] (uint32 values in int64 CUDA tensors)
    -> int64 [n, 4]. For known-answer tests."""
    import numpy as np  # noqa: PLC0415

    from ._common import from_pattern

    n = counter.shape[0]
    c = from_pattern(counter.to(torch.int64) & 0xFFFFFFFF, torch.int32).contiguous()
    k = from_pattern(key.to(torch.int64) & 0xFFFFFFFF, torch.int32).contiguous()
    o = torch.empty_like(c)

    def args(cp):
        return (cp.from_dlpack(c.view(-1)), cp.from_dlpack(k.view(-1)), cp.from_dlpack(o.view(-1)), np.int64(n))

    _launch(c, "bb_philox_many", max(1, (n + _THREADS - 1) // _THREADS), args)
    return o.to(torch.int64) & 0xFFFFFFFF
