/* Fast LMS (RFC 8554) tree computation for SHA-256/192 (n = 24): the LM-OTS chains, the leaf
 * nodes and the interior nodes, with the GIL released so that threads run in parallel.
 *
 * Optional compiled part of imgtool.lms_tree: built by `pip install -e .` when a C compiler and
 * the Python headers exist; when it is missing imgtool.lms_tree computes the same values in pure
 * Python. The tests compare both with an independent RFC 8554 computation and with hsslms.
 *
 * Every chain step hashes I || u32(q) || u16(i) || u8(j) || tmp (47 bytes): one SHA-256 block,
 * whose first four message words (I) never change for a key, so the state after rounds 0-3 is
 * computed once per key. Three implementations, chosen at run time (CPUID): on x86-64 CPUs with
 * the SHA extensions, three independent chains interleaved on them ("sha-ni"); with AVX2, eight
 * chains per vector instruction ("avx2"); elsewhere portable C, one chain at a time ("c").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LMSFAST_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#define N 24
#define MAX_P 200 /* chains per LM-OTS key for n = 24 (w = 1) */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static const uint32_t IV[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ------------------------------------------------------------------ portable block function */
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define S0(x) (ROR(x, 2) ^ ROR(x, 13) ^ ROR(x, 22))
#define S1(x) (ROR(x, 6) ^ ROR(x, 11) ^ ROR(x, 25))
#define s0(x) (ROR(x, 7) ^ ROR(x, 18) ^ ((x) >> 3))
#define s1(x) (ROR(x, 17) ^ ROR(x, 19) ^ ((x) >> 10))

/* Rounds first..63 of one block on st (a..h after round first-1), message words w[0..15];
 * the result is added to base (the chaining value) into out. */
static inline __attribute__((always_inline)) void portable_rounds(
    const uint32_t base[8], const uint32_t st[8], const uint32_t w_in[16], int first,
    uint32_t out[8]) {
    uint32_t w[64];
    memcpy(w, w_in, 64);
#pragma GCC unroll 48
    for (int t = 16; t < 64; t++) w[t] = s1(w[t - 2]) + w[t - 7] + s0(w[t - 15]) + w[t - 16];
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6],
             h = st[7];
#pragma GCC unroll 64
    for (int t = first; t < 64; t++) {
        uint32_t t1 = h + S1(e) + (g ^ (e & (f ^ g))) + K256[t] + w[t];
        uint32_t t2 = S0(a) + ((a & b) | (c & (a | b)));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    out[0] = base[0] + a;
    out[1] = base[1] + b;
    out[2] = base[2] + c;
    out[3] = base[3] + d;
    out[4] = base[4] + e;
    out[5] = base[5] + f;
    out[6] = base[6] + g;
    out[7] = base[7] + h;
}

static void portable_block(uint32_t state[8], const uint32_t w[16]) {
    uint32_t tmp[8];
    portable_rounds(state, state, w, 0, tmp);
    memcpy(state, tmp, 32);
}

/* State after rounds 0..3 with message words w[0..3] from the IV. */
static void portable_mid4(const uint32_t w[4], uint32_t st[8]) {
    uint32_t a = IV[0], b = IV[1], c = IV[2], d = IV[3], e = IV[4], f = IV[5], g = IV[6],
             h = IV[7];
    for (int t = 0; t < 4; t++) {
        uint32_t t1 = h + S1(e) + ((e & f) ^ (~e & g)) + K256[t] + w[t];
        uint32_t t2 = S0(a) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    st[0] = a, st[1] = b, st[2] = c, st[3] = d, st[4] = e, st[5] = f, st[6] = g, st[7] = h;
}

/* ------------------------------------------------------------------ SHA-NI block function */
#ifdef LMSFAST_X86
#define SHANI __attribute__((target("sha,sse4.1")))

/* The state as the SHA instructions hold it: ABEF and CDGH. */
SHANI static inline void to_ni(const uint32_t s[8], __m128i *abef, __m128i *cdgh) {
    __m128i tmp = _mm_loadu_si128((const __m128i *)&s[0]);
    __m128i st1 = _mm_loadu_si128((const __m128i *)&s[4]);
    tmp = _mm_shuffle_epi32(tmp, 0xB1);
    st1 = _mm_shuffle_epi32(st1, 0x1B);
    *abef = _mm_alignr_epi8(tmp, st1, 8);
    *cdgh = _mm_blend_epi16(st1, tmp, 0xF0);
}

SHANI static inline void from_ni(__m128i abef, __m128i cdgh, uint32_t s[8]) {
    __m128i tmp = _mm_shuffle_epi32(abef, 0x1B);
    cdgh = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&s[0], _mm_blend_epi16(tmp, cdgh, 0xF0));
    _mm_storeu_si128((__m128i *)&s[4], _mm_alignr_epi8(cdgh, tmp, 8));
}

#define KQ(t)                                                                              \
    _mm_set_epi32((int)K256[4 * (t) + 3], (int)K256[4 * (t) + 2], (int)K256[4 * (t) + 1], \
                  (int)K256[4 * (t)])

/* L independent blocks in lockstep: quads first..15 (4 rounds each) on (s0, s1), message quads
 * q[l][0..3] (q[l][0] must hold W[0..3] even when first > 0: the schedule needs it). */
#define NI_LANES(L)                                                                          \
    SHANI static inline void ni_rounds##L(__m128i s0[L], __m128i s1[L], __m128i q[L][4],     \
                                          int first) {                                       \
        _Pragma("GCC unroll 16") for (int t = 0; t < 16; t++) {                              \
            if (t >= 4) {                                                                    \
                _Pragma("GCC unroll 4") for (int l = 0; l < L; l++) {                        \
                    __m128i x = _mm_sha256msg1_epu32(q[l][t & 3], q[l][(t + 1) & 3]);        \
                    x = _mm_add_epi32(x, _mm_alignr_epi8(q[l][(t + 3) & 3], q[l][(t + 2) & 3], \
                                                         4));                                \
                    q[l][t & 3] = _mm_sha256msg2_epu32(x, q[l][(t + 3) & 3]);                \
                }                                                                            \
            }                                                                                \
            if (t < first) continue;                                                         \
            __m128i k = KQ(t);                                                               \
            _Pragma("GCC unroll 4") for (int l = 0; l < L; l++) {                            \
                __m128i m = _mm_add_epi32(q[l][t & 3], k);                                   \
                s1[l] = _mm_sha256rnds2_epu32(s1[l], s0[l], m);                              \
                s0[l] = _mm_sha256rnds2_epu32(s0[l], s1[l], _mm_shuffle_epi32(m, 0x0E));     \
            }                                                                                \
        }                                                                                    \
    }
NI_LANES(1)
NI_LANES(3)

SHANI static void ni_block(uint32_t state[8], const uint32_t w[16]) {
    __m128i s0[1], s1[1], q[1][4];
    __m128i a0, a1;
    to_ni(state, &a0, &a1);
    s0[0] = a0, s1[0] = a1;
    for (int i = 0; i < 4; i++)
        q[0][i] = _mm_set_epi32((int)w[4 * i + 3], (int)w[4 * i + 2], (int)w[4 * i + 1],
                                (int)w[4 * i]);
    ni_rounds1(s0, s1, q, 0);
    from_ni(_mm_add_epi32(s0[0], a0), _mm_add_epi32(s1[0], a1), state);
}

static int cpu_has_shani(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & bit_SSE4_1) || !(c & bit_SSSE3)) return 0;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1; /* SHA */
}
#else
static int cpu_has_shani(void) { return 0; }
#endif

/* ------------------------------------------------------------------ shared pieces */
typedef void (*block_fn)(uint32_t state[8], const uint32_t w[16]);

/* SHA-256 of a message whose length is known; digest words (big-endian values) into out. */
static void sha256_words(block_fn blk, const uint8_t *msg, size_t len, uint32_t out[8]) {
    uint32_t st[8], w[16];
    memcpy(st, IV, sizeof st);
    size_t off = 0;
    for (; off + 64 <= len; off += 64) {
        for (int i = 0; i < 16; i++) w[i] = be32(msg + off + 4 * i);
        blk(st, w);
    }
    uint8_t tail[128];
    size_t rest = len - off;
    memset(tail, 0, sizeof tail);
    memcpy(tail, msg + off, rest);
    tail[rest] = 0x80;
    size_t tl = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) tail[tl - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t b = 0; b < tl; b += 64) {
        for (int i = 0; i < 16; i++) w[i] = be32(tail + b + 4 * i);
        blk(st, w);
    }
    memcpy(out, st, 32);
}

static void words_to_bytes24(const uint32_t d[6], uint8_t *out) {
    for (int i = 0; i < 6; i++) put_be32(out + 4 * i, d[i]);
}

/* Message words 4..15 of a chain step: u32(q) || u16(i) || u8(j) || tmp (6 words) || padding
 * for a 47-byte message. */
static inline void chain_words(uint32_t q, uint32_t i, uint32_t j, const uint32_t d[6],
                               uint32_t w[16]) {
    w[4] = q;
    w[5] = (i << 16) | (j << 8) | (d[0] >> 24);
    w[6] = (d[0] << 8) | (d[1] >> 24);
    w[7] = (d[1] << 8) | (d[2] >> 24);
    w[8] = (d[2] << 8) | (d[3] >> 24);
    w[9] = (d[3] << 8) | (d[4] >> 24);
    w[10] = (d[4] << 8) | (d[5] >> 24);
    w[11] = (d[5] << 8) | 0x80;
    w[12] = 0;
    w[13] = 0;
    w[14] = 0;
    w[15] = 47 * 8;
}

typedef struct {
    uint32_t iw[4];  /* I as message words */
    uint8_t I[16];
    uint32_t seed[6]; /* SEED as words */
    int w, p, h;
    int impl;        /* IMPL_* */
    uint32_t mid[8]; /* a..h after rounds 0..3 (portable and AVX2) */
} keyctx;

enum { IMPL_C = 0, IMPL_AVX2 = 1, IMPL_SHANI = 2 };
static const char *const IMPL_NAMES[] = {"c", "avx2", "sha-ni"};

/* y[i] for every chain i of leaf q (each y as 6 words), portable block function. */
static void chains_portable(const keyctx *k, uint32_t q, uint32_t y[][6]) {
    uint32_t steps = (1u << k->w) - 1;
    uint32_t w[16];
    memcpy(w, k->iw, 16);
    for (int i = 0; i < k->p; i++) {
        uint32_t d[8];
        chain_words(q, (uint32_t)i, 0xff, k->seed, w);
        portable_rounds(IV, k->mid, w, 4, d);
        for (uint32_t j = 0; j < steps; j++) {
            chain_words(q, (uint32_t)i, j, d, w);
            portable_rounds(IV, k->mid, w, 4, d);
        }
        memcpy(y[i], d, 24);
    }
}

#ifdef LMSFAST_X86
/* Chains run LANES at a time so that the SHA units overlap independent blocks (51 = 17 x 3 for
 * W4; measured on an AMD EPYC (Zen 4): 1 lane 24, 2 lanes 34-38, 3 lanes 43 M hashes/s/core). */
#define LANES 3
#define ni_rounds_lanes ni_rounds3
SHANI static void chains_ni(const keyctx *k, uint32_t q, uint32_t y[][6]) {
    uint32_t steps = (1u << k->w) - 1;
    __m128i iv0, iv1, mid0, mid1;
    to_ni(IV, &iv0, &iv1);
    /* rounds 0-3 (W0..W3 = I) once per call */
    {
        __m128i s0[1] = {iv0}, s1[1] = {iv1};
        __m128i qq = _mm_set_epi32((int)k->iw[3], (int)k->iw[2], (int)k->iw[1], (int)k->iw[0]);
        __m128i m = _mm_add_epi32(qq, KQ(0));
        s1[0] = _mm_sha256rnds2_epu32(s1[0], s0[0], m);
        s0[0] = _mm_sha256rnds2_epu32(s0[0], s1[0], _mm_shuffle_epi32(m, 0x0E));
        mid0 = s0[0];
        mid1 = s1[0];
    }
    __m128i qi = _mm_set_epi32((int)k->iw[3], (int)k->iw[2], (int)k->iw[1], (int)k->iw[0]);
    for (int i0 = 0; i0 < k->p; i0 += LANES) {
        uint32_t d[LANES][8];
        int ii[LANES];
        for (int l = 0; l < LANES; l++) {
            ii[l] = i0 + l < k->p ? i0 + l : k->p - 1; /* a spare lane repeats the last chain */
            memcpy(d[l], k->seed, 24);
        }
        for (uint32_t s = 0; s <= steps; s++) {
            uint32_t j = s == 0 ? 0xff : s - 1;
            __m128i s0[LANES], s1[LANES], qm[LANES][4];
            for (int l = 0; l < LANES; l++) {
                uint32_t w[16];
                chain_words(q, (uint32_t)ii[l], j, d[l], w);
                qm[l][0] = qi;
                qm[l][1] = _mm_set_epi32((int)w[7], (int)w[6], (int)w[5], (int)w[4]);
                qm[l][2] = _mm_set_epi32((int)w[11], (int)w[10], (int)w[9], (int)w[8]);
                qm[l][3] = _mm_set_epi32((int)w[15], (int)w[14], (int)w[13], (int)w[12]);
                s0[l] = mid0;
                s1[l] = mid1;
            }
            ni_rounds_lanes(s0, s1, qm, 1);
            for (int l = 0; l < LANES; l++)
                from_ni(_mm_add_epi32(s0[l], iv0), _mm_add_epi32(s1[l], iv1), d[l]);
        }
        for (int l = 0; l < LANES && i0 + l < k->p; l++) memcpy(y[i0 + l], d[l], 24);
    }
}
#endif

#ifdef LMSFAST_X86
/* Eight chains per instruction with AVX2 (GCC vector extensions) for CPUs without the SHA
 * extensions: lane l runs chain (start * p + base + l) of the chunk, so no lane is idle except
 * at the chunk's very end. y gets 6 words per chain, chains of a leaf consecutive. */
typedef uint32_t v8 __attribute__((vector_size(32)));
#define AVX2 __attribute__((target("avx2")))

AVX2 static void chains_avx2(const keyctx *k, uint32_t start, uint32_t end, uint32_t *y) {
    const uint32_t p = (uint32_t)k->p, steps = (1u << k->w) - 1;
    const uint32_t total = (end - start) * p;
    const v8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
    for (uint32_t base = 0; base < total; base += 8) {
        uint32_t qa[8], ia[8];
        for (uint32_t l = 0; l < 8; l++) {
            uint32_t idx = base + l < total ? base + l : total - 1; /* spare lanes repeat */
            qa[l] = start + idx / p;
            ia[l] = (idx % p) << 16;
        }
        v8 q, ii, d[6];
        memcpy(&q, qa, sizeof q);
        memcpy(&ii, ia, sizeof ii);
        for (int n = 0; n < 6; n++) d[n] = zero + k->seed[n];
        for (uint32_t s = 0; s <= steps; s++) {
            uint32_t j = s == 0 ? 0xff : s - 1;
            v8 w[16];
            for (int n = 0; n < 4; n++) w[n] = zero + k->iw[n];
            w[4] = q;
            w[5] = ii | (j << 8) | (d[0] >> 24);
            for (int n = 0; n < 5; n++) w[6 + n] = (d[n] << 8) | (d[n + 1] >> 24);
            w[11] = (d[5] << 8) | 0x80;
            w[12] = zero;
            w[13] = zero;
            w[14] = zero;
            w[15] = zero + 47 * 8;
            v8 a = zero + k->mid[0], b = zero + k->mid[1], c = zero + k->mid[2],
               dd = zero + k->mid[3], e = zero + k->mid[4], f = zero + k->mid[5],
               g = zero + k->mid[6], h = zero + k->mid[7];
#pragma GCC unroll 60
            for (int t = 4; t < 64; t++) {
                if (t >= 16)
                    w[t & 15] = s1(w[(t - 2) & 15]) + w[(t - 7) & 15] + s0(w[(t - 15) & 15]) +
                                w[t & 15];
                v8 t1 = h + S1(e) + (g ^ (e & (f ^ g))) + K256[t] + w[t & 15];
                v8 t2 = S0(a) + ((a & b) | (c & (a | b)));
                h = g;
                g = f;
                f = e;
                e = dd + t1;
                dd = c;
                c = b;
                b = a;
                a = t1 + t2;
            }
            d[0] = a + IV[0];
            d[1] = b + IV[1];
            d[2] = c + IV[2];
            d[3] = dd + IV[3];
            d[4] = e + IV[4];
            d[5] = f + IV[5];
        }
        for (uint32_t l = 0; l < 8 && base + l < total; l++)
            for (int n = 0; n < 6; n++) y[(size_t)(base + l) * 6 + n] = d[n][l];
    }
}

static int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#else
static int cpu_has_avx2(void) { return 0; }
#endif

/* Whether this CPU can run an implementation. */
static int impl_ok(int impl) {
    return impl == IMPL_C || (impl == IMPL_AVX2 && cpu_has_avx2()) ||
           (impl == IMPL_SHANI && cpu_has_shani());
}

/* Leaf nodes T[2^h + q] for q in [start, end) into out (24 bytes each); ybuf holds
 * (end - start) * p * 6 words (used by the AVX2 chains). */
static void compute_leaves(const keyctx *k, uint32_t start, uint32_t end, uint8_t *out,
                           uint32_t *ybuf) {
    block_fn blk = portable_block;
#ifdef LMSFAST_X86
    if (k->impl == IMPL_SHANI) blk = ni_block;
    if (k->impl == IMPL_AVX2) chains_avx2(k, start, end, ybuf);
#endif
    uint32_t y1[MAX_P][6];
    uint8_t buf[22 + MAX_P * N];
    for (uint32_t q = start; q < end; q++) {
        const uint32_t(*y)[6] = (const uint32_t(*)[6])y1;
        if (k->impl == IMPL_AVX2)
            y = (const uint32_t(*)[6])(ybuf + (size_t)(q - start) * k->p * 6);
#ifdef LMSFAST_X86
        else if (k->impl == IMPL_SHANI)
            chains_ni(k, q, y1);
#endif
        else
            chains_portable(k, q, y1);
        /* K = H(I || u32(q) || D_PBLC || y[0] || ... || y[p-1]) */
        memcpy(buf, k->I, 16);
        put_be32(buf + 16, q);
        buf[20] = 0x80;
        buf[21] = 0x80;
        for (int i = 0; i < k->p; i++) words_to_bytes24(y[i], buf + 22 + N * i);
        uint32_t kd[8];
        sha256_words(blk, buf, 22 + (size_t)N * k->p, kd);
        /* T[r] = H(I || u32(r) || D_LEAF || K) */
        uint8_t leaf[46];
        memcpy(leaf, k->I, 16);
        put_be32(leaf + 16, (1u << k->h) + q);
        leaf[20] = 0x82;
        leaf[21] = 0x82;
        words_to_bytes24(kd, leaf + 22);
        uint32_t ld[8];
        sha256_words(blk, leaf, sizeof leaf, ld);
        words_to_bytes24(ld, out + (size_t)N * (q - start));
    }
}

/* The implementation named by a Python str (NULL: the fastest here), or -1 with an error. */
static int parse_impl(PyObject *name) {
    if (name == NULL || name == Py_None) {
        for (int i = IMPL_SHANI; i > IMPL_C; i--)
            if (impl_ok(i)) return i;
        return IMPL_C;
    }
    for (int i = 0; i <= IMPL_SHANI; i++) {
        if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, IMPL_NAMES[i]) == 0) {
            if (impl_ok(i)) return i;
            PyErr_Format(PyExc_ValueError, "impl %s: this CPU cannot run it", IMPL_NAMES[i]);
            return -1;
        }
    }
    PyErr_SetString(PyExc_ValueError, "impl must be 'sha-ni', 'avx2' or 'c'");
    return -1;
}

/* ------------------------------------------------------------------ Python functions */
static PyObject *py_leaves(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"I", "seed", "w", "p", "h", "start", "end", "impl", NULL};
    Py_buffer ib, sb;
    int w, p, h;
    Py_ssize_t start, end;
    PyObject *impl_name = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*iiinn|O", kwlist, &ib, &sb, &w, &p, &h,
                                     &start, &end, &impl_name))
        return NULL;
    PyObject *res = NULL;
    uint32_t *ybuf = NULL;
    int impl = parse_impl(impl_name);
    if (impl < 0) goto done;
    if (ib.len != 16 || sb.len != N) {
        PyErr_SetString(PyExc_ValueError, "I must be 16 bytes and seed 24 bytes");
        goto done;
    }
    if (!(w == 1 || w == 2 || w == 4 || w == 8) || p < 1 || p > MAX_P || h < 1 || h > 25) {
        PyErr_SetString(PyExc_ValueError, "w must be 1, 2, 4 or 8, p 1..200 and h 1..25");
        goto done;
    }
    if (start < 0 || start > end || end > ((Py_ssize_t)1 << h)) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= start <= end <= 2^h");
        goto done;
    }
    keyctx k;
    memcpy(k.I, ib.buf, 16);
    for (int i = 0; i < 4; i++) k.iw[i] = be32(k.I + 4 * i);
    for (int i = 0; i < 6; i++) k.seed[i] = be32((const uint8_t *)sb.buf + 4 * i);
    k.w = w, k.p = p, k.h = h;
    k.impl = impl;
    portable_mid4(k.iw, k.mid);
    if (impl == IMPL_AVX2) {
        ybuf = PyMem_RawMalloc(((size_t)(end - start) * (size_t)p * 6 + 1) * sizeof *ybuf);
        if (ybuf == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((end - start) * N));
    if (res == NULL) goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(res);
    Py_BEGIN_ALLOW_THREADS compute_leaves(&k, (uint32_t)start, (uint32_t)end, out, ybuf);
    Py_END_ALLOW_THREADS
done:
    PyMem_RawFree(ybuf);
    PyBuffer_Release(&ib);
    PyBuffer_Release(&sb);
    return res;
}

/* All nodes of the tree from its leaves: 2^(h+1) * 24 bytes, node r at offset 24 r (r >= 1;
 * the first 24 bytes are zero). */
static PyObject *py_tree(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"I", "leaves", "impl", NULL};
    Py_buffer ib, lb;
    PyObject *impl_name = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*|O", kwlist, &ib, &lb, &impl_name))
        return NULL;
    PyObject *res = NULL;
    int impl = parse_impl(impl_name);
    if (impl < 0) goto done;
    Py_ssize_t count = lb.len / N;
    if (ib.len != 16 || lb.len % N != 0 || count < 2 || count > (1 << 25) ||
        (count & (count - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError,
                        "I must be 16 bytes and leaves 2^h nodes of 24 bytes (1 <= h <= 25)");
        goto done;
    }
    res = PyBytes_FromStringAndSize(NULL, 2 * count * N);
    if (res == NULL) goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(res);
    uint8_t I[16];
    memcpy(I, ib.buf, 16);
    const uint8_t *lv = (const uint8_t *)lb.buf;
    block_fn blk = portable_block;
#ifdef LMSFAST_X86
    if (impl == IMPL_SHANI) blk = ni_block;
#endif
    Py_BEGIN_ALLOW_THREADS memset(out, 0, N);
    memcpy(out + (size_t)count * N, lv, (size_t)count * N);
    uint8_t msg[70];
    memcpy(msg, I, 16);
    msg[20] = 0x83;
    msg[21] = 0x83;
    for (Py_ssize_t r = count - 1; r >= 1; r--) {
        put_be32(msg + 16, (uint32_t)r);
        memcpy(msg + 22, out + (size_t)(2 * r) * N, 2 * N);
        uint32_t d[8];
        sha256_words(blk, msg, sizeof msg, d);
        words_to_bytes24(d, out + (size_t)r * N);
    }
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&ib);
    PyBuffer_Release(&lb);
    return res;
}

static PyObject *py_impls(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *list = PyList_New(0);
    for (int i = IMPL_SHANI; list != NULL && i >= IMPL_C; i--) {
        if (!impl_ok(i)) continue;
        PyObject *name = PyUnicode_FromString(IMPL_NAMES[i]);
        if (name == NULL || PyList_Append(list, name) < 0) Py_CLEAR(list);
        Py_XDECREF(name);
    }
    return list;
}

static PyMethodDef methods[] = {
    {"leaves", (PyCFunction)(void (*)(void))py_leaves, METH_VARARGS | METH_KEYWORDS,
     "leaves(I, seed, w, p, h, start, end, impl=None) -> bytes: the leaf nodes T[2^h + q] for q "
     "in [start, end), 24 bytes each; impl 'sha-ni', 'avx2' or 'c' (None: the fastest here)."},
    {"tree", (PyCFunction)(void (*)(void))py_tree, METH_VARARGS | METH_KEYWORDS,
     "tree(I, leaves, impl=None) -> bytes: every node (node r at offset 24 r, r >= 1)."},
    {"impls", py_impls, METH_NOARGS,
     "impls() -> list[str]: the implementations this CPU can run, fastest first."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_lmsfast", "Fast LMS SHA-256/192 tree computation.", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__lmsfast(void) { return PyModule_Create(&module); }
