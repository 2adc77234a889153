#!/usr/bin/env bash
# --durability standby-flush with the least-privilege applier role of docs/setup.md (LOGIN
# REPLICATION, member of atx_applier): the slot is confirmed past an apply commit, and atx_exec
# callers are woken, only once the streaming physical standby has flushed it.
# Found by tools/atx soak: that role sees NULL in pg_stat_replication's positions (they need
# pg_read_all_stats), which the applier read as "no standby": it confirmed commits the standby did
# not have, and a failover lost them. The positions now come from atx.standby_flush_lsn().
# The standby is held back by stopping its WAL receiver (SIGSTOP): it still shows as streaming.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster "max_wal_senders = 10" "wal_sender_timeout = 0" || { not_ok "cluster start"; done_testing; }
STANDBY=$(atx_cluster_mkdir standby)
RECEIVER=""
cleanup_standby() {
    [ -n "$RECEIVER" ] && kill -CONT "$RECEIVER" 2>/dev/null
    atx_cluster_stop "$STANDBY" immediate >/dev/null 2>&1
    rm -rf "$STANDBY"
}
trap 'cleanup_standby; _testlib_cleanup' EXIT
standby_start "$STANDBY"

q <<'SQL' >/dev/null
CREATE ROLE atx_app LOGIN REPLICATION;
GRANT atx_applier TO atx_app;
CREATE TABLE t(v int);
SQL
streaming() { [ "$(q -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = 1 ]; }
wait_for 30 streaming || { not_ok "the standby streams"; done_testing; }
check_eq "the applier's role sees no position in pg_stat_replication itself (why the extension reads it)" "" \
    "$(q -U atx_app -c "SELECT flush_lsn FROM pg_stat_replication")"
check "... while atx.standby_flush_lsn() gives it the standby's" \
    test -n "$(q -U atx_app -c "SELECT atx.standby_flush_lsn()")"
q -c "CREATE ROLE nobody_special LOGIN" >/dev/null
check "... an ordinary role may not call it" \
    bash -c "PGUSER=nobody_special psql -qAtX -c 'SELECT atx.standby_flush_lsn()' 2>&1 | grep -q 'permission denied'"

APP="$(conninfo | sed 's/user=postgres/user=atx_app/')"
conninfo() { echo "$APP"; }
applier_start --durability standby-flush
wait_for_slot || not_ok "applier created the slot"
q -c "SELECT atx_log('INSERT INTO t VALUES (0)')" >/dev/null
wait_for 30 eval '[ "$(q -c "SELECT count(*) FROM t")" = 1 ]' || not_ok "a first message applied"
slot_confirmed() { q -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_type = 'logical'"; }
past() { [ "$(q -c "SELECT confirmed_flush_lsn >= '$1' FROM pg_replication_slots WHERE slot_type = 'logical'")" = t ]; }

# Hold the standby back: its WAL receiver stops (still "streaming" in pg_stat_replication).
RECEIVER=$(psql -qAtX -h "$STANDBY" -p "$(cat "$STANDBY/port")" -c "SELECT pid FROM pg_stat_wal_receiver")
# shellcheck disable=SC2015 # not_ok when either the lookup or the kill failed
[ -n "$RECEIVER" ] && kill -STOP "$RECEIVER" || { not_ok "the standby's WAL receiver stopped"; done_testing; }
lsn=$(q -c "SELECT pg_current_wal_insert_lsn()")
q -c "SELECT atx_log('INSERT INTO t VALUES (1)')" >/dev/null
wait_for 30 eval '[ "$(q -c "SELECT count(*) FROM t WHERE v = 1")" = 1 ]'
check "applied on the primary while the standby is held" test "$(q -c "SELECT count(*) FROM t WHERE v = 1")" = 1
exec_out=$TEST_DIR/exec.out
(PGOPTIONS="-c atx.exec_timeout=60" timeout 90 psql -qAtX -c "SELECT atx_exec('INSERT INTO t VALUES (2)')->>'status'" \
    >"$exec_out" 2>&1) &
EXEC=$!
wait_for 30 eval '[ "$(q -c "SELECT count(*) FROM t WHERE v = 2")" = 1 ]'
sleep 3   # several durability polls (every 100 ms) with the standby still held
check "the slot is not confirmed past the message the standby lacks (confirmed $(slot_confirmed), message after $lsn)" \
    bash -c "! [ \"\$(psql -qAtX -c \"SELECT confirmed_flush_lsn > '$lsn' FROM pg_replication_slots WHERE slot_type = 'logical'\")\" = t ]"
check "an atx_exec caller is not answered before the standby has its apply commit" kill -0 "$EXEC"

kill -CONT "$RECEIVER"
RECEIVER=""
check "once the standby flushes again, the slot moves past the message" wait_for 30 past "$lsn"
wait "$EXEC"
check_eq "... and the atx_exec caller gets its result" applied "$(cat "$exec_out")"
check_eq "every message applied once" "0 1 2" "$(q -c "SELECT string_agg(v::text, ' ' ORDER BY v) FROM t")"
applier_stop
done_testing
