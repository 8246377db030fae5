/* Encode/decode of a flat float32 memory made of segments (tensors), for CPU training steps and evaluation.
 * The arithmetic is exactly that of defenses/quantization.py (QuantScheme), in float32, one operation at a time
 * (compiled with -ffp-contract=off: no fused multiply-add), so the results are bit-identical to the torch path.
 * The inner loops are plain so that the compiler vectorizes them; large segments are split into chunks across
 * OpenMP threads. */
#include <stdint.h>

#include "quant_cpu.h"

#define BB_CHUNK 65536

/* Round half to even for |x| <= 2^22 (codes are at most 2^16): adding and subtracting 1.5 * 2^23 leaves the
 * integer part rounded in the default rounding mode, like nearbyintf, but it vectorizes without SSE4.1. The
 * sign of a zero result may differ from nearbyintf; the stored code cannot. */
#define BB_RINT(x) (((x) + 12582912.0f) - 12582912.0f)
/* The cast to the integer type (truncation toward zero) for |x| < 2^31. */
#define BB_TRUNC(x) ((float)(int32_t)(x))
#define BB_CLAMP(x, a, b) ((x) < (a) ? (a) : ((x) > (b) ? (b) : (x)))

/* The per-segment parameters every loop gets. */
typedef struct {
    float lo, hi, step, span, div, live, fc, cmin, cmax;
    int icmin, icmax;
} bb_seg;

/* Decoding takes the code already clamped to [code_min, code_max] in its own type (vectorizes on SSE2), as a float. */
#define BB_DECODE_SYM(cf, p) (BB_CLAMP(((cf) - (p).fc) * (p).step, (p).lo, (p).hi))

static inline float bb_decode_asym(float cf, const bb_seg *p) {
    float t = cf - p->fc;
    t = t * p->step;
    t = BB_CLAMP(t, -1.0f, 1.0f);
    t = t + 1.0f;
    t = t / 2.0f;
    t = t * p->span;
    t = t + p->lo;
    return BB_CLAMP(t, p->lo, p->hi);
}

#define BB_DEFINE_ENC(CODE_T, SUFFIX, NAME, ROUND)                                                              \
    static void NAME##_sym_##SUFFIX(const float *w, CODE_T *restrict cd, float *deq, int64_t a, int64_t b,      \
                                    const bb_seg *p_) {                                                         \
        const bb_seg p = *p_;                                                                                   \
        /* deq may be w itself (in place): element i is read before it is written, no other dependence */     \
        _Pragma("GCC ivdep")                                                                                   \
        for (int64_t i = a; i < b; ++i) {                                                                      \
            float x = BB_CLAMP(w[i], p.lo, p.hi);                                                              \
            x = x / p.step;                                                                                    \
            x = x + p.fc;                                                                                      \
            x = BB_CLAMP(x, p.cmin, p.cmax);                                                                   \
            CODE_T c = (CODE_T)(int32_t)ROUND(x);                                                              \
            cd[i] = c;                                                                                         \
            deq[i] = BB_DECODE_SYM((float)c, p); /* an encoded code is inside [code_min, code_max] */         \
        }                                                                                                      \
    }                                                                                                          \
    static void NAME##_asym_##SUFFIX(const float *w, CODE_T *restrict cd, float *deq, int64_t a, int64_t b,     \
                                     const bb_seg *p_) {                                                        \
        const bb_seg p = *p_;                                                                                   \
        _Pragma("GCC ivdep")                                                                                   \
        for (int64_t i = a; i < b; ++i) {                                                                      \
            float y = w[i] - p.lo;                                                                             \
            y = y / p.div;                                                                                     \
            y = y * 2.0f;                                                                                      \
            y = y - 1.0f;                                                                                      \
            y = y * p.live;                                                                                    \
            y = BB_CLAMP(y, -1.0f, 1.0f);                                                                      \
            float x = y / p.step;                                                                              \
            x = x + p.fc;                                                                                      \
            x = BB_CLAMP(x, p.cmin, p.cmax);                                                                   \
            CODE_T c = (CODE_T)(int32_t)ROUND(x);                                                              \
            cd[i] = c;                                                                                         \
            deq[i] = bb_decode_asym((float)c, &p);                                                             \
        }                                                                                                      \
    }

/* Decoding loop of one segment: the code clamped in its own type (vectorizes), then DECODE(float code, params). */
#define BB_DEFINE_DEC(CODE_T, SUFFIX, NAME, DECODE)                                                            \
    static void NAME##_##SUFFIX(const CODE_T *restrict cd, float *restrict out, int64_t a, int64_t b,           \
                                const bb_seg *p_) {                                                             \
        const bb_seg p = *p_;                                                                                   \
        const CODE_T lo_c = (CODE_T)p.icmin, hi_c = (CODE_T)p.icmax;                                           \
        for (int64_t i = a; i < b; ++i) {                                                                      \
            const CODE_T c = BB_CLAMP(cd[i], lo_c, hi_c);                                                      \
            out[i] = DECODE((float)c, p);                                                                      \
        }                                                                                                      \
    }

#define BB_DECODE_ASYM_P(c, p) bb_decode_asym((c), &(p))

#define BB_DEFINE(CODE_T, SUFFIX)                                                                              \
    BB_DEFINE_ENC(CODE_T, SUFFIX, bb_enc_round, BB_RINT)                                                       \
    BB_DEFINE_ENC(CODE_T, SUFFIX, bb_enc_trunc, BB_TRUNC)                                                      \
    BB_DEFINE_DEC(CODE_T, SUFFIX, bb_dec_sym, BB_DECODE_SYM)                                                   \
    BB_DEFINE_DEC(CODE_T, SUFFIX, bb_dec_asym, BB_DECODE_ASYM_P)

BB_DEFINE(uint8_t, u8)
BB_DEFINE(int8_t, i8)
BB_DEFINE(int16_t, i16)

typedef void (*bb_enc_fn)(const float *, void *, float *, int64_t, int64_t, const bb_seg *);
typedef void (*bb_dec_fn)(const void *, float *, int64_t, int64_t, const bb_seg *);

#define BB_PICK3(PREFIX, kind)                                                                                 \
    ((kind) == 0 ? (void *)PREFIX##_u8 : (kind) == 1 ? (void *)PREFIX##_i8 : (kind) == 2 ? (void *)PREFIX##_i16 \
                                                                                      : (void *)0)

static bb_enc_fn bb_pick_enc(int family, int rounding, int kind) {
    if (kind < 0 || kind > 2) return 0;
    if (family == BB_SYMMETRIC && rounding == BB_ROUND_NEAREST_EVEN) return (bb_enc_fn)BB_PICK3(bb_enc_round_sym, kind);
    if (family == BB_SYMMETRIC && rounding == BB_ROUND_TRUNCATE) return (bb_enc_fn)BB_PICK3(bb_enc_trunc_sym, kind);
    if (family == BB_ASYMMETRIC && rounding == BB_ROUND_NEAREST_EVEN) return (bb_enc_fn)BB_PICK3(bb_enc_round_asym, kind);
    if (family == BB_ASYMMETRIC && rounding == BB_ROUND_TRUNCATE) return (bb_enc_fn)BB_PICK3(bb_enc_trunc_asym, kind);
    return 0;  /* an unknown rounding mode is refused, never silently replaced */
}

static bb_dec_fn bb_pick_dec(int family, int kind) {
    if (kind < 0 || kind > 2) return 0;
    if (family == BB_SYMMETRIC) return (bb_dec_fn)BB_PICK3(bb_dec_sym, kind);
    if (family == BB_ASYMMETRIC) return (bb_dec_fn)BB_PICK3(bb_dec_asym, kind);
    return 0;
}

static inline bb_seg bb_make_seg(float lo, float hi, float step, int center, int code_min, int code_max) {
    bb_seg p;
    p.lo = lo;
    p.hi = hi;
    p.step = step;
    p.span = hi - lo;
    p.live = p.span > 0.0f ? 1.0f : 0.0f;
    p.div = p.span > 0.0f ? p.span : 1.0f;
    p.fc = (float)center;
    p.cmin = (float)code_min;
    p.cmax = (float)code_max;
    p.icmin = code_min;
    p.icmax = code_max;
    return p;
}

/* The segment holding word i (0 <= i < starts[nseg]; empty segments skipped): binary search, so memories of
 * many short segments (per-channel, per-group ranges) split into chunks in O(chunks log segments). */
static inline int bb_segment_at(const int64_t *starts, int nseg, int64_t i) {
    int lo = 0, hi = nseg - 1; /* the last s with starts[s] <= i */
    while (lo < hi) {
        const int mid = lo + (hi - lo + 1) / 2;
        if (starts[mid] <= i) lo = mid; else hi = mid - 1;
    }
    return lo;
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
            const int64_t lo_ = k * BB_CHUNK, hi_ = lo_ + BB_CHUNK < n_ ? lo_ + BB_CHUNK : n_;                  \
            int s = bb_segment_at(starts, nseg, lo_);                                                          \
            for (; s < nseg && starts[s] < hi_; ++s) {                                                         \
                const int64_t a = starts[s] > lo_ ? starts[s] : lo_;                                           \
                const int64_t b = starts[s + 1] < hi_ ? starts[s + 1] : hi_;                                   \
                if (a < b) CALL(s, a, b);                                                                      \
            }                                                                                                  \
        }                                                                                                      \
    } while (0)

int bb_encode_f32(const float *w, const int64_t *starts, int nseg, int family, const float *lo, const float *hi,
                  const float *step, int rounding, int center, int code_min, int code_max, int code_kind,
                  void *codes, float *deq, int nthreads) {
    bb_enc_fn fn = bb_pick_enc(family, rounding, code_kind);
    if (!fn || !deq) return -1;
#define BB_ENC_CALL(s, a, b)                                                                                   \
    do {                                                                                                       \
        const bb_seg p_ = bb_make_seg(lo[s], hi[s], step[s], center, code_min, code_max);                      \
        fn(w, codes, deq, a, b, &p_);                                                                          \
    } while (0)
    BB_FOR_PIECES(BB_ENC_CALL);
#undef BB_ENC_CALL
    return 0;
}

int bb_decode_f32(const void *codes, const int64_t *starts, int nseg, int family, const float *lo, const float *hi,
                  const float *step, int center, int code_min, int code_max, int code_kind, float *out,
                  int nthreads) {
    bb_dec_fn fn = bb_pick_dec(family, code_kind);
    if (!fn) return -1;
#define BB_DEC_CALL(s, a, b)                                                                                   \
    do {                                                                                                       \
        const bb_seg p_ = bb_make_seg(lo[s], hi[s], step[s], center, code_min, code_max);                      \
        fn(codes, out, a, b, &p_);                                                                             \
    } while (0)
    BB_FOR_PIECES(BB_DEC_CALL);
#undef BB_DEC_CALL
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
