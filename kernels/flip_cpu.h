/* Fused random bit-flip kernel for CPU tensors (Philox4x32-10 per bit, integer thresholds, xor).
 * Definition: docs/patterns.md. Built by kernels/_build_cpu.py (cffi, API mode). */
#ifndef BITBENCH_FLIP_CPU_H
#define BITBENCH_FLIP_CPU_H
#include <stdint.h>

/* Flip random bits of n words of `width` bits (8, 16 or 32; signed tensors are passed by their bit pattern).
 *   x, out      input and output words (out may equal x; no other overlap)
 *   prot        optional per-word protected-bit masks (same width), or NULL
 *   attack      constant attackable-bit mask: low m bits minus constant protected bits
 *   offset      global index of word 0; word j uses counter index offset + j (64-bit)
 *   seed        64-bit Philox key
 *   t01, t10    thresholds T(p) in [0, 2^32] for 0->1 and 1->0 flips
 *   mask_only   write the xor mask instead of x ^ mask
 *   nthreads    OpenMP threads (<= 0: the OpenMP default)
 * Returns 0, or a negative code on bad arguments. */
int bb_flip(int width, const void *x, void *out, const void *prot, uint32_t attack, int64_t n, uint64_t offset,
            uint64_t seed, uint64_t t01, uint64_t t10, int mask_only, int nthreads);

/* One Philox4x32-10 call (for known-answer tests). */
void bb_philox4x32_10(const uint32_t *ctr, const uint32_t *key, uint32_t *out);

/* A short description of how the library was compiled (OpenMP, SIMD dispatch). */
const char *bb_build_info(void);

/* SIMD variant: 0 = fastest available (default), 1 = AVX2/baseline variants only (for tests). */
int bb_set_simd(int level);

/* Largest OpenMP thread count (1 without OpenMP). */
int bb_max_threads(void);
#endif
