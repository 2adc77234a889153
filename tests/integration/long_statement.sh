#!/usr/bin/env bash
# A statement that waits on a lock for longer than wal_sender_timeout: the applier keeps answering
# the walsender while it waits, so the replication connection survives and the statement is
# applied once when the lock goes away.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster "wal_sender_timeout = 3s" || { not_ok "cluster start"; done_testing; }
q -c "CREATE TABLE locked(v int)" >/dev/null
applier_start --statement-timeout-ms 30000
wait_for_slot || not_ok "applier created the slot"
wait_for 10 eval "[ \"\$(q -c \"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'atx-applier apply%'\")\" -gt 0 ]" ||
    not_ok "the apply sessions connected"

psql -qAtX -c "BEGIN" -c "LOCK TABLE locked IN ACCESS EXCLUSIVE MODE" -c "SELECT pg_sleep(7)" -c "COMMIT" >/dev/null &
locker=$!
wait_for_lock 10 locked || not_ok "the lock holder has its lock"
q -c "SELECT atx_log('INSERT INTO locked VALUES (1)')" >/dev/null
check "apply backend is waiting on the lock" wait_for 5 bash -c \
    "psql -qAtX -c \"SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'atx-applier apply%' AND wait_event_type = 'Lock'\" | grep -q 1"
wait "$locker"
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM locked') = 1 ]"
check_eq "applied once after the lock was released" 1 "$(q -c 'SELECT count(*) FROM locked')"
check_eq "walsender did not time out" 0 "$(grep -c 'replication timeout' "$TEST_DIR/server.log")"
check_eq "applier connected once (no reconnect)" 1 "$(grep -c 'event=connected' "$TEST_DIR/applier.log")"
check_eq "no dead letter" 0 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"
applier_stop
done_testing
