"""Bit-level primitives on integer tensors (uint8, int8, int16, int32); knows nothing of models.

Float tensors are words too: :func:`word_view` views float32 as int32, float16/bfloat16 as int16 and fp8 as uint8
(their raw bits), and :func:`random_flip` / :func:`random_flip_mask` take float tensors directly.

* Seeded random bit errors, exactly as docs/patterns.md defines them:
  :func:`random_flip`, :func:`random_flip_mask`, :func:`threshold_flip_mask` (a threshold per cell: profiled
  chips), :func:`philox4x32_10`, :func:`threshold`.
  Backends: torch reference (any device), C through cffi (CPU), CuPy (CUDA); see :func:`backends`.
* Bit operations on two's-complement patterns: :func:`to_bits`, :func:`from_bits`, :func:`bit_and`,
  :func:`bit_or`, :func:`bit_xor`, :func:`flip_bits`, :func:`set_bits`, :func:`clear_bits`, :func:`popcount`,
  :func:`hamming_distance`, :func:`hamming_total`, :func:`msb_projection`, :func:`budget_projection`,
  :func:`flip_deltas` (the value change of flipping each bit), :func:`flip_one_bit`, :func:`flippable` (bits
  that may flip under direction constraints), :func:`first_per_group` (one per page), :func:`to_pattern` /
  :func:`from_pattern` (words as unsigned int64 bit patterns and back).
* SEC-DED extended Hamming codes over groups of words (encode, syndromes by table lookups, decode):
  :class:`ecc.SECDED`.
"""
from ._common import DTYPE_WIDTH, FLOAT_WORDS, threshold, thresholds, word_view
from ._torch_backend import philox4x32_10
from .bitops import (bit_and, bit_or, bit_xor, budget_projection, clear_bits, first_per_group, flip_bits, flip_deltas,
                     flip_one_bit, flippable, from_bits, from_pattern, hamming_distance, hamming_total, msb_projection,
                     msb_value, popcount, set_bits, to_bits, to_pattern)
from . import fused_quant  # noqa: F401  (the C accelerator of the quantization schemes)
from . import ecc  # noqa: F401  (SEC-DED extended Hamming codes over groups of words)
from .fused_quant import Rounding, fused_available
from .flip import (BACKENDS, ENV_BACKEND, backends, random_flip, random_flip_mask, resolve_backend,
                   threshold_flip_mask)

SUPPORTED_DTYPES = tuple(DTYPE_WIDTH)

__all__ = [
    "fused_quant", "fused_available", "Rounding", "FLOAT_WORDS", "word_view", "ecc",
    "SUPPORTED_DTYPES", "DTYPE_WIDTH", "BACKENDS", "ENV_BACKEND",
    "random_flip", "random_flip_mask", "threshold_flip_mask", "philox4x32_10", "threshold", "thresholds", "backends",
    "resolve_backend", "flip_deltas", "flip_one_bit", "flippable", "first_per_group", "to_pattern", "from_pattern",
    "to_bits", "from_bits", "bit_and", "bit_or", "bit_xor", "flip_bits", "set_bits", "clear_bits", "popcount",
    "hamming_distance", "hamming_total", "msb_value", "msb_projection", "budget_projection",
]
