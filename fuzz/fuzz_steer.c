/* fuzz_steer.c - the reuseport program (csrc/steer.c) against its C reference.
 *
 * Runs the classic BPF program uf_steer_prog builds, in an interpreter of classic BPF as
 * the kernel runs a reuseport program (loads relative to the UDP payload, a load past its
 * end ends the program with 0, big-endian loads, scratch memory), on arbitrary payloads and
 * on plausible IPv4/IPv6 TCP/UDP headers with a queue count of 1..16, and checks:
 *   - the program's answer equals uf_steer_queue's;
 *   - it is a socket index (< queues) or the kernel's choice (UF_STEER_KERNEL);
 *   - the hash is symmetric: a plausible header with addresses and ports swapped gets the same
 *     index (both directions of a flow meet on one worker).
 * The interpreter is written here, from the classic BPF semantics, independently of
 * steer.c; it rejects (aborts on) any instruction it does not know.
 */
#include "fuzz_util.h"
#include "steer.h"

#include <linux/filter.h>

static uint32_t ld(const uint8_t *p, size_t len, uint64_t k, int size, int *oob)
{
    if (k + (uint64_t)size > len) {
        *oob = 1;
        return 0;
    }
    uint32_t v = 0;
    for (int i = 0; i < size; i++)
        v = v << 8 | p[k + (uint64_t)i];
    return v;
}

/* Run prog (n instructions) on payload p[0..len): the returned A/K, or 0 on a bad load. */
static uint32_t run(const uf_bpf_insn *prog, int n, const uint8_t *p, size_t len)
{
    uint32_t A = 0, X = 0, M[BPF_MEMWORDS] = { 0 };
    int oob = 0;
    for (int pc = 0; pc < n; pc++) {
        const uf_bpf_insn *i = &prog[pc];
        uint32_t k = i->k;
        switch (i->code) {
        case BPF_LD | BPF_W | BPF_ABS: A = ld(p, len, k, 4, &oob); break;
        case BPF_LD | BPF_H | BPF_ABS: A = ld(p, len, k, 2, &oob); break;
        case BPF_LD | BPF_B | BPF_ABS: A = ld(p, len, k, 1, &oob); break;
        case BPF_LD | BPF_W | BPF_IND: A = ld(p, len, (uint64_t)X + k, 4, &oob); break;
        case BPF_LD | BPF_MEM: FZ_ASSERT(k < BPF_MEMWORDS); A = M[k]; break;
        case BPF_LDX | BPF_W | BPF_IMM: X = k; break;
        case BPF_LDX | BPF_B | BPF_MSH: X = (ld(p, len, k, 1, &oob) & 0xf) << 2; break;
        case BPF_ST: FZ_ASSERT(k < BPF_MEMWORDS); M[k] = A; break;
        case BPF_MISC | BPF_TAX: X = A; break;
        case BPF_ALU | BPF_AND | BPF_K: A &= k; break;
        case BPF_ALU | BPF_XOR | BPF_X: A ^= X; break;
        case BPF_ALU | BPF_RSH | BPF_K: A >>= k; break;
        case BPF_ALU | BPF_MOD | BPF_K: FZ_ASSERT(k); A %= k; break;
        case BPF_JMP | BPF_JA: pc += (int)k; break;
        case BPF_JMP | BPF_JEQ | BPF_K: pc += A == k ? i->jt : i->jf; break;
        case BPF_JMP | BPF_JSET | BPF_K: pc += (A & k) ? i->jt : i->jf; break;
        case BPF_RET | BPF_A: return A;
        case BPF_RET | BPF_K: return k;
        default: FZ_ASSERT(!"instruction the interpreter does not know");
        }
        if (oob)
            return 0;
        FZ_ASSERT(pc + 1 <= n);   /* jumps stay inside the program */
    }
    FZ_ASSERT(!"fell off the end of the program");
    return 0;
}

/* Swap the addresses and the ports (when there is room for them) of a plausible header. */
static void reverse(uint8_t *p, size_t len)
{
    uint8_t t[16];
    int v6 = (p[0] & 0xf0) == 0x60;
    size_t a = v6 ? 8 : 12, n = v6 ? 16 : 4, l4 = v6 ? 40 : (size_t)(p[0] & 15) * 4;
    if (len < a + 2 * n)
        return;
    memcpy(t, p + a, n);
    memmove(p + a, p + a + n, n);
    memcpy(p + a + n, t, n);
    if (l4 + 4 <= len) {
        memcpy(t, p + l4, 2);
        memmove(p + l4, p + l4 + 2, 2);
        memcpy(p + l4 + 2, t, 2);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = { data, size };
    uint32_t queues = 1 + fz_u8(&in) % 16;
    uint32_t shape = fz_u8(&in);
    uint8_t p[128] = { 0 };
    size_t len = fz_bytes(&in, p, sizeof(p));
    if (shape & 1) {   /* a plausible header: version, IHL 5, TCP/UDP, maybe a fragment */
        int v6 = shape & 2;
        p[0] = v6 ? 0x60 : 0x45;
        if (v6)
            p[6] = (shape & 4) ? 17 : 6;
        else {
            p[9] = (shape & 4) ? 17 : 6;
            if (!(shape & 8))
                p[6] = p[7] = 0;   /* not a fragment */
        }
        if (len < (v6 ? 44u : 24u) && (shape & 16))
            len = v6 ? 44 : 24;
    }
    uf_bpf_insn prog[UF_STEER_PROG_LEN];
    uf_steer_prog(queues, prog);
    uint32_t want = uf_steer_queue(p, len, queues);
    FZ_ASSERT(run(prog, UF_STEER_PROG_LEN, p, len) == want);
    FZ_ASSERT(want < queues || want == UF_STEER_KERNEL);
    if (shape & 1) {   /* symmetry is promised for real headers, not for garbage */
        reverse(p, len);
        FZ_ASSERT(uf_steer_queue(p, len, queues) == want);
        FZ_ASSERT(run(prog, UF_STEER_PROG_LEN, p, len) == want);
    }
    return 0;
}
