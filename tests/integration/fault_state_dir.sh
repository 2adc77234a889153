#!/usr/bin/env bash
# Faults 5 and 6: the applier's RocksDB state directory.
# 5. The state dir is a 16 MB tmpfs; it is filled up (ENOSPC) during a burst: the applier must
#    stop confirming, log why, and after the filler is removed go on with nothing lost.
# 6. The state dir is deleted while the applier is stopped (once after a clean stop, once after a
#    SIGKILL right after an apply commit): nothing re-applied, idempotency keys still honoured.
. "$(dirname "$0")/../lib/testlib.sh"

use_seed
# The shared workload: numbered callers, rollbacks, keys, messages built to fail.
. "$(dirname "$0")/../lib/workload.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
workload_setup
CALLERS=3
ARGS=(--batch-size 50 --status-interval-ms 200)
STATE=$TEST_DIR/state
MOUNTED=""
cleanup_state_mount() { [ -n "$MOUNTED" ] && umount -l "$STATE" 2>/dev/null; MOUNTED=""; }
trap 'cleanup_state_mount; _testlib_cleanup' EXIT
confirmed_lsn() { q -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name LIKE 'pg_atx_%'"; }

mkdir -p "$STATE"
if mount -t tmpfs -o size=16m tmpfs "$STATE" 2>"$TEST_DIR/mount.err"; then
    MOUNTED=1
    ok "state dir on a 16 MB tmpfs"
    applier_start "${ARGS[@]}"
    wait_for_slot || not_ok "applier created the slot"
    callers_start $CALLERS 1 200 0
    callers_wait || not_ok "callers (before the fault)"
    exp_load; wait_drained 60 || note "not drained before the fault"
    # Fill the filesystem.
    dd if=/dev/zero of="$STATE/filler" bs=64k 2>/dev/null
    note "state fs after filling: $(df -k "$STATE" | tail -n 1 | awk '{print $3 " KB used, " $4 " KB free"}')"
    applied0=$(q -c "SELECT count(*) FROM numbers")
    callers_start $CALLERS 201 400 0.05
    callers_wait || not_ok "callers (during the fault)"
    wait_for 20 grep -q "event=state_write_failed" "$TEST_DIR/applier.log"
    check "applier logged the state write failure (event=state_write_failed)" test $? = 0
    note "$(grep -m1 'event=state_write_failed' "$TEST_DIR/applier.log" | cut -c1-300)"
    c1=$(confirmed_lsn); n1=$(q -c "SELECT count(*) FROM numbers")
    # Until a worker logged the failure a second time: it kept retrying (and not confirming) that long.
    wait_for 30 eval "grep -o 'event=state_write_failed worker=[0-9]*' '$TEST_DIR/applier.log' | sort | uniq -c | awk '\$1 >= 2' | grep -q ." ||
        note "no worker logged the failure twice"
    c2=$(confirmed_lsn); n2=$(q -c "SELECT count(*) FROM numbers")
    note "during the fault: applied rows $applied0 -> $n1 -> $n2, slot confirmed $c1 -> $c2"
    check_eq "slot not confirmed further while the state cannot be written" "$c1" "$c2"
    check_eq "nothing more applied while the state cannot be written" "$n1" "$n2"
    died=""
    if kill -0 "$APPLIER_PID" 2>/dev/null; then
        ok "applier still running during the fault"
    else
        { wait "$APPLIER_PID"; } 2>/dev/null; died=$?; APPLIER_PID=""
        not_ok "applier still running during the fault (it exited with status $died)"
        grep -v "event=\(dead_lettered\|duplicate\) " "$TEST_DIR/applier.log" | grep -iE "assert|abort|critical|error" |
            head -n 5 | sed 's/^/#   applier: /'
    fi
    rm -f "$STATE/filler"
    if [ -z "$died" ]; then
        wait_for 30 grep -q "event=state_recovered" "$TEST_DIR/applier.log"
        check "applier logged recovery after space came back (event=state_recovered)" test $? = 0
    else
        note "restarting the dead applier (as a supervisor would) to count what was lost"
        applier_start "${ARGS[@]}"
    fi
    if verify_exact "disk full (ENOSPC) on the state dir" 60; then r=pass; else r=FAIL; fi
    c3=$(confirmed_lsn)
    check "slot confirmed again after recovery ($c2 -> $c3)" test "$c3" != "$c2"
    [ "$c3" != "$c2" ] && [ "$c1" = "$c2" ] && [ -z "$died" ] || r=FAIL
    reliability "state dir full (ENOSPC)" \
        "RocksDB dir on a 16 MB tmpfs filled with dd during a burst of $CALLERS x 200 messages, filler removed after ~4 s" \
        "rows applied during the fault $n1 -> $n2, slot confirmed $c1 -> $c2, after recovery $c3; ${died:+applier DIED during the fault (exit $died), restarted by the test; }$VERIFY_SUMMARY" "$r"
    applier_stop

    # 6. Started while the directory is full (found by tools/atx soak): it waits for room instead
    # of exiting with the status systemd does not restart.
    dd if=/dev/zero of="$STATE/filler" bs=64k 2>/dev/null
    # shellcheck disable=SC2034 # read by the eval below
    waits_before=$(grep -c "event=state_dir_unavailable" "$TEST_DIR/applier.log")
    streams_before=$(grep -c "event=streaming" "$TEST_DIR/applier.log")
    applier_start "${ARGS[@]}"
    wait_for 20 eval '[ "$(grep -c "event=state_dir_unavailable" "$TEST_DIR/applier.log")" -gt "$waits_before" ]'
    check "started on a full state directory: it says so (event=state_dir_unavailable)" test $? = 0
    check "... and keeps running" kill -0 "$APPLIER_PID"
    q -c "CREATE TABLE started_full(v int)" -c "SELECT atx_log('INSERT INTO started_full VALUES (1)')" >/dev/null
    rm -f "$STATE/filler"
    wait_for 60 eval '[ "$(q -c "SELECT count(*) FROM started_full")" = 1 ]'
    check "once there is room it opens the store, streams and applies (once)" \
        test "$(q -c "SELECT count(*) FROM started_full")" = 1 -a "$(grep -c "event=streaming" "$TEST_DIR/applier.log")" -gt "$streams_before"
    applier_stop
    cleanup_state_mount
else
    note "tmpfs mount not possible here: $(cat "$TEST_DIR/mount.err")"
    ok "# SKIP state dir full: cannot mount a tmpfs (not root / no CAP_SYS_ADMIN)"
    reliability "state dir full (ENOSPC)" "not run: cannot mount a tmpfs here" "-" "skipped"
    applier_start "${ARGS[@]}"
    wait_for_slot || not_ok "applier created the slot"
    callers_start $CALLERS 1 400 0
    callers_wait || not_ok "callers"
    applier_stop
fi

# 6a. State dir deleted after a clean stop.
applier_start "${ARGS[@]}"
wait_for_slot || not_ok "applier running"
exp_load; wait_drained 60 || note "not drained before the deletion"
applier_stop
rm -rf "$STATE"
dup_id=$(q -c "SELECT atx_log_keyed('key-100005', 'INSERT INTO numbers(n) VALUES (\$1)', -1)")   # key applied before the deletion
callers_start $CALLERS 401 500 0
callers_wait || not_ok "callers (after deletion)"
applier_start "${ARGS[@]}"
if verify_exact "state dir deleted (clean stop)"; then r=pass; else r=FAIL; fi
check_eq "re-used key after the deletion applied once (duplicate)" 0 "$(q -c 'SELECT count(*) FROM numbers WHERE n = -1')"
check "duplicate logged" grep -q "event=duplicate message_id=$dup_id" "$TEST_DIR/applier.log"
check "state dir re-created" test -d "$STATE"
reliability "state dir deleted while stopped (clean stop)" \
    "applier stopped, RocksDB dir rm -rf; a message re-using an applied key and $CALLERS x 100 new messages emitted; restart" \
    "$VERIFY_SUMMARY; re-used key rows: $(q -c 'SELECT count(*) FROM numbers WHERE n = -1')" "$r"

# 6b. SIGKILL right after an apply commit (slot not yet confirmed past it), then delete the state.
applier_stop
callers_start $CALLERS 501 700 0
callers_wait || not_ok "callers (backlog)"
use_fault_points  # atx-applier-faults from here on (the rest of the file ran the shipped binary)
ATX_FAULT=after_apply_commit:3 applier_start "${ARGS[@]}"
pid=$APPLIER_PID
wait_for 30 bash -c "! kill -0 $pid 2>/dev/null"
{ wait "$pid"; } 2>/dev/null; rc=$?; APPLIER_PID=""
check_eq "applier died at after_apply_commit:3" 137 "$rc"
note "applied rows when it died: $(q -c 'SELECT count(*) FROM numbers'), slot confirmed $(confirmed_lsn)"
rm -rf "$STATE"
q -c "SELECT atx_log_keyed('key-100505', 'INSERT INTO numbers(n) VALUES (\$1)', -2)" >/dev/null
applier_start "${ARGS[@]}"
if verify_exact "state dir deleted (after SIGKILL past commit)"; then r=pass; else r=FAIL; fi
check_eq "re-used key applied once" 0 "$(q -c 'SELECT count(*) FROM numbers WHERE n = -2')"
[ "$rc" = 137 ] || r=FAIL
reliability "state dir deleted after a SIGKILL between apply commit and state write" \
    "backlog of $CALLERS x 200; applier died at after_apply_commit:3; RocksDB dir rm -rf; a key re-used; restart" \
    "$VERIFY_SUMMARY; re-used key rows: $(q -c 'SELECT count(*) FROM numbers WHERE n = -2')" "$r"
applier_stop
done_testing
