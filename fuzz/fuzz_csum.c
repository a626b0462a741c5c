/* fuzz_csum.c - the checksum (csrc/csum.c) against the plain RFC 1071 loop.
 *
 * Sums arbitrary bytes at every start offset 0..63 (the vector loads are unaligned, the
 * 16-bit word positions follow the buffer's start) and every length the input gives, up to
 * 9000 bytes: the 64-byte blocks, the 32-byte block, the masked last 1..31 bytes with either
 * parity, the add-with-carry words below 32 bytes, each with a running sum carried in.
 * Checks uf_csum_add (folded), uf_checksum and uf_csum_words against fuzz_util.h's
 * reference. The buffer is allocated at exactly its length, so ASan catches a load past it.
 */
#include "fuzz_util.h"
#include "csum.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = { data, size };
    size_t off = fz_u8(&in) % 64;
    uint32_t sum = fz_u32(&in);
    size_t len = fz_u16(&in) % 9001;
    if (len > in.n * 64 + 64)   /* keep most inputs short; long ones repeat the input */
        len = in.n * 64 + 64;
    uint8_t *buf = malloc(off + len + 1);
    for (size_t i = 0; i < len; i++)
        buf[off + i] = in.n ? in.p[i % in.n] ^ (uint8_t)(i >> 8) : (uint8_t)i;
    const uint8_t *p = buf + off;
    uint32_t got = uf_csum_add(p, len, sum & 0x7fffffffu);
    FZ_ASSERT(ref_fold(got) == ref_fold(ref_sum(p, len, sum & 0x7fffffffu)));
    FZ_ASSERT(uf_checksum(p, len) == (uint16_t)~ref_fold(ref_sum(p, len, 0)));
    if (len >= 20) {
        unsigned ihl = 5 + (unsigned)(len - 20) / 4 % 11;
        if (4 * ihl <= len)
            FZ_ASSERT(uf_csum_words(p, ihl) == ref_fold(ref_sum(p, 4 * ihl, 0)));
    }
    free(buf);
    return 0;
}
