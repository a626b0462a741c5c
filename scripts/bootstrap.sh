#!/usr/bin/env bash
# Installs what udpflannel, its lab and its tests need on a fresh Debian 12 machine (as root):
# Debian packages, then the package itself with its test extras into ./.venv.
# Idempotent: a second run installs only what is missing. Prints the venv's bin directory.
set -euo pipefail
cd "$(dirname "$0")/.."

# clang + libclang-rt-14-dev: the libFuzzer targets (fuzz/run.sh) with ASan + UBSan
APT_PACKAGES=(etcd-server etcd-client iproute2 iputils-ping iptables iperf3 socat curl procps openssl gcc python3-dev
              clang libclang-rt-14-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-venv only matters for Debian's own python3; pyenv/other builds ship venv.
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
fi
# Debian starts etcd as a service on install; the lab and the tests run their own members.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl stop etcd >&2 || true; fi

python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' >&2
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv >&2
fi
stamp=.venv/.installed-$(cat pyproject.toml setup.py csrc/*.c csrc/*.h csrc/build_datapath.py src/udpflannel/*.py src/udpflannel/*/*.py 2>/dev/null | sha1sum | cut -c1-12)
if [ ! -e "$stamp" ]; then
    echo "bootstrap: pip install .[test,plot] into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q ".[test,plot]" >&2
    rm -f .venv/.installed-*
    touch "$stamp"
fi
echo "$PWD/.venv/bin"
