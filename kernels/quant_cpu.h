/* Encode/decode of flat float32 memories made of segments (see quant_cpu.c and defenses/quantization.py). */
#ifndef BITBENCH_QUANT_CPU_H
#define BITBENCH_QUANT_CPU_H
#include <stdint.h>

/* Formula families and rounding modes; the values are those of kernels/fused_quant.py (Family, Rounding). */
enum { BB_SYMMETRIC = 0, BB_ASYMMETRIC = 1 };
enum { BB_ROUND_NEAREST_EVEN = 0, BB_ROUND_TRUNCATE = 1 };

/* Segment s = [starts[s], starts[s+1]) has the context (lo[s], hi[s], step[s]). For word i of it, symmetric:
 *   x = clamp(w, lo, hi) / step + center, clamped to [code_min, code_max], rounded -> codes[i];
 * asymmetric: y = ((w - lo) / span * 2 - 1) * live (span = hi - lo, or 1 and live = 0 where hi == lo),
 *   x = clamp(y, -1, 1) / step + center, clamped, rounded. One IEEE operation at a time, in this order.
 * deq[i] (required; may alias w) = the decoded codes[i] (bb_decode_f32). code_kind: 0 uint8, 1 int8, 2 int16.
 * Returns 0, or -1 for an unknown family, rounding mode or code_kind. */
int bb_encode_f32(const float *w, const int64_t *starts, int nseg, int family, const float *lo, const float *hi,
                  const float *step, int rounding, int center, int code_min, int code_max, int code_kind,
                  void *codes, float *deq, int nthreads);

/* t = clamp(code, code_min, code_max) - center; t = t * step; symmetric: out = clamp(t, lo, hi); asymmetric:
 * t = clamp(t, -1, 1); t = t + 1; t = t / 2; t = t * (hi - lo); t = t + lo; out = clamp(t, lo, hi). */
int bb_decode_f32(const void *codes, const int64_t *starts, int nseg, int family, const float *lo, const float *hi,
                  const float *step, int center, int code_min, int code_max, int code_kind, float *out,
                  int nthreads);

/* Per-segment min, max and max |w| (any output may be NULL). -1 if a segment is empty. NaN-free input. */
int bb_minmax_f32(const float *w, const int64_t *starts, int nseg, float *lo, float *hi, float *amax);
#endif
