#!/usr/bin/env bash
# Build the libFuzzer targets (clang, ASan + UBSan) and run each for a bounded time.
#
#   fuzz/run.sh                  # every target, 30 s each (what CI runs, via tests/integration/test_fuzz.py)
#   fuzz/run.sh -t 300 gro rx    # chosen targets, longer
#   fuzz/run.sh --selftest       # build targets with a planted bug and check that fuzzing finds it
#
# Targets (fuzz/fuzz_<name>.c): rx (receive checks on arbitrary datagrams), split (TSO/USO
# split and the tx pipeline), gro (GRO coalescing: per-flow order, payloads, no repaired
# checksums), table (the lease table against a reference model), bpf_diff (the eBPF fast
# path's programs, run in the kernel with BPF_PROG_TEST_RUN, against the C loop's pipeline
# on the same packets; needs root and csrc/build_fastpath.py's toolchain). Binaries, corpora and crash
# inputs go to build/fuzz/ (git-ignored; the corpora grow from run to run). Exits non-zero,
# with the crash's report, when any target crashes or breaks an invariant.
set -euo pipefail
cd "$(dirname "$0")/.."

CC=${CLANG:-clang}
SECS=30
SELFTEST=0
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -t) SECS=$2; shift 2 ;;
        --selftest) SELFTEST=1; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "fuzz/run.sh: unknown option $1" >&2; exit 2 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(rx split gro table bpf_diff)

command -v "$CC" >/dev/null || { echo "fuzz/run.sh: $CC not found (scripts/bootstrap.sh installs clang)" >&2; exit 2; }
OUT=build/fuzz
mkdir -p "$OUT"
CFLAGS=(-g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
        -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter -Werror -iquote csrc)
SRCS=(csrc/common.c csrc/lookup.c csrc/packet.c csrc/offload.c csrc/pipeline.c)
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UF_FP_OBJECT=$PWD/$OUT/uf_fastpath.bpf.o

build() {  # build NAME [extra cflags...]: $OUT/NAME from fuzz/fuzz_NAME.c
    local name=$1 src=fuzz/fuzz_${1%-planted}.c extra=()
    shift
    if [ "${name%-planted}" = bpf_diff ]; then  # the loader and libbpf; the programs' object beside the binary
        "${PYTHON:-.venv/bin/python}" csrc/build_fastpath.py --object "$OUT/uf_fastpath.bpf.o"
        extra=(csrc/fastpath.c -lbpf)
    fi
    "$CC" "${CFLAGS[@]}" "$@" "$src" "${SRCS[@]}" "${extra[@]}" -o "$OUT/$name"
}

run() {  # run NAME SECONDS: 0 when no crash
    local name=$1 secs=$2 log="$OUT/$1.log"
    mkdir -p "$OUT/corpus-$name"
    if "$OUT/$name" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$OUT/crash-$name-" "$OUT/corpus-$name" >"$log" 2>&1; then
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
    [ -f "fuzz/fuzz_$t.c" ] || { echo "fuzz/run.sh: no target $t" >&2; exit 2; }
    build "$t"
done
for t in "${TARGETS[@]}"; do
    run "$t" "$SECS" || status=1
done
exit $status
