/* features.h - kernel feature probes and TUN device creation.
 *
 * Probes run once at start-up (in the caller's network namespace) and only
 * try things: open /dev/net/tun and ask TUNGETFEATURES, create a throw-away
 * non-persistent TUN with IFF_VNET_HDR and try TUNSETOFFLOAD, open a UDP
 * socket and try the UDP_SEGMENT / UDP_GRO options. Nothing outlives the call.
 */
#ifndef UF_FEATURES_H
#define UF_FEATURES_H

#include <stdint.h>
#include <stddef.h>

/* cffi:begin */
#define UF_TUN_MAX_QUEUES 16
#define UF_IFNAMSIZ 16

/* Flags for uf_tun_open. */
#define UF_TUN_VNET_HDR 1     /* IFF_VNET_HDR + TUNSETOFFLOAD(CSUM|TSO4|TSO6) */
#define UF_TUN_MULTI_QUEUE 2  /* IFF_MULTI_QUEUE */
#define UF_TUN_USO 4          /* with UF_TUN_VNET_HDR: also TUN_F_USO4|USO6 (UDP super-packets) */

typedef struct uf_features {
    int vnet_hdr;      /* TUN supports IFF_VNET_HDR */
    int multi_queue;   /* TUN supports IFF_MULTI_QUEUE */
    int tun_tso;       /* TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) accepted */
    int tun_uso;       /* TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6) accepted */
    int udp_segment;   /* setsockopt(SOL_UDP, UDP_SEGMENT) accepted */
    int udp_gro;       /* setsockopt(SOL_UDP, UDP_GRO) accepted */
    int tun_errno;     /* errno of the first failing TUN probe, 0 if none */
    int udp_errno;     /* errno of the first failing UDP probe, 0 if none */
} uf_features;

/* Fill *f. 0, or -errno when /dev/net/tun cannot be opened at all (the UDP
 * probes are still filled in). */
int uf_probe_features(uf_features *f);

/* Create (or attach to) TUN device name with IFF_TUN|IFF_NO_PI plus flags,
 * opening queues fds (non-blocking, close-on-exec) into fds. The kernel's
 * name for the device is copied to name_out (UF_IFNAMSIZ bytes).
 * 0 or -errno; on failure no fd is left open. */
int uf_tun_open(const char *name, int queues, int flags, int *fds, char *name_out);
/* cffi:end */

#endif
