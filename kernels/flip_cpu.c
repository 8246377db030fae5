/* Fused random bit-flip kernel for CPU tensors; see flip_cpu.h and docs/patterns.md.
 *
 * One pass per word: Philox4x32-10 for each group of 4 bits, compare with the integer thresholds, pack, xor.
 * Words are processed in blocks; the loop over the words of a block is the vectorized one (each iteration is an
 * independent Philox call held in registers), split into OpenMP chunks across threads.
 *
 * SIMD: with GCC on x86-64 Linux the hot loop is compiled several times and picked at run time:
 *   - "wide":   AVX-512 (x86-64-v4) intrinsics, Philox state in 64-bit lanes (each 32x32->64 product is
 *               one vpmuludq);
 *   - "narrow": AVX2 / baseline x86-64 (target_clones), state in 32-bit lanes (better there).
 * Every variant does the same integer arithmetic, so results are bit-identical whichever one runs. */
#include "flip_cpu.h"

#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BB_M0 0xD2511F53u
#define BB_M1 0xCD9E8D57u
#define BB_W0 0x9E3779B9u
#define BB_W1 0xBB67AE85u

#define BB_BLOCK 512  /* words per vectorized block */
#define BB_CHUNK 8192 /* words per scheduling unit */
#define BB_MIN_PER_THREAD (1 << 18)

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 11 && \
    !defined(BB_NO_MULTIVERSION)
#define BB_MULTIVERSION 1
#define BB_TARGETS_NARROW __attribute__((target_clones("arch=x86-64-v3", "default")))
#define BB_TARGET_WIDE __attribute__((target("arch=x86-64-v4")))
#else
#define BB_MULTIVERSION 0
#define BB_TARGETS_NARROW
#endif

#if defined(__GNUC__) || defined(__clang__)
#define BB_INLINE static inline __attribute__((always_inline))
#define BB_RESTRICT __restrict__
#else
#define BB_INLINE static inline
#define BB_RESTRICT
#endif

#if defined(_OPENMP)
#define BB_SIMD _Pragma("omp simd")
#else
#define BB_SIMD
#endif

void bb_philox4x32_10(const uint32_t *ctr, const uint32_t *key, uint32_t *out) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; ++r) {
        uint64_t p0 = (uint64_t)BB_M0 * c0, p1 = (uint64_t)BB_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0; c1 = (uint32_t)p1; c2 = n2; c3 = (uint32_t)p0;
        k0 += BB_W0; k1 += BB_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

typedef struct {
    uint32_t attack;         /* constant attackable-bit mask */
    int ngroups;             /* groups of 4 bits up to the highest attackable bit */
    uint32_t k0, k1;         /* key = seed */
    uint32_t tm1_01, tm1_10; /* T - 1 (valid when T > 0): flip iff r <= T - 1 */
    uint32_t en01, en10;     /* T > 0 */
    uint64_t offset;
    int mask_only;
    int sym;                 /* T01 == T10 > 0: the flip rule ignores the bit's value */
    uint64_t t01, t10;       /* thresholds T in [0, 2^32]: flip iff r < T */
} bb_params;

/* One Philox round on counter (c0, c1, c2, c3), key (k0, k1), in variables of lane type S (uint32_t here; a
 * uint64_t S would carry garbage above bit 31, harmless since the products read only the low 32 bits of c0 and c2,
 * and BB_LO() clears it before the comparisons). Portable C that compilers vectorize over the word loop. */
#define BB_ROUND(S, c0, c1, c2, c3, k0, k1)                                                             \
    {                                                                                                   \
        uint64_t p0_ = (uint64_t)(uint32_t)(c0) * BB_M0, p1_ = (uint64_t)(uint32_t)(c2) * BB_M1;         \
        S n0_ = (S)(p1_ >> 32) ^ c1 ^ k0;                                                               \
        S n2_ = (S)(p0_ >> 32) ^ c3 ^ k1;                                                               \
        c0 = n0_; c1 = (S)p1_; c2 = n2_; c3 = (S)p0_;                                                   \
        k0 = (S)((k0 + BB_W0) & 0xFFFFFFFFu); k1 = (S)((k1 + BB_W1) & 0xFFFFFFFFu);                     \
    }
#define BB_PHILOX(S, c0, c1, c2, c3, k0, k1)                                                  \
    BB_ROUND(S, c0, c1, c2, c3, k0, k1) BB_ROUND(S, c0, c1, c2, c3, k0, k1)                   \
    BB_ROUND(S, c0, c1, c2, c3, k0, k1) BB_ROUND(S, c0, c1, c2, c3, k0, k1)                   \
    BB_ROUND(S, c0, c1, c2, c3, k0, k1) BB_ROUND(S, c0, c1, c2, c3, k0, k1)                   \
    BB_ROUND(S, c0, c1, c2, c3, k0, k1) BB_ROUND(S, c0, c1, c2, c3, k0, k1)                   \
    BB_ROUND(S, c0, c1, c2, c3, k0, k1) BB_ROUND(S, c0, c1, c2, c3, k0, k1)
#define BB_LO(v) ((v) & 0xFFFFFFFFu)

/* Flip bits of group g (bits 4g..4g+3) from Philox outputs: bit b flips iff en & (r <= tm), (en, tm) chosen by
 * the bit's current value (x: the word shifted right by 4g). Symmetric rates (T01 == T10 > 0): r <= tm. */
#define BB_BIT_ASYM(S, x, K, c, m)                                                                  \
    {                                                                                               \
        S bit_ = ((x) >> (K)) & 1u;                                                                 \
        m |= ((bit_ ? e10 : e01) & (S)(BB_LO(c) <= (bit_ ? s10 : s01))) << (K);                     \
    }
#define BB_BIT_SYM(S, x, K, c, m) m |= (S)(BB_LO(c) <= s01) << (K);

/* Xor masks of cnt (<= BB_BLOCK) consecutive words starting at global index `base`; S is the lane type, BIT one
 * of BB_BIT_ASYM / BB_BIT_SYM. xv: word patterns, av: attackable bits per word. */
#define BB_DEFINE_BLOCK(NAME, S, BIT)                                                                     \
    BB_INLINE void NAME(const uint32_t *BB_RESTRICT xv, const uint32_t *BB_RESTRICT av, int cnt,          \
                        uint64_t base, const bb_params *P, uint32_t *BB_RESTRICT mask) {                  \
        uint32_t any = 0;                                                                                 \
        for (int l = 0; l < cnt; ++l) { mask[l] = 0; any |= av[l]; }                                      \
        if (!any) return;                                                                                 \
        const S s01 = P->tm1_01, s10 = P->tm1_10, e01 = P->en01, e10 = P->en10;                          \
        const S key0 = P->k0, key1 = P->k1;                                                               \
        (void)s10; (void)e01; (void)e10;                                                                  \
        for (int g = 0; g < P->ngroups; ++g) {                                                            \
            if (!((any >> (4 * g)) & 0xFu)) continue; /* protected in every word: numbers unused */       \
            const int b0 = 4 * g;                                                                         \
            BB_SIMD for (int l = 0; l < cnt; ++l) {                                                       \
                uint64_t i = base + (uint64_t)l;                                                          \
                S c0 = (S)(i & 0xFFFFFFFFu), c1 = (S)(i >> 32), c2 = (S)g, c3 = 0, k0 = key0, k1 = key1;  \
                BB_PHILOX(S, c0, c1, c2, c3, k0, k1)                                                      \
                S x = (S)(xv[l] >> b0), m = 0;                                                            \
                (void)x;                                                                                  \
                BIT(S, x, 0, c0, m) BIT(S, x, 1, c1, m) BIT(S, x, 2, c2, m) BIT(S, x, 3, c3, m)           \
                mask[l] |= (uint32_t)m << b0;                                                             \
            }                                                                                             \
        }                                                                                                 \
        for (int l = 0; l < cnt; ++l) mask[l] &= av[l];                                                   \
    }

BB_DEFINE_BLOCK(bb_block_narrow, uint32_t, BB_BIT_ASYM)
BB_DEFINE_BLOCK(bb_block_narrow_sym, uint32_t, BB_BIT_SYM)
#if BB_MULTIVERSION
#include <immintrin.h>
#define BB_WIDE_INLINE static inline __attribute__((always_inline, target("arch=x86-64-v4")))

/* AVX-512 block: 8 words per vector, Philox state in 64-bit lanes whose low 32 bits hold the value, so each
 * 32x32->64 product is one vpmuludq (_mm512_mul_epu32 reads only the low halves: upper garbage is harmless and
 * is masked off before the comparisons). Thresholds are compared as 64-bit numbers: r < T with T <= 2^32. */
BB_WIDE_INLINE void bb_block_wide_impl(const uint32_t *BB_RESTRICT xv, const uint32_t *BB_RESTRICT av, int cnt,
                                       uint64_t base, const bb_params *P, uint32_t *BB_RESTRICT mask,
                                       const int sym) {
    uint32_t any = 0;
    const int cnt8 = (cnt + 7) & ~7; /* xv, av are zero-padded up to a multiple of 8 */
    for (int l = 0; l < cnt8; ++l) { mask[l] = 0; any |= av[l]; }
    if (!any) return;
    const __m512i LO = _mm512_set1_epi64(0xFFFFFFFFll);
    const __m512i M0 = _mm512_set1_epi64(BB_M0), M1 = _mm512_set1_epi64(BB_M1);
    const __m512i T01 = _mm512_set1_epi64((long long)P->t01), T10 = _mm512_set1_epi64((long long)P->t10);
    const __m512i LANE = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    __m512i K0[10], K1[10];
    {
        uint32_t k0 = P->k0, k1 = P->k1;
        for (int r = 0; r < 10; ++r) {
            K0[r] = _mm512_set1_epi64(k0); K1[r] = _mm512_set1_epi64(k1);
            k0 += BB_W0; k1 += BB_W1;
        }
    }
    for (int g = 0; g < P->ngroups; ++g) {
        if (!((any >> (4 * g)) & 0xFu)) continue; /* protected in every word: numbers unused */
        const __m512i G = _mm512_set1_epi64(g);
        const __m512i B0 = _mm512_set1_epi64(1ll << (4 * g)), B1 = _mm512_set1_epi64(2ll << (4 * g));
        const __m512i B2 = _mm512_set1_epi64(4ll << (4 * g)), B3 = _mm512_set1_epi64(8ll << (4 * g));
        for (int l = 0; l < cnt8; l += 8) {
            const __m512i iv = _mm512_add_epi64(_mm512_set1_epi64((long long)(base + (uint64_t)l)), LANE);
            __m512i c0 = iv, c1 = _mm512_srli_epi64(iv, 32), c2 = G, c3 = _mm512_setzero_si512();
#pragma GCC unroll 10
            for (int r = 0; r < 10; ++r) {
                const __m512i p0 = _mm512_mul_epu32(c0, M0), p1 = _mm512_mul_epu32(c2, M1);
                c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1, K0[r], 0x96); /* xor of 3 */
                c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3, K1[r], 0x96);
                c1 = p1;
                c3 = p0;
            }
            c0 = _mm512_and_si512(c0, LO); c1 = _mm512_and_si512(c1, LO);
            c2 = _mm512_and_si512(c2, LO); c3 = _mm512_and_si512(c3, LO);
            __mmask8 f0, f1, f2, f3;
            if (sym) {
                f0 = _mm512_cmplt_epu64_mask(c0, T01); f1 = _mm512_cmplt_epu64_mask(c1, T01);
                f2 = _mm512_cmplt_epu64_mask(c2, T01); f3 = _mm512_cmplt_epu64_mask(c3, T01);
            } else {
                const __m512i xw = _mm512_cvtepu32_epi64(_mm256_loadu_si256((const __m256i *)(xv + l)));
                f0 = _mm512_cmplt_epu64_mask(c0, _mm512_mask_blend_epi64(_mm512_test_epi64_mask(xw, B0), T01, T10));
                f1 = _mm512_cmplt_epu64_mask(c1, _mm512_mask_blend_epi64(_mm512_test_epi64_mask(xw, B1), T01, T10));
                f2 = _mm512_cmplt_epu64_mask(c2, _mm512_mask_blend_epi64(_mm512_test_epi64_mask(xw, B2), T01, T10));
                f3 = _mm512_cmplt_epu64_mask(c3, _mm512_mask_blend_epi64(_mm512_test_epi64_mask(xw, B3), T01, T10));
            }
            __m512i m = _mm512_maskz_mov_epi64(f0, B0);
            m = _mm512_mask_or_epi64(m, f1, m, B1);
            m = _mm512_mask_or_epi64(m, f2, m, B2);
            m = _mm512_mask_or_epi64(m, f3, m, B3);
            __m256i *dst = (__m256i *)(mask + l);
            _mm256_storeu_si256(dst, _mm256_or_si256(_mm256_loadu_si256(dst), _mm512_cvtepi64_epi32(m)));
        }
    }
    for (int l = 0; l < cnt; ++l) mask[l] &= av[l];
}

BB_WIDE_INLINE void bb_block_wide(const uint32_t *BB_RESTRICT xv, const uint32_t *BB_RESTRICT av, int cnt,
                                  uint64_t base, const bb_params *P, uint32_t *BB_RESTRICT mask) {
    bb_block_wide_impl(xv, av, cnt, base, P, mask, 0);
}
BB_WIDE_INLINE void bb_block_wide_sym(const uint32_t *BB_RESTRICT xv, const uint32_t *BB_RESTRICT av, int cnt,
                                      uint64_t base, const bb_params *P, uint32_t *BB_RESTRICT mask) {
    bb_block_wide_impl(xv, av, cnt, base, P, mask, 1);
}
#endif

/* Process words [start, end) of one width with one block variant. */
#define BB_DEFINE_RANGE(NAME, BLOCK, ATTR, T)                                                             \
    ATTR void NAME(const void *xp, void *outp, const void *protp, const bb_params *P, int64_t start,       \
                   int64_t end) {                                                                         \
        const T *x = (const T *)xp, *prot = (const T *)protp;                                             \
        T *out = (T *)outp;                                                                               \
        uint32_t xv[BB_BLOCK], av[BB_BLOCK], mk[BB_BLOCK];                                                \
        for (int64_t j0 = start; j0 < end; j0 += BB_BLOCK) {                                              \
            const int cnt = (end - j0) < BB_BLOCK ? (int)(end - j0) : BB_BLOCK;                           \
            const T *xs = x + j0;                                                                         \
            if (prot) {                                                                                   \
                const T *ps = prot + j0;                                                                  \
                for (int l = 0; l < cnt; ++l) { xv[l] = xs[l]; av[l] = P->attack & ~(uint32_t)ps[l]; }    \
            } else {                                                                                      \
                for (int l = 0; l < cnt; ++l) { xv[l] = xs[l]; av[l] = P->attack; }                       \
            }                                                                                             \
            for (int l = cnt; l < ((cnt + 15) & ~15); ++l) { xv[l] = 0; av[l] = 0; }                      \
            if (P->sym)                                                                                   \
                BLOCK##_sym(xv, av, cnt, P->offset + (uint64_t)j0, P, mk);                                \
            else                                                                                          \
                BLOCK(xv, av, cnt, P->offset + (uint64_t)j0, P, mk);                                      \
            T *os = out + j0;                                                                             \
            if (P->mask_only)                                                                             \
                for (int l = 0; l < cnt; ++l) os[l] = (T)mk[l];                                           \
            else                                                                                          \
                for (int l = 0; l < cnt; ++l) os[l] = (T)(xv[l] ^ mk[l]);                                 \
        }                                                                                                 \
    }

typedef void (*bb_range_fn)(const void *, void *, const void *, const bb_params *, int64_t, int64_t);

BB_DEFINE_RANGE(bb_range8_narrow, bb_block_narrow, BB_TARGETS_NARROW, uint8_t)
BB_DEFINE_RANGE(bb_range16_narrow, bb_block_narrow, BB_TARGETS_NARROW, uint16_t)
BB_DEFINE_RANGE(bb_range32_narrow, bb_block_narrow, BB_TARGETS_NARROW, uint32_t)
#if BB_MULTIVERSION
BB_DEFINE_RANGE(bb_range8_wide, bb_block_wide, BB_TARGET_WIDE, uint8_t)
BB_DEFINE_RANGE(bb_range16_wide, bb_block_wide, BB_TARGET_WIDE, uint16_t)
BB_DEFINE_RANGE(bb_range32_wide, bb_block_wide, BB_TARGET_WIDE, uint32_t)
#endif

static int bb_simd_override = 0; /* 0: auto, 1: narrow variants only */

int bb_set_simd(int level) {
    bb_simd_override = level;
    return 0;
}

static int bb_use_wide(void) {
#if BB_MULTIVERSION
    if (bb_simd_override == 1) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static void bb_pick(int width, int wide, bb_range_fn *fn) {
#if BB_MULTIVERSION
    if (wide) {
        *fn = width == 8 ? bb_range8_wide : width == 16 ? bb_range16_wide : bb_range32_wide;
        return;
    }
#endif
    (void)wide;
    *fn = width == 8 ? bb_range8_narrow : width == 16 ? bb_range16_narrow : bb_range32_narrow;
}

int bb_flip(int width, const void *x, void *out, const void *prot, uint32_t attack, int64_t n, uint64_t offset,
            uint64_t seed, uint64_t t01, uint64_t t10, int mask_only, int nthreads) {
    if (width != 8 && width != 16 && width != 32) return -1;
    if (n < 0 || t01 > (1ull << 32) || t10 > (1ull << 32)) return -2;
    if (n == 0) return 0;
    if (!x || !out) return -3;
    if (width < 32) attack &= (1u << width) - 1u;
    bb_params P;
    P.attack = attack;
    P.ngroups = 0;
    for (int g = 0; g < 8; ++g)
        if ((attack >> (4 * g)) & 0xFu) P.ngroups = g + 1;
    P.k0 = (uint32_t)seed;
    P.k1 = (uint32_t)(seed >> 32);
    P.en01 = t01 != 0;
    P.en10 = t10 != 0;
    P.tm1_01 = (uint32_t)(t01 - P.en01);
    P.tm1_10 = (uint32_t)(t10 - P.en10);
    P.offset = offset;
    P.mask_only = mask_only != 0;
    P.sym = t01 == t10 && t01 != 0;
    P.t01 = t01;
    P.t10 = t10;
    if (t01 == 0 && t10 == 0) P.attack = attack = 0; /* nothing flips: the blocks only copy (or write 0) */
    bb_range_fn fn;
    bb_pick(width, bb_use_wide(), &fn);
    const int64_t nchunks = (n + BB_CHUNK - 1) / BB_CHUNK;
#ifdef _OPENMP
    if (nthreads <= 0) nthreads = omp_get_max_threads();
    {   /* at least BB_MIN_PER_THREAD words per thread: waking threads costs more than small inputs take */
        int64_t most = (n + BB_MIN_PER_THREAD - 1) / BB_MIN_PER_THREAD;
        if (nthreads > most) nthreads = (int)most;
    }
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
#endif
    for (int64_t c = 0; c < nchunks; ++c) {
        int64_t s = c * BB_CHUNK, e = s + BB_CHUNK < n ? s + BB_CHUNK : n;
        fn(x, out, prot, &P, s, e);
    }
    (void)nthreads;
    return 0;
}

const char *bb_build_info(void) {
    static char info[160];
    const char *simd = !BB_MULTIVERSION ? "portable"
                       : bb_use_wide()  ? "avx512 (x86-64-v4, 64-bit lanes)"
                                        : "target_clones(x86-64-v3,default)";
#ifdef _OPENMP
    const char *omp = "openmp";
#else
    const char *omp = "no openmp";
#endif
    int k = 0;
    for (const char *s = omp; *s && k < 60; ++s) info[k++] = *s;
    for (const char *s = ", simd: "; *s; ++s) info[k++] = *s;
    for (const char *s = simd; *s && k < 150; ++s) info[k++] = *s;
    info[k] = 0;
    return info;
}

int bb_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
