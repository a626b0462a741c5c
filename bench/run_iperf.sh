#!/bin/sh
# Data path comparison on one machine: veth, kernel vxlan (as flannel sets it up), socat's
# naive TUN/UDP tunnel and udpflannel's backends, between two network-namespace hosts.
#
#   bench/run_iperf.sh --quick                 # one short repetition, under 3 minutes
#   bench/run_iperf.sh --json r.json --plot r.png
#   bench/run_iperf.sh --paths veth,vxlan,uf-udp --reps 5 --duration 10
#   bench/run_iperf.sh --paths vxlan,ref-relay,uf-udp --placement split,shared   # hosts as two
#                                                   # machines (own CPUs) and sharing the CPUs
#
# All options are bench/iperf_bench.py's (--help). Everything lives in namespaces named
# <prefix>-*; they are deleted on exit, also when the driver is killed.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The interpreter that runs the driver and the agents: $PYTHON, else scripts/bootstrap.sh's
# venv when there is one, else python3 (with src/ on the path if udpflannel is not installed).
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "run_iperf.sh: needs root (network namespaces)" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import udpflannel' 2>/dev/null; then
    PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
fi

PREFIX="uf$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"

cleanup() {
    # The driver deletes its namespaces itself; this catches a driver that was SIGKILLed.
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns delete "$ns" 2>/dev/null || true
    done
    rm -rf "${TMPDIR:-/tmp}/$PREFIX"-* 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$PYTHON" "$ROOT/bench/iperf_bench.py" --prefix "$PREFIX" "$@"
