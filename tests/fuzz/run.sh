#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each one for a bounded time.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET]     (default 60)
#
# Build: ${ATX_BUILD_DIR:-build}/fuzz. Each target starts from a temporary copy of its seed corpus
# (tests/fuzz/corpus/<target>/; the seeds in the repository are never modified) and prints one TAP
# line. A crash, leak, timeout or out-of-memory input is kept in
# ${ATX_BUILD_DIR:-build}/fuzz/artifacts/<target>/, with the fuzzer's log next to it
# (${ATX_BUILD_DIR:-build}/fuzz/logs/<target>.log). Exit status 1 when any target failed.
set -uo pipefail

SECONDS_PER_TARGET=${1:-60}
case $SECONDS_PER_TARGET in '' | *[!0-9]*)
    echo "usage: $0 [seconds-per-target]" >&2
    exit 2
    ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD_ROOT=${ATX_BUILD_DIR:-build}
case $BUILD_ROOT in /*) ;; *) BUILD_ROOT=$ROOT/$BUILD_ROOT ;; esac
BUILD=$BUILD_ROOT/fuzz
JOBS=${ATX_JOBS:-$(nproc 2>/dev/null || echo 2)}
TARGETS=(fuzz_message_decode fuzz_replication_protocol)

n=0
fails=0

mkdir -p "$BUILD"
if ! {
    CC=clang CXX=clang++ cmake -S "$ROOT/tests/fuzz" -B "$BUILD" -DCMAKE_BUILD_TYPE= &&
        cmake --build "$BUILD" -j "$JOBS"
} >"$BUILD/build.log" 2>&1; then
    tail -n 40 "$BUILD/build.log" >&2
    for t in "${TARGETS[@]}"; do
        n=$((n + 1))
        echo "not ok $n - fuzz $t (build failed: $BUILD/build.log)"
    done
    echo "1..$n"
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/atx-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$BUILD/logs"

for t in "${TARGETS[@]}"; do
    n=$((n + 1))
    corpus=$WORK/$t
    artifacts=$BUILD/artifacts/$t
    log=$BUILD/logs/$t.log
    mkdir -p "$corpus" "$artifacts"
    cp "$ROOT/tests/fuzz/corpus/$t"/* "$corpus"/ 2>/dev/null || true
    rc=0
    "$BUILD/$t" "$corpus" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$log" | tail -1)
    [ -n "$execs" ] || execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ "$rc" = 0 ] && [ -z "$artifact" ]; then
        echo "ok $n - fuzz $t ${secs:-$SECONDS_PER_TARGET}s ${execs:-0} execs"
    else
        fails=$((fails + 1))
        echo "not ok $n - fuzz $t (crash: ${artifact:-none written, exit $rc, see $log})"
        grep -E "^==[0-9]+==ERROR|SUMMARY:|runtime error:|fuzz_[a-z_]+: " "$log" | head -n 5 | sed 's/^/# /'
        echo "# log: $log"
        [ -n "$artifact" ] && echo "# reproduce: $BUILD/$t $artifact"
    fi
done

echo "1..$n"
[ "$fails" = 0 ]
