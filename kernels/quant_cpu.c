/* Fused quantize+dequantize of a flat float32 memory made of segments (tensors), for CPU training steps.
 * The arithmetic is exactly that of defenses/quantization.py, in float32, one operation at a time (compiled with
 * -ffp-contract=off: no fused multiply-add), so the results are bit-identical to the torch path. The inner loops
 * are plain so that the compiler vectorizes them; large segments are split into chunks across OpenMP threads. */
#include <stdint.h>

#include "quant_cpu.h"

#define BB_CHUNK 65536

/* Round half to even for |x| <= 2^22 (codes are at most 2^15): adding and subtracting 1.5 * 2^23 leaves the
 * integer part rounded in the default rounding mode, like nearbyintf, but it vectorizes without SSE4.1. The
 * sign of a zero result may differ from nearbyintf; the stored code (after adding the center) cannot. */
#define BB_RINT(x) (((x) + 12582912.0f) - 12582912.0f)
/* Truncation toward zero for |x| < 2^31 (exact through the integer conversion). */
#define BB_TRUNC(x) ((float)(int32_t)(x))

#define BB_DEFINE_QD(CODE_T, SUFFIX, NAME, ROUND)                                                               \
    static void NAME##_##SUFFIX(const float *w, CODE_T *restrict cd, float *deq, int64_t a, int64_t b, float m, \
                                float h, float l, float sc, float fc) {                                        \
        /* deq may be w itself (in place): element i is read before it is written, no other dependence */     \
        _Pragma("GCC ivdep")                                                                                   \
        for (int64_t i = a; i < b; ++i) {                                                                      \
            float x = (w[i] - m) / h;                                                                          \
            x = x < -1.0f ? -1.0f : x;                                                                         \
            x = x > 1.0f ? 1.0f : x;                                                                           \
            x = x * l;                                                                                         \
            CODE_T c = (CODE_T)(int32_t)(ROUND(x) + fc);                                                       \
            cd[i] = c;                                                                                         \
            float t = (float)c - fc;                                                                           \
            t = t * sc;                                                                                        \
            deq[i] = t + m;                                                                                    \
        }                                                                                                      \
    }

#define BB_DEFINE(CODE_T, SUFFIX)                                                                              \
    BB_DEFINE_QD(CODE_T, SUFFIX, bb_qd_round, BB_RINT)                                                         \
    BB_DEFINE_QD(CODE_T, SUFFIX, bb_qd_trunc, BB_TRUNC)                                                        \
    static void bb_dq_##SUFFIX(const CODE_T *restrict cd, float *restrict out, int64_t a, int64_t b, float m,  \
                               float sc, float fc) {                                                           \
        for (int64_t i = a; i < b; ++i) {                                                                      \
            float t = (float)cd[i] - fc;                                                                       \
            t = t * sc;                                                                                        \
            out[i] = t + m;                                                                                    \
        }                                                                                                      \
    }

BB_DEFINE(uint8_t, u8)
BB_DEFINE(int8_t, i8)
BB_DEFINE(int16_t, i16)

typedef void (*bb_qd_fn)(const float *, void *, float *, int64_t, int64_t, float, float, float, float, float);
typedef void (*bb_dq_fn)(const void *, float *, int64_t, int64_t, float, float, float);

static bb_qd_fn bb_pick_qd(int code_kind, int rounding) {
    switch (code_kind) {
    case 0: return (bb_qd_fn)(rounding ? bb_qd_round_u8 : bb_qd_trunc_u8);
    case 1: return (bb_qd_fn)(rounding ? bb_qd_round_i8 : bb_qd_trunc_i8);
    case 2: return (bb_qd_fn)(rounding ? bb_qd_round_i16 : bb_qd_trunc_i16);
    default: return 0;
    }
}

static bb_dq_fn bb_pick_dq(int code_kind) {
    switch (code_kind) {
    case 0: return (bb_dq_fn)bb_dq_u8;
    case 1: return (bb_dq_fn)bb_dq_i8;
    case 2: return (bb_dq_fn)bb_dq_i16;
    default: return 0;
    }
}

/* Runs CALL(s, a, b) for every piece [a, b) of segment s of a memory of n words: whole segments when the memory
 * fits one chunk, else the pieces of BB_CHUNK-word chunks, spread over OpenMP threads. */
#ifdef _OPENMP
#define BB_PAR_FOR _Pragma("omp parallel for schedule(static) num_threads(nthreads > 0 ? nthreads : 1)")
#else
#define BB_PAR_FOR
#endif
#define BB_FOR_PIECES(CALL)                                                                                    \
    do {                                                                                                       \
        const int64_t n_ = starts[nseg], nchunks_ = (n_ + BB_CHUNK - 1) / BB_CHUNK;                            \
        if (nchunks_ <= 1) {                                                                                   \
            for (int s = 0; s < nseg; ++s) CALL(s, starts[s], starts[s + 1]);                                  \
            break;                                                                                             \
        }                                                                                                      \
        BB_PAR_FOR                                                                                             \
        for (int64_t k = 0; k < nchunks_; ++k) {                                                               \
            const int64_t lo = k * BB_CHUNK, hi = lo + BB_CHUNK < n_ ? lo + BB_CHUNK : n_;                      \
            int s = 0;                                                                                         \
            while (starts[s + 1] <= lo) ++s;                                                                   \
            for (; s < nseg && starts[s] < hi; ++s) {                                                          \
                const int64_t a = starts[s] > lo ? starts[s] : lo, b = starts[s + 1] < hi ? starts[s + 1] : hi; \
                if (a < b) CALL(s, a, b);                                                                      \
            }                                                                                                  \
        }                                                                                                      \
    } while (0)

int bb_quant_dequant_f32(const float *w, const int64_t *starts, int nseg, const float *mid, const float *half,
                         const float *lev, const float *scale, int rounding, int center, int code_kind,
                         void *codes, float *deq, int nthreads) {
    bb_qd_fn fn = bb_pick_qd(code_kind, rounding);
    if (!fn || !deq) return -1;
    const float fc = (float)center;
#define BB_QD_CALL(s, a, b) fn(w, codes, deq, a, b, mid[s], half[s], lev[s], scale[s], fc)
    BB_FOR_PIECES(BB_QD_CALL);
#undef BB_QD_CALL
    return 0;
}

int bb_dequant_f32(const void *codes, const int64_t *starts, int nseg, const float *mid, const float *scale,
                   int center, int code_kind, float *out, int nthreads) {
    bb_dq_fn fn = bb_pick_dq(code_kind);
    if (!fn) return -1;
    const float fc = (float)center;
#define BB_DQ_CALL(s, a, b) fn(codes, out, a, b, mid[s], scale[s], fc)
    BB_FOR_PIECES(BB_DQ_CALL);
#undef BB_DQ_CALL
    return 0;
}

int bb_minmax_f32(const float *w, const int64_t *starts, int nseg, float *lo, float *hi, float *amax) {
    for (int s = 0; s < nseg; ++s) {
        const int64_t a = starts[s], b = starts[s + 1];
        if (b <= a) return -1;
        float mn = w[a], mx = w[a];
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
