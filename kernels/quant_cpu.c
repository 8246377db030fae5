/* Fused quantize+dequantize of a flat float32 memory made of segments (tensors), for CPU training steps.
 * The arithmetic is exactly that of defenses/quantization.py, in float32, one operation at a time (compiled with
 * -ffp-contract=off: no fused multiply-add), so the results are bit-identical to the torch path. */
#include <stdint.h>

#include "quant_cpu.h"

#ifdef _OPENMP
#define BB_PAR_SIMD _Pragma("omp parallel for simd schedule(static) num_threads(nt) if (b - a > 65536)")
#define BB_SIMD_MINMAX _Pragma("omp simd reduction(min : mn) reduction(max : mx)")
#else
#define BB_PAR_SIMD
#define BB_SIMD_MINMAX
#endif

static inline float bb_clamp1(float x) { return x < -1.0f ? -1.0f : (x > 1.0f ? 1.0f : x); }

/* Round half to even for |x| <= 2^22 (codes are at most 2^15): adding and subtracting 1.5 * 2^23 leaves the
 * integer part rounded in the default rounding mode, like nearbyintf, but it vectorizes without SSE4.1. The
 * sign of a zero result may differ from nearbyintf; the stored code (after adding the center) cannot. */
static inline float bb_rint(float x) { return (x + 12582912.0f) - 12582912.0f; }

/* Truncation toward zero for |x| < 2^31 (exact through the integer conversion). */
static inline float bb_trunc(float x) { return (float)(int32_t)x; }

#define BB_QD_LOOP(CODE_T, ROUND)                                                                              \
    for (int s = 0; s < nseg; ++s) {                                                                           \
        const float m = mid[s], h = half[s], l = lev[s], sc = scale[s];                                       \
        const int64_t a = starts[s], b = starts[s + 1];                                                        \
        CODE_T *cd = (CODE_T *)codes;                                                                          \
        if (deq) {                                                                                             \
            BB_PAR_SIMD                                                                                        \
            for (int64_t i = a; i < b; ++i) {                                                                  \
                float x = bb_clamp1((w[i] - m) / h) * l;                                                       \
                CODE_T c = (CODE_T)(ROUND(x) + fc);                                                            \
                cd[i] = c;                                                                                     \
                float t = (float)c - fc;                                                                       \
                t = t * sc;                                                                                    \
                deq[i] = t + m;                                                                                \
            }                                                                                                  \
        } else {                                                                                               \
            BB_PAR_SIMD                                                                                        \
            for (int64_t i = a; i < b; ++i) {                                                                  \
                float x = bb_clamp1((w[i] - m) / h) * l;                                                       \
                cd[i] = (CODE_T)(ROUND(x) + fc);                                                               \
            }                                                                                                  \
        }                                                                                                      \
    }

#define BB_QD_CASE(CODE_T) \
    if (rounding) {        \
        BB_QD_LOOP(CODE_T, bb_rint) \
    } else {               \
        BB_QD_LOOP(CODE_T, bb_trunc) \
    }

int bb_quant_dequant_f32(const float *w, const int64_t *starts, int nseg, const float *mid, const float *half,
                         const float *lev, const float *scale, int rounding, int center, int code_kind,
                         void *codes, float *deq, int nthreads) {
    const float fc = (float)center;
    const int nt = nthreads > 0 ? nthreads : 1;
    (void)nt;
    switch (code_kind) {
    case 0: BB_QD_CASE(uint8_t) break;
    case 1: BB_QD_CASE(int8_t) break;
    case 2: BB_QD_CASE(int16_t) break;
    default: return -1;
    }
    return 0;
}

#define BB_DQ_LOOP(CODE_T)                                                                                     \
    for (int s = 0; s < nseg; ++s) {                                                                           \
        const float m = mid[s], sc = scale[s];                                                                 \
        const int64_t a = starts[s], b = starts[s + 1];                                                        \
        const CODE_T *cd = (const CODE_T *)codes;                                                              \
        BB_PAR_SIMD                                                                                            \
        for (int64_t i = a; i < b; ++i) {                                                                      \
            float t = (float)cd[i] - fc;                                                                       \
            t = t * sc;                                                                                        \
            out[i] = t + m;                                                                                    \
        }                                                                                                      \
    }

int bb_dequant_f32(const void *codes, const int64_t *starts, int nseg, const float *mid, const float *scale,
                   int center, int code_kind, float *out, int nthreads) {
    const float fc = (float)center;
    const int nt = nthreads > 0 ? nthreads : 1;
    (void)nt;
    switch (code_kind) {
    case 0: BB_DQ_LOOP(uint8_t) break;
    case 1: BB_DQ_LOOP(int8_t) break;
    case 2: BB_DQ_LOOP(int16_t) break;
    default: return -1;
    }
    return 0;
}

int bb_minmax_f32(const float *w, const int64_t *starts, int nseg, float *lo, float *hi, float *amax) {
    for (int s = 0; s < nseg; ++s) {
        const int64_t a = starts[s], b = starts[s + 1];
        if (b <= a) return -1;
        float mn = w[a], mx = w[a];
        BB_SIMD_MINMAX
        for (int64_t i = a; i < b; ++i) {
            const float v = w[i];
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        if (lo) lo[s] = mn;
        if (hi) hi[s] = mx;
        if (amax) amax[s] = (-mn > mx) ? -mn : mx;
    }
    return 0;
}
