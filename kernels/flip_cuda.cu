// Fused random bit-flip kernel for CUDA tensors (compiled by CuPy/NVRTC at first use; see kernels/_cupy_backend.py).
// Definition: docs/patterns.md. One thread per word (grid-stride loop), Philox4x32-10 in
// registers, integer thresholds, one read and one write per word. No headers, so NVRTC needs no include paths.

typedef unsigned char bb_u8;
typedef unsigned short bb_u16;
typedef unsigned int bb_u32;
typedef long long bb_i64;
typedef unsigned long long bb_u64;

#define BB_M0 0xD2511F53u
#define BB_M1 0xCD9E8D57u
#define BB_W0 0x9E3779B9u
#define BB_W1 0xBB67AE85u

__device__ __forceinline__ void bb_philox(bb_u32 &c0, bb_u32 &c1, bb_u32 &c2, bb_u32 &c3, bb_u32 k0, bb_u32 k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        bb_u32 hi0 = __umulhi(BB_M0, c0), lo0 = BB_M0 * c0;
        bb_u32 hi1 = __umulhi(BB_M1, c2), lo1 = BB_M1 * c2;
        bb_u32 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
        k0 += BB_W0; k1 += BB_W1;
    }
}

// Philox4x32-10 with a precomputed key schedule (ks0[r] = k0 + r*W0, ks1[r] = k1 + r*W1): the same numbers as
// bb_philox, two additions per round fewer (the schedule is computed once per thread, not once per call).
__device__ __forceinline__ void bb_philox_ks(bb_u32 &c0, bb_u32 &c1, bb_u32 &c2, bb_u32 &c3, const bb_u32 *ks0,
                                             const bb_u32 *ks1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        bb_u32 hi0 = __umulhi(BB_M0, c0), lo0 = BB_M0 * c0;
        bb_u32 hi1 = __umulhi(BB_M1, c2), lo1 = BB_M1 * c2;
        bb_u32 n0 = hi1 ^ c1 ^ ks0[r], n2 = hi0 ^ c3 ^ ks1[r];
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    }
}

// flip iff T > 0 and r <= T - 1 (T in [0, 2^32] passed as en = T > 0 and tm1 = T - 1)
__device__ __forceinline__ bb_u32 bb_flipbit(bb_u32 x, int b, bb_u32 r, bb_u32 tm01, bb_u32 tm10, bb_u32 en01,
                                             bb_u32 en10) {
    bb_u32 bit = (x >> b) & 1u;
    return ((bit ? en10 : en01) & (bb_u32)(r <= (bit ? tm10 : tm01))) << b;
}

template <typename T>
__device__ __forceinline__ void bb_flip_impl(const T *__restrict__ x, T *out, const T *__restrict__ prot,
                                             int use_prot, bb_u32 attack, bb_i64 n, bb_u64 offset, bb_u32 k0,
                                             bb_u32 k1, bb_u32 tm01, bb_u32 tm10, bb_u32 en01, bb_u32 en10,
                                             int mask_only) {
    const bb_i64 stride = (bb_i64)blockDim.x * gridDim.x;
    bb_u32 ks0[10], ks1[10];
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        ks0[r] = k0 + (bb_u32)r * BB_W0;
        ks1[r] = k1 + (bb_u32)r * BB_W1;
    }
    for (bb_i64 j = (bb_i64)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += stride) {
        bb_u32 xv = (bb_u32)x[j];
        bb_u32 a = use_prot ? (attack & ~(bb_u32)prot[j]) : attack;
        bb_u32 mask = 0;
        if (a) {
            bb_u64 i = offset + (bb_u64)j;
            bb_u32 i0 = (bb_u32)i, i1 = (bb_u32)(i >> 32);
#pragma unroll
            for (int g = 0; g < (int)(sizeof(T) * 2); ++g) {  // 4 bits per Philox call; fully unrolled per width
                if (!((a >> (4 * g)) & 0xFu)) continue;
                bb_u32 c0 = i0, c1 = i1, c2 = (bb_u32)g, c3 = 0;
                bb_philox_ks(c0, c1, c2, c3, ks0, ks1);
                const int b = 4 * g;
                bb_u32 m;
                if (tm01 == tm10 && en01 == en10) {  // one rate for both directions (uniform across the grid)
                    m = (((bb_u32)(c0 <= tm01)) | ((bb_u32)(c1 <= tm01) << 1) | ((bb_u32)(c2 <= tm01) << 2) |
                         ((bb_u32)(c3 <= tm01) << 3)) & (0u - en01);
                    m <<= b;
                } else {
                    m = bb_flipbit(xv, b, c0, tm01, tm10, en01, en10) |
                        bb_flipbit(xv, b + 1, c1, tm01, tm10, en01, en10) |
                        bb_flipbit(xv, b + 2, c2, tm01, tm10, en01, en10) |
                        bb_flipbit(xv, b + 3, c3, tm01, tm10, en01, en10);
                }
                mask |= m;
            }
            mask &= a;
        }
        out[j] = (T)(mask_only ? mask : (xv ^ mask));
    }
}

#define BB_KERNEL(NAME, T)                                                                                     \
    extern "C" __global__ void NAME(const T *__restrict__ x, T *out, const T *__restrict__ prot, int use_prot,   \
                                    bb_u32 attack, bb_i64 n, bb_u64 offset, bb_u32 k0, bb_u32 k1, bb_u32 tm01, \
                                    bb_u32 tm10, bb_u32 en01, bb_u32 en10, int mask_only) {                    \
        bb_flip_impl<T>(x, out, prot, use_prot, attack, n, offset, k0, k1, tm01, tm10, en01, en10, mask_only);  \
    }

BB_KERNEL(bb_flip_u8, bb_u8)
BB_KERNEL(bb_flip_u16, bb_u16)
BB_KERNEL(bb_flip_u32, bb_u32)

// Philox4x32-10 for n (counter, key) pairs: ctr [n, 4], key [n, 2] -> out [n, 4] (known-answer tests).
extern "C" __global__ void bb_philox_many(const bb_u32 *ctr, const bb_u32 *key, bb_u32 *out, bb_i64 n) {
    bb_i64 t = (bb_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    bb_u32 c0 = ctr[4 * t], c1 = ctr[4 * t + 1], c2 = ctr[4 * t + 2], c3 = ctr[4 * t + 3];
    bb_philox(c0, c1, c2, c3, key[2 * t], key[2 * t + 1]);
    out[4 * t] = c0; out[4 * t + 1] = c1; out[4 * t + 2] = c2; out[4 * t + 3] = c3;
}
