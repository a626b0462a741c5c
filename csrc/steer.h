/* steer.h - which worker a received tunnel datagram goes to: the reuseport program.
 *
 * With several queues, every worker has a UDP socket bound to the same address and port
 * (SO_REUSEPORT). All tunnel datagrams between two hosts share one outer 4-tuple, so the
 * kernel's own reuseport hash would hand them all to one socket, one worker. Instead a
 * classic BPF program (SO_ATTACH_REUSEPORT_CBPF, one for either socket group) reads the
 * datagram's payload -- the inner IPv4 or IPv6 packet -- and returns the socket index from
 * a symmetric hash of the inner addresses and, for TCP and UDP, ports (IPv4: first
 * fragments only; IPv6: TCP/UDP right after the fixed header). Anything else (other
 * versions, protocols, later fragments) gets the kernel's own choice.
 *
 * uf_steer_queue computes the same index in C: the reference the program is held to
 * (fuzz/fuzz_steer.c runs the program in a classic BPF interpreter on arbitrary payloads
 * and compares), and what the tests use to predict a flow's worker. The program is the
 * only code here that knows packet layout in BPF; it is built, not hand-copied, for the
 * queue count.
 */
#ifndef UF_STEER_H
#define UF_STEER_H

#include <stdint.h>
#include <stddef.h>

/* cffi:begin */
#define UF_STEER_KERNEL 4294967295  /* uf_steer_queue: no choice of ours, the kernel's hash decides */
#define UF_STEER_PROG_LEN 64        /* instructions in the program */

/* One classic BPF instruction (layout of struct sock_filter). */
typedef struct uf_bpf_insn {
    uint16_t code;
    uint8_t jt;
    uint8_t jf;
    uint32_t k;
} uf_bpf_insn;

/* The socket index (0..queues-1) for a datagram whose payload is pkt[0..len), or
 * UF_STEER_KERNEL; 0 when the program would read past the end of the payload (a
 * classic BPF load out of bounds ends the program with 0). queues >= 1. */
uint32_t uf_steer_queue(const uint8_t *pkt, size_t len, uint32_t queues);
/* Write the program for `queues` sockets to out[0..UF_STEER_PROG_LEN). queues >= 1. */
void uf_steer_prog(uint32_t queues, uf_bpf_insn *out);
/* cffi:end */

/* Attach the program to sock, a member of the reuseport group (loop.c). 0 or -errno. */
int uf_steer_attach(int sock, uint32_t queues);

#endif
