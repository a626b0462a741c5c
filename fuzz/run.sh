#!/usr/bin/env bash
# Build the libFuzzer targets (clang, ASan + UBSan) and run each for a bounded time.
#
#   fuzz/run.sh                  # every target, 30 s each (what CI runs, via tests/integration/test_fuzz.py)
#   fuzz/run.sh -t 300 gro rx    # chosen targets, longer
#   fuzz/run.sh --keep gro       # after a long run: merge what it found into the kept corpus
#   fuzz/run.sh --selftest       # build targets with a planted bug and check that fuzzing finds it
#
# C targets (fuzz/fuzz_<name>.c): rx (receive checks on arbitrary datagrams), split (TSO/USO
# split and the tx pipeline), gro (GRO coalescing: per-flow order, payloads, no repaired
# checksums), table (the lease table against a reference model), steer (the reuseport program
# in a classic BPF interpreter against its C reference), csum (the checksum against the plain
# RFC 1071 loop), bpf_diff (the eBPF fast path's programs, run in the kernel with
# BPF_PROG_TEST_RUN, against the C loop's pipeline on the same packets; needs root and
# csrc/build_fastpath.py's toolchain). Python targets (fuzz/py_targets.py under atheris,
# $PYTHON or .venv/bin/python): py-lease, py-config, py-watch (etcd values and watch events
# into the agent's decoding and peer view).
# Each run starts from the kept corpus fuzz/corpus/<name>/ (minimized, in git: every input
# that reached new code in a long run, replayed first, so a 30 s run starts where hours of
# fuzzing left off) and from build/fuzz/corpus-<name> (git-ignored; grows run to run).
# Binaries and crash inputs go to build/fuzz/. Exits non-zero, with the crash's report,
# when any target crashes or breaks an invariant.
set -euo pipefail
cd "$(dirname "$0")/.."

CC=${CLANG:-clang}
SECS=30
SELFTEST=0
KEEP=0
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -t) SECS=$2; shift 2 ;;
        --selftest) SELFTEST=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "fuzz/run.sh: unknown option $1" >&2; exit 2 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(rx split gro table steer csum bpf_diff py-lease py-config py-watch)
PYTHON=${PYTHON:-.venv/bin/python}
# libFuzzer re-runs a Python target (merging) by its path: fuzz_py.py's "env python3" must be $PYTHON's
PATH="$(cd "$(dirname "$PYTHON")" && pwd):$PATH"
export PATH

command -v "$CC" >/dev/null || { echo "fuzz/run.sh: $CC not found (scripts/bootstrap.sh installs clang)" >&2; exit 2; }
OUT=build/fuzz
mkdir -p "$OUT"
CFLAGS=(-g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
        -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter -Werror -iquote csrc)
SRCS=(csrc/common.c csrc/csum.c csrc/lookup.c csrc/packet.c csrc/offload.c csrc/pipeline.c csrc/steer.c)
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UF_FP_OBJECT=$PWD/$OUT/uf_fastpath.bpf.o

build() {  # build NAME [extra cflags...]: $OUT/NAME from fuzz/fuzz_NAME.c
    local name=$1 src=fuzz/fuzz_${1%-planted}.c extra=()
    shift
    if [ "${name%-planted}" = bpf_diff ]; then  # the loader and libbpf; the programs' object beside the binary
        "$PYTHON" csrc/build_fastpath.py --object "$OUT/uf_fastpath.bpf.o"
        extra=(csrc/fastpath.c -lbpf)
    fi
    "$CC" "${CFLAGS[@]}" "$@" "$src" "${SRCS[@]}" "${extra[@]}" -o "$OUT/$name"
}

fuzzer() {  # fuzzer NAME: the command that runs target NAME
    case "$1" in
        py-*) echo "$PYTHON fuzz/fuzz_py.py ${1#py-}" ;;
        *) echo "$OUT/$1" ;;
    esac
}

run() {  # run NAME SECONDS: 0 when no crash
    local name=$1 secs=$2 log="$OUT/$1.log" kept=()
    mkdir -p "$OUT/corpus-$name"
    [ -d "fuzz/corpus/$name" ] && kept=("fuzz/corpus/$name")
    # shellcheck disable=SC2046  # fuzzer's output is a command line
    if $(fuzzer "$name") -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$OUT/crash-$name-" "$OUT/corpus-$name" "${kept[@]}" >"$log" 2>&1; then
        local runs
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        echo "fuzz: $name: $runs inputs in ${secs} s, no crash"
        return 0
    fi
    echo "fuzz: $name: CRASH (log $log)"
    grep -E 'invariant broken|ERROR: |runtime error|SUMMARY|Test unit written' "$log" | head -20
    return 1
}

if [ "$SELFTEST" = 1 ]; then
    # table: a model that forgets deletes; bpf_diff: the two data paths disagree about the MTU
    for t in table bpf_diff; do
        build "$t-planted" -DUF_FUZZ_PLANTED_BUG
        rm -rf "$OUT/corpus-$t-planted"
        if run "$t-planted" 60 >/dev/null; then
            echo "fuzz: selftest FAILED: the planted bug in $t was not found in 60 s"
            exit 1
        fi
        echo "fuzz: selftest ok: the planted bug in $t was found"
    done
    exit 0
fi

status=0
for t in "${TARGETS[@]}"; do
    case "$t" in
        py-*) "$PYTHON" -c 'import atheris' 2>/dev/null ||
                  { echo "fuzz/run.sh: atheris missing in $PYTHON (pip install '.[test]')" >&2; exit 2; } ;;
        *) [ -f "fuzz/fuzz_$t.c" ] || { echo "fuzz/run.sh: no target $t" >&2; exit 2; }
           build "$t" ;;
    esac
done
if [ "$KEEP" = 1 ]; then  # add to fuzz/corpus/<t> the inputs of build/fuzz/corpus-<t> that reach new code
    for t in "${TARGETS[@]}"; do
        mkdir -p "fuzz/corpus/$t" "$OUT/corpus-$t"
        # shellcheck disable=SC2046
        $(fuzzer "$t") -merge=1 "fuzz/corpus/$t" "$OUT/corpus-$t" >"$OUT/$t.merge.log" 2>&1
        echo "fuzz: $t: kept corpus of $(find "fuzz/corpus/$t" -type f | wc -l) inputs in fuzz/corpus/$t"
    done
    exit 0
fi
for t in "${TARGETS[@]}"; do
    run "$t" "$SECS" || status=1
done
exit $status
