/* steer.c - the reuseport program and its C reference (see steer.h). */
#include "steer.h"
#include "internal.h"

#include <errno.h>
#include <linux/filter.h>
#include <string.h>
#include <sys/socket.h>

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif

_Static_assert(sizeof(uf_bpf_insn) == sizeof(struct sock_filter), "uf_bpf_insn is a sock_filter");
_Static_assert(offsetof(uf_bpf_insn, k) == offsetof(struct sock_filter, k), "uf_bpf_insn.k");

/* Loads are relative to the UDP payload (the kernel pulls the UDP header before it runs a
 * reuseport program); a load past its end ends the program with 0. The hash: m = the XOR
 * of the address words (IPv4: src ^ dst; IPv6: the eight words of both), XOR sport ^ dport
 * for TCP/UDP, then h = m ^ m >> 16, h ^ h >> 8, modulo the queue count. */
static const struct sock_filter prog[] = {
    /* 0 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 0),
    /* 1 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf0),
    /* 2 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x40, 0, 12),       /* not IPv4 -> 15 */
    /* IPv4 */
    /* 3 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 12),
    /* 4 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 5 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 16),
    /* 6 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),                 /* src ^ dst */
    /* 7 */ BPF_STMT(BPF_ST, 0),
    /* 8 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 9),
    /* 9 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 6, 1, 0),           /* TCP -> 11 */
    /* 10 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 17, 0, 43),        /* not UDP -> 54 */
    /* 11 */ BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 6),
    /* 12 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x3fff, 41, 0),   /* fragment -> 54 */
    /* 13 */ BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),                /* X = IHL * 4 */
    /* 14 */ BPF_STMT(BPF_JMP | BPF_JA, 28),                        /* -> 43 */
    /* IPv6 */
    /* 15 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x60, 0, 47),       /* not IPv6 -> 63 */
    /* 16 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 8),
    /* 17 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 18 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 12),
    /* 19 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
    /* 20 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 21 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 16),
    /* 22 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
    /* 23 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 24 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 20),
    /* 25 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
    /* 26 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 27 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 24),
    /* 28 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
    /* 29 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 30 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 28),
    /* 31 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
    /* 32 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 33 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 32),
    /* 34 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
    /* 35 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 36 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 36),
    /* 37 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),                /* all address words */
    /* 38 */ BPF_STMT(BPF_ST, 0),
    /* 39 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 6),                 /* next header */
    /* 40 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 6, 1, 0),          /* TCP -> 42 */
    /* 41 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 17, 0, 12),        /* not UDP -> 54 */
    /* 42 */ BPF_STMT(BPF_LDX | BPF_W | BPF_IMM, 40),               /* X = 40 */
    /* ports: X = offset of the L4 header */
    /* 43 */ BPF_STMT(BPF_LD | BPF_W | BPF_IND, 0),                 /* sport << 16 | dport */
    /* 44 */ BPF_STMT(BPF_ST, 1),
    /* 45 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
    /* 46 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 47 */ BPF_STMT(BPF_LD | BPF_MEM, 1),
    /* 48 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xffff),
    /* 49 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),                /* sport ^ dport */
    /* 50 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 51 */ BPF_STMT(BPF_LD | BPF_MEM, 0),
    /* 52 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
    /* 53 */ BPF_STMT(BPF_ST, 0),
    /* 54 */ BPF_STMT(BPF_LD | BPF_MEM, 0),                         /* fold and reduce */
    /* 55 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 56 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
    /* 57 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
    /* 58 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
    /* 59 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 8),
    /* 60 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
    /* 61 */ BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, 0),                /* k = queues, filled in */
    /* 62 */ BPF_STMT(BPF_RET | BPF_A, 0),
    /* 63 */ BPF_STMT(BPF_RET | BPF_K, UF_STEER_KERNEL),            /* the kernel's hash */
};
_Static_assert(ARRAY_LEN(prog) == UF_STEER_PROG_LEN, "jump offsets above assume 64 instructions");
enum { MOD_AT = 61 };

void uf_steer_prog(uint32_t queues, uf_bpf_insn *out)
{
    memcpy(out, prog, sizeof(prog));
    out[MOD_AT].k = queues;
}

int uf_steer_attach(int sock, uint32_t queues)
{
    struct sock_filter code[UF_STEER_PROG_LEN];
    uf_steer_prog(queues, (uf_bpf_insn *)code);
    struct sock_fprog fp = { .len = UF_STEER_PROG_LEN, .filter = code };
    return setsockopt(sock, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fp, sizeof(fp)) < 0 ? -errno : 0;
}

uint32_t uf_steer_queue(const uint8_t *pkt, size_t len, uint32_t queues)
{
    uint32_t m;
    size_t l4;
    uint8_t proto;
    if (len < 1)
        return 0;
    switch (pkt[0] & 0xf0) {
    case 0x40:
        if (len < 20)   /* the address loads (12..19) */
            return 0;
        m = rd32(pkt + 12) ^ rd32(pkt + 16);
        proto = pkt[9];
        if ((proto != UF_PROTO_TCP && proto != UF_PROTO_UDP) || (rd16(pkt + 6) & 0x3fffu))
            goto fold;
        l4 = (size_t)(pkt[0] & 0x0f) * 4u;
        break;
    case 0x60:
        if (len < UF_IPV6_HDR)
            return 0;
        m = 0;
        for (size_t at = 8; at < UF_IPV6_HDR; at += 4)
            m ^= rd32(pkt + at);
        proto = pkt[6];
        if (proto != UF_PROTO_TCP && proto != UF_PROTO_UDP)
            goto fold;
        l4 = UF_IPV6_HDR;
        break;
    default:
        return UF_STEER_KERNEL;
    }
    if (l4 + 4 > len)
        return 0;
    uint32_t ports = rd32(pkt + l4);
    m ^= (ports >> 16) ^ (ports & 0xffffu);
fold:
    m ^= m >> 16;
    m ^= m >> 8;
    return m % queues;
}
