"""Bit-level primitives on integer tensors (uint8, int8, int16, int32); knows nothing of models.

* Seeded random bit errors, exactly as shared/design/bit-error-patterns.md defines them:
  :func:`random_flip`, :func:`random_flip_mask`, :func:`philox4x32_10`, :func:`threshold`.
  Backends: torch reference (any device), C through cffi (CPU), CuPy (CUDA); see :func:`backends`.
* Bit operations on two's-complement patterns: :func:`to_bits`, :func:`from_bits`, :func:`bit_and`,
  :func:`bit_or`, :func:`bit_xor`, :func:`flip_bits`, :func:`set_bits`, :func:`clear_bits`, :func:`popcount`,
  :func:`hamming_distance`, :func:`hamming_total`, :func:`msb_projection`, :func:`budget_projection`.
"""
from ._common import DTYPE_WIDTH, threshold
from ._torch_backend import philox4x32_10
from .bitops import (bit_and, bit_or, bit_xor, budget_projection, clear_bits, flip_bits, from_bits,
                     hamming_distance, hamming_total, msb_projection, msb_value, popcount, set_bits, to_bits)
from .fused_quant import fused_available, fused_dequant, fused_quant_dequant, fused_segment_minmax
from .flip import BACKENDS, ENV_BACKEND, backends, random_flip, random_flip_mask, resolve_backend

SUPPORTED_DTYPES = tuple(DTYPE_WIDTH)

__all__ = [
    "fused_available", "fused_dequant", "fused_quant_dequant", "fused_segment_minmax",
    "SUPPORTED_DTYPES", "DTYPE_WIDTH", "BACKENDS", "ENV_BACKEND",
    "random_flip", "random_flip_mask", "philox4x32_10", "threshold", "backends", "resolve_backend",
    "to_bits", "from_bits", "bit_and", "bit_or", "bit_xor", "flip_bits", "set_bits", "clear_bits", "popcount",
    "hamming_distance", "hamming_total", "msb_value", "msb_projection", "budget_projection",
]
