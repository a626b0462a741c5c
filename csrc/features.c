/* features.c - kernel feature probes and TUN creation (see features.h). */
#define _GNU_SOURCE
#include "features.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

static int tun_create(const char *name, short flags, int *fd_out, char *name_out)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = flags;
    if (name)
        strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (name_out) {
        memcpy(name_out, ifr.ifr_name, IFNAMSIZ);
        name_out[IFNAMSIZ - 1] = 0;
    }
    *fd_out = fd;
    return 0;
}

int uf_probe_features(uf_features *f)
{
    int rc = 0;
    memset(f, 0, sizeof(*f));

    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        f->tun_errno = errno;
    } else {
        unsigned int feat = 0;
        if (ioctl(fd, TUNGETFEATURES, &feat) == 0) {
            f->vnet_hdr = !!(feat & IFF_VNET_HDR);
            f->multi_queue = !!(feat & IFF_MULTI_QUEUE);
        } else {
            f->tun_errno = errno;
        }
        close(fd);
    }
    if (f->vnet_hdr) {
        int tfd;
        int r = tun_create(NULL, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, &tfd, NULL);
        if (r == 0) {
            if (ioctl(tfd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) == 0)
                f->tun_tso = 1;
            else if (!f->tun_errno)
                f->tun_errno = errno;
            if (ioctl(tfd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6) == 0)
                f->tun_uso = 1;
            close(tfd);
        } else if (!f->tun_errno) {
            f->tun_errno = -r;
        }
    }

    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        f->udp_errno = errno;
    } else {
        int v = 1400;
        if (setsockopt(s, SOL_UDP, UDP_SEGMENT, &v, sizeof(v)) == 0)
            f->udp_segment = 1;
        else
            f->udp_errno = errno;
        v = 1;
        if (setsockopt(s, SOL_UDP, UDP_GRO, &v, sizeof(v)) == 0)
            f->udp_gro = 1;
        else if (!f->udp_errno)
            f->udp_errno = errno;
        close(s);
    }
    return rc;
}

int uf_tun_open(const char *name, int queues, int flags, int *fds, char *name_out)
{
    if (queues < 1 || queues > UF_TUN_MAX_QUEUES || !name || strlen(name) >= IFNAMSIZ)
        return -EINVAL;
    if (queues > 1 && !(flags & UF_TUN_MULTI_QUEUE))
        return -EINVAL;
    short f = IFF_TUN | IFF_NO_PI;
    if (flags & UF_TUN_VNET_HDR)
        f |= IFF_VNET_HDR;
    if (flags & UF_TUN_MULTI_QUEUE)
        f |= IFF_MULTI_QUEUE;
    char kname[IFNAMSIZ];
    int n = 0, rc = 0;
    for (; n < queues; n++) {
        rc = tun_create(n == 0 ? name : kname, f, &fds[n], kname);
        if (rc)
            break;
        if (flags & UF_TUN_VNET_HDR) {
            int hsz = 10;
            unsigned off = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | ((flags & UF_TUN_USO) ? TUN_F_USO4 | TUN_F_USO6 : 0);
            if (ioctl(fds[n], TUNSETVNETHDRSZ, &hsz) < 0 || ioctl(fds[n], TUNSETOFFLOAD, off) < 0) {
                rc = -errno;
                close(fds[n]);
                break;
            }
        }
    }
    if (rc) {
        while (n-- > 0)
            close(fds[n]);
        return rc;
    }
    memcpy(name_out, kname, IFNAMSIZ);
    return 0;
}
