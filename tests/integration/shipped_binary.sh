#!/usr/bin/env bash
# What `cmake --install` ships has no fault points: it installs atx-applier and not
# atx-applier-faults, and the installed daemon, with ATX_FAULT armed at each fault point, applies a
# workload and stays up. Control for each point: atx-applier-faults with the same ATX_FAULT and
# workload dies there (so the workload reaches the point and the check above can fail).
. "$(dirname "$0")/../lib/testlib.sh"

BUILD_APPLIER=$(dirname "$APPLIER_BIN")
[ -f "$BUILD_APPLIER/cmake_install.cmake" ] || { not_ok "no cmake_install.cmake next to $APPLIER_BIN"; done_testing; }
has_fault_points "$APPLIER_FAULTS_BIN" || { not_ok "no $APPLIER_FAULTS_BIN (-DATX_FAULT_INJECTION=ON)"; done_testing; }
atx_test_cluster || { not_ok "cluster start"; done_testing; }

cmake -DCMAKE_INSTALL_PREFIX="$TEST_DIR/inst" -P "$BUILD_APPLIER/cmake_install.cmake" >/dev/null
INSTALLED=$TEST_DIR/inst/bin/atx-applier
check "installed: bin/atx-applier" test -x "$INSTALLED"
check "not installed: atx-applier-faults" bash -c "! find '$TEST_DIR/inst' -name 'atx-applier-faults*' | grep -q ."
check "the installed binary has no fault point code" bash -c "! grep -q event=fault_injected '$INSTALLED'"

q -c "CREATE TABLE t(n int)" >/dev/null
ARGS=(--batch-size 10 --status-interval-ms 100 --http-listen off)
# start BINARY [FAULT] [STATE]: bypasses applier_start, which refuses ATX_FAULT for a binary
# without fault points.
start() {
    (trap - EXIT; ATX_FAULT=${2:-} exec "$1" --conninfo "$(conninfo)" --dbname postgres \
        --state-dir "${3:-$TEST_DIR/state}" "${ARGS[@]}" >>"$TEST_DIR/applier.log" 2>&1) &
    APPLIER_PID=$!
}
EMITTED=0
emit() { # emit N: N messages from one caller
    q -c "SELECT count(atx_log('INSERT INTO t VALUES (\$1)', g)) FROM generate_series($((EMITTED + 1)), $((EMITTED + $1))) g" >/dev/null
    EMITTED=$((EMITTED + $1))
}
rows() { q -c "SELECT count(*) FROM t"; }

start "$INSTALLED"
wait_for_slot || not_ok "applier created the slot"
applier_stop

POINTS=(mid_batch after_apply_commit after_state_write before_confirm)
# Each run with a state directory of its own: what one run leaves in RocksDB is not this test's
# subject (restarts on a used state directory are the fault tests').
for point in "${POINTS[@]}"; do
    start "$INSTALLED" "$point:1" "$TEST_DIR/state-installed-$point"
    emit 40
    wait_for 30 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM t') = $EMITTED ]"
    check_eq "installed, ATX_FAULT=$point:1: every message applied" "$EMITTED" "$(rows)"
    check "installed, ATX_FAULT=$point:1: still running" kill -0 "$APPLIER_PID"
    applier_stop
    check_eq "installed, ATX_FAULT=$point:1: SIGTERM exits 0" 0 "$?"
done
check_eq "installed: no fault_injected line" 0 "$(grep -c 'event=fault_injected' "$TEST_DIR/applier.log")"

# The controls.
for point in "${POINTS[@]}"; do
    start "$APPLIER_FAULTS_BIN" "$point:1" "$TEST_DIR/state-$point"
    pid=$APPLIER_PID
    emit 40
    wait_for 30 bash -c "! kill -0 $pid 2>/dev/null"
    timed_out=""
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; timed_out=1; fi
    { wait "$pid"; } 2>/dev/null; rc=$?
    [ -z "$timed_out" ] || rc="still running after 30 s"
    APPLIER_PID=""
    check_eq "control: atx-applier-faults, ATX_FAULT=$point:1: killed itself (137)" 137 "$rc"
    check "control: it logged the point" grep -q "event=fault_injected point=$point hit=1 " "$TEST_DIR/applier.log"
done

# Drain what the controls left, with the installed binary.
start "$INSTALLED" "" "$TEST_DIR/state-drain"
wait_for 60 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM t') -ge $EMITTED ]"
check_eq "after the controls: every message applied once" "$EMITTED $EMITTED" \
    "$(q -c 'SELECT count(*), count(DISTINCT n) FROM t' | tr '|' ' ')"
applier_stop
done_testing
