#!/usr/bin/env bash
# Installs what udpflannel, its lab and its tests need on a fresh Debian 12 machine (as root):
# Debian packages, then the package itself with its test extras into ./.venv.
# Idempotent: a second run installs only what is missing. Prints the venv's bin directory.
#
# It also puts the command on PATH: /usr/local/bin/udpflannel becomes a symlink to this
# checkout's .venv/bin/udpflannel when that path is free or already such a symlink (to any
# checkout's .venv; the last bootstrap wins). Anything else there is never touched: then
# use .venv/bin/udpflannel. UDPFLANNEL_LINK=/some/dir/udpflannel picks another place,
# UDPFLANNEL_LINK= (empty) none.
set -euo pipefail
cd "$(dirname "$0")/.."

# clang + libclang-rt-14-dev: the libFuzzer targets (fuzz/run.sh) with ASan + UBSan; systemd-container:
# systemd-nspawn, which boots a systemd to run dist/udpflannel.service in tests/integration/test_service.py
APT_PACKAGES=(etcd-server etcd-client iproute2 iputils-ping iptables iperf3 socat curl procps openssl gcc python3-dev
              containernetworking-plugins systemd systemd-container util-linux clang libclang-rt-14-dev)
# clang + libbpf-dev: the eBPF fast path (--udp-fast-path=tc-bpf; csrc/build_fastpath.py), built
# into the package when both are there; bpftool: the fast path's tests read the programs and maps
APT_PACKAGES+=(libbpf-dev bpftool)
APT_PACKAGES+=(nftables)  # nft: the network config's "EnableNFTables" (adapters/nftables.py) and its tests
# the wireguard backend where the kernel has no WireGuard module (wireguard-go, userspace),
# wg(8) for a kernel device and the tests' flanneld-shaped peer; tcpdump: the underlay captures.
# Installed without recommends: wireguard-tools recommends a kernel with its module, which
# apt satisfies with a whole linux-image (plus udev and initramfs-tools).
APT_NO_RECOMMENDS=(wireguard-go wireguard-tools tcpdump)
not_installed() {  # the packages among "$@" that dpkg does not have installed
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}
apt_install() {  # apt-get install [apt options...] -- packages...
    local opts=()
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    [ $# -gt 0 ] || return 0
    echo "bootstrap: apt-get install ${opts[*]} $*" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${opts[@]}" "$@" >&2
}
mapfile -t missing < <(not_installed "${APT_PACKAGES[@]}")
# python3-venv only matters for Debian's own python3; pyenv/other builds ship venv.
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
apt_install -- "${missing[@]}"
mapfile -t missing < <(not_installed "${APT_NO_RECOMMENDS[@]}")
apt_install --no-install-recommends -- "${missing[@]}"
# Debian starts etcd as a service on install; the lab and the tests run their own members.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl stop etcd >&2 || true; fi

# Docker (the real-dockerd tests and `udpflannel lab --docker`): Debian's docker.io and a
# static busybox for the test image. The tests run one dockerd per network namespace; the
# package must not start a dockerd in the root namespace, so its postinst is held back by a
# policy-rc.d that exists only during the install, and units or daemons the install
# enabled or started are disabled and stopped again: the machine is left as it was.
# An engine already on the machine (docker.io or docker-ce: they conflict) is used as it is.
DOCKER_UNITS=(docker.service docker.socket containerd.service)
docker_missing=()
command -v dockerd >/dev/null || docker_missing+=(docker.io)
# Without its recommends (needrestart, cgroupfs-mount, ...), except apparmor's parser, which
# dockerd needs to start containers when the kernel has AppArmor on.
if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ] && ! command -v apparmor_parser >/dev/null; then
    docker_missing+=(apparmor)
fi
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || docker_missing+=(busybox-static)
root_daemons() {  # pids of dockerd/containerd in this (the root) network namespace
    local me pid
    me=$(readlink /proc/self/ns/net)
    for pid in $(pgrep -x dockerd; pgrep -x containerd); do
        if [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$me" ]; then echo "$pid"; fi
    done
}
unit_states() {  # "unit enabled-state active-state" per unit
    local u
    for u in "${DOCKER_UNITS[@]}"; do
        echo "$u $(systemctl is-enabled "$u" 2>/dev/null || true) $(systemctl is-active "$u" 2>/dev/null || true)"
    done
}
if [ ${#docker_missing[@]} -gt 0 ]; then
    echo "bootstrap: apt-get install ${docker_missing[*]} (services kept from starting)" >&2
    units_before=$(unit_states)
    pids_before=" $(root_daemons | tr '\n' ' ') "
    our_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        our_policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# udpflannel bootstrap: keep services from starting during its apt install\nexit 101\n' >"$our_policy"
        chmod 755 "$our_policy"
        trap 'rm -f "$our_policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${docker_missing[@]}" >&2
    if [ -n "$our_policy" ]; then rm -f "$our_policy"; trap - EXIT; fi
    while read -r u enabled active; do
        before=$(grep "^$u " <<<"$units_before" || true)
        if [ "$active" = active ] && ! grep -q " active$" <<<"$before"; then
            echo "bootstrap: stopping $u (started by the install)" >&2
            systemctl stop "$u" >&2 || true
        fi
        if [ "$enabled" = enabled ] && ! grep -q " enabled " <<<"$before"; then
            echo "bootstrap: disabling $u (enabled by the install)" >&2
            systemctl disable --quiet "$u" >&2 || true
        fi
    done <<<"$(unit_states)"
    for pid in $(root_daemons); do
        case "$pids_before" in *" $pid "*) ;; *)
            echo "bootstrap: stopping $(cat "/proc/$pid/comm" 2>/dev/null) (pid $pid, started by the install)" >&2
            kill "$pid" 2>/dev/null || true ;;
        esac
    done
fi

python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' >&2
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv >&2
fi
stamp=.venv/.installed-$(cat pyproject.toml setup.py csrc/*.c csrc/*.h csrc/*.py csrc/bpf/* src/udpflannel/*.py src/udpflannel/*/*.py 2>/dev/null | sha1sum | cut -c1-12)
if [ ! -e "$stamp" ]; then
    echo "bootstrap: pip install .[test,plot] into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q ".[test,plot]" >&2
    rm -f .venv/.installed-*
    touch "$stamp"
fi
link=${UDPFLANNEL_LINK-/usr/local/bin/udpflannel}
want="$PWD/.venv/bin/udpflannel"
if [ -n "$link" ] && [ "$(readlink "$link" 2>/dev/null)" != "$want" ]; then
    if [ -e "$link" ] && ! [ -L "$link" ]; then
        echo "bootstrap: $link exists and is not ours; left alone (run $want)" >&2
    elif [ -L "$link" ] && [[ "$(readlink "$link")" != */.venv/bin/udpflannel ]]; then
        echo "bootstrap: $link links to $(readlink "$link"), not a udpflannel venv; left alone (run $want)" >&2
    elif ln -sfn "$want" "$link" 2>/dev/null; then
        echo "bootstrap: $link -> $want" >&2
    else
        echo "bootstrap: cannot write $link; run $want" >&2
    fi
fi
echo "$PWD/.venv/bin"
