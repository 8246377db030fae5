/* Fused quantize/dequantize of flat float32 memories (see quant_cpu.c). */
#ifndef BITBENCH_QUANT_CPU_H
#define BITBENCH_QUANT_CPU_H
#include <stdint.h>

/* For segment s = [starts[s], starts[s+1]) and word i in it:
 *   x = clamp((w[i] - mid[s]) / half[s], -1, 1) * lev[s];  x = rounding ? nearbyint(x) : trunc(x);
 *   codes[i] = x + center;  deq[i] = (codes[i] - center) * scale[s] + mid[s]   (deq required; may alias w)
 * code_kind: 0 uint8, 1 int8, 2 int16. Returns 0, or -1 for an unknown code_kind. */
int bb_quant_dequant_f32(const float *w, const int64_t *starts, int nseg, const float *mid, const float *half,
                         const float *lev, const float *scale, int rounding, int center, int code_kind,
                         void *codes, float *deq, int nthreads);

/* out[i] = (codes[i] - center) * scale[s] + mid[s]. */
int bb_dequant_f32(const void *codes, const int64_t *starts, int nseg, const float *mid, const float *scale,
                   int center, int code_kind, float *out, int nthreads);

/* Per-segment min, max and max |w| (any output may be NULL). -1 if a segment is empty. NaN-free input. */
int bb_minmax_f32(const float *w, const int64_t *starts, int nseg, float *lo, float *hi, float *amax);
#endif
