/* csum.c - the Internet checksum, fast (see csum.h). */
#include "csum.h"

#include <string.h>

#if defined(__x86_64__)
#include <x86intrin.h>
#define ADDC(c, a, w) ((c) = _addcarry_u64((c), (a), (w), &(a)))
#else
static inline unsigned char addc_generic(unsigned char c, unsigned long long *a, unsigned long long w)
{
    unsigned long long s = *a + w, s2 = s + c;
    unsigned char out = (unsigned char)((s < w) | (s2 < s));
    *a = s2;
    return out;
}
#define ADDC(c, a, w) ((c) = addc_generic((c), &(a), (w)))
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NATIVE_LE 1
#else
#define NATIVE_LE 0
#endif

/* Fold a native-order 64-bit sum to 16 bits (native order). */
static inline uint16_t fold64(uint64_t acc)
{
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffu) + (acc >> 16);
    acc = (acc & 0xffffu) + (acc >> 16);
    return (uint16_t)acc;
}

static inline uint16_t swap16(uint16_t v) { return (uint16_t)(v << 8 | v >> 8); }

/* The last len (1..7) bytes at p as one native word, zero-padded as if they were the start
 * of an 8-byte word (the byte at p + k in the k-th byte of memory order). */
static inline uint64_t tail_word(const uint8_t *p, size_t len)
{
#if NATIVE_LE
    uint64_t w = 0;
    size_t o = 0;
    if (len & 4) {
        uint32_t x;
        memcpy(&x, p, 4);
        w = x;
        o = 4;
    }
    if (len & 2) {
        uint16_t x;
        memcpy(&x, p + o, 2);
        w |= (uint64_t)x << (8 * o);
        o += 2;
    }
    if (len & 1)
        w |= (uint64_t)p[o] << (8 * o);
    return w;
#else
    uint8_t t[8] = { 0 };
    memcpy(t, p, len);
    uint64_t w;
    memcpy(&w, t, 8);
    return w;
#endif
}

/* Native words with end-around carry (an adc chain), any length. */
static uint64_t csum_adc(const uint8_t *p, size_t len)
{
    unsigned long long acc = 0, w0, w1, w2, w3;
    unsigned char c = 0;
    while (len >= 32) {
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        ADDC(c, acc, w0);
        ADDC(c, acc, w1);
        ADDC(c, acc, w2);
        ADDC(c, acc, w3);
        p += 32;
        len -= 32;
    }
    while (len >= 8) {
        memcpy(&w0, p, 8);
        ADDC(c, acc, w0);
        p += 8;
        len -= 8;
    }
    if (len)
        ADDC(c, acc, tail_word(p, len));
    ADDC(c, acc, 0);   /* end-around carry */
    return acc + c;    /* cannot carry again */
}

#if defined(__x86_64__)
/* len >= 32. Each 32-bit lane adds the lane's two native 16-bit words: _mm256_madd_epi16
 * with ones does that in one instruction but reads the words as signed, so they are
 * biased by 0x8000 first (XOR) and the bias, 0x10000 per lane and vector, is added back at
 * the end. A lane's true sum grows by at most 0x1fffe per vector: below 2^32 for up to
 * 32768 vectors per accumulator, 2 MiB per call (a call here sums at most 64 KiB). Three
 * instructions per 32 bytes, none of them a shuffle (which would all queue on one port). */
__attribute__((target("avx2"))) static uint64_t csum_avx2(const uint8_t *p, size_t len)
{
    /* keep[r .. r+32) masks a 32-byte load down to its last r bytes */
    static const uint8_t keep[64] = {
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
        255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    };
    const __m256i bias = _mm256_set1_epi16((short)0x8000), ones = _mm256_set1_epi16(1);
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    uint32_t n0 = 0, n1 = 0;   /* vectors added into each lane of a0, a1 */
    while (len >= 64) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)p);
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_xor_si256(v0, bias), ones));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_xor_si256(v1, bias), ones));
        n0++;
        n1++;
        p += 64;
        len -= 64;
    }
    if (len >= 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)p);
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_xor_si256(v, bias), ones));
        n0++;
        p += 32;
        len -= 32;
    }
    /* each lane holds its true sum minus 0x10000 per vector it took, mod 2^32; its true sum
     * is below 2^32, so adding the bias back mod 2^32 gives it exactly */
    a0 = _mm256_add_epi32(a0, _mm256_set1_epi32((int)(n0 << 16)));
    a1 = _mm256_add_epi32(a1, _mm256_set1_epi32((int)(n1 << 16)));
    uint32_t l0[8], l1[8];
    _mm256_storeu_si256((__m256i *)l0, a0);
    _mm256_storeu_si256((__m256i *)l1, a1);
    uint64_t s = 0;
    for (int i = 0; i < 8; i++)
        s += (uint64_t)l0[i] + l1[i];
    if (!len)
        return s;
    /* the last len bytes: the 32 bytes that end at the buffer's end (all inside it, the
     * buffer is >= 32 bytes), the first 32 - len of them (already counted) masked off */
    const __m256i z = _mm256_setzero_si256();
    __m256i v = _mm256_loadu_si256((const __m256i *)(p + len - 32));
    v = _mm256_and_si256(v, _mm256_loadu_si256((const __m256i *)(keep + len)));
    v = _mm256_add_epi64(_mm256_unpacklo_epi32(v, z), _mm256_unpackhi_epi32(v, z));
    uint64_t l[4];
    _mm256_storeu_si256((__m256i *)l, v);
    uint16_t t = fold64(l[0] + l[1] + l[2] + l[3]);
    /* vector byte k is buffer byte (len - 32 + k) past p, and p sits at an even offset: for
     * an odd len every byte sits one place off its 16-bit word position, which swaps the sum */
    if (len & 1)
        t = swap16(t);
    s += t;
    return s + (s < t);
}

static int have_avx2(void)
{
    static int known = -1;
    int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (k < 0) {
        __builtin_cpu_init();
        k = __builtin_cpu_supports("avx2") ? 1 : 0;
        __atomic_store_n(&known, k, __ATOMIC_RELAXED);
    }
    return k;
}
#endif

uint32_t uf_csum_add(const void *buf, size_t len, uint32_t sum)
{
    uint64_t acc;
#if defined(__x86_64__)
    if (len >= 32 && have_avx2()) {
        /* csum_avx2 is exact up to 2 MiB: longer buffers in 1 MiB pieces (even lengths,
         * so every piece starts on a 16-bit word boundary) */
        enum { PIECE = 1 << 20 };
        const uint8_t *p = buf;
        acc = 0;
        for (; len > PIECE; p += PIECE, len -= PIECE) {
            uint64_t a = csum_avx2(p, PIECE);
            acc += a;
            acc += acc < a;
        }
        uint64_t a = csum_avx2(p, len);
        acc += a;
        acc += acc < a;
    } else
#endif
        acc = csum_adc(buf, len);
    uint16_t f = fold64(acc);
    uint64_t total = (uint64_t)sum + (NATIVE_LE ? swap16(f) : f);
    return (uint32_t)((total & 0xffffffffu) + (total >> 32));
}

uint16_t uf_csum_fold(uint32_t sum)
{
    sum = (sum & 0xffffu) + (sum >> 16);
    sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)sum;
}

uint16_t uf_checksum(const void *buf, size_t len)
{
    return (uint16_t)~uf_csum_fold(uf_csum_add(buf, len, 0));
}
