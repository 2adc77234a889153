#!/usr/bin/env bash
# The failover check (applier/database_worker.cc check_failover) with a message that waits for a
# nested atx_exec. Found by tools/atx soak (seed 5, pair): the check re-applied the messages the
# new primary's slot stood past with one synchronous call before the apply sessions started, so a
# message waiting for its nested atx_exec waited for a session that did not exist yet: all
# delivery of the database stood still until atx.exec_timeout, and the parent, retried by nobody
# (the slot never sends it again), was lost. Now those messages are parked (copied from the WAL
# into atx.applied) and run in the apply sessions like any other, with retries.
#
# Simulated on one server: a parent whose statement calls atx_exec is applied, then the server
# "loses" the apply commits the way a failover to a standby without them does (their atx.applied
# records and effects deleted, the slot left where it is, pruning held off).
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE TABLE t(v text);
CREATE TABLE after(v int);
CREATE FUNCTION parent() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atx_exec('INSERT INTO t VALUES (''child'')');
    INSERT INTO t VALUES ('parent');
END $$;
SQL
ARGS=(--prune-interval-ms 3600000)
applier_start "${ARGS[@]}"
wait_for_slot || not_ok "applier created the slot"
# The nested wait may last 120 s: a check that waited for it would hold everything that long.
q -c "SET atx.exec_timeout = '120s'" -c "SELECT atx_log('SELECT parent()')" >/dev/null
wait_for 30 eval '[ "$(q -c "SELECT count(*) FROM t")" = 2 ]'
check_eq "applied at first: the child and the parent" "child,parent" "$(q -c "SELECT string_agg(v, ',' ORDER BY v) FROM t")"
wait_settled 30 || not_ok "the slot confirmed past both"
applier_stop

# What a failover to a replica without the apply commits leaves: no record, no effect, the slot past.
q -c "DELETE FROM atx.applied" -c "DELETE FROM t" >/dev/null
q -c "SELECT atx_log('INSERT INTO after VALUES (1)')" >/dev/null
applier_start "${ARGS[@]}"
check "a message sent after the failover is applied without waiting for the nested call's limit" \
    wait_for 60 eval '[ "$(q -c "SELECT count(*) FROM after")" = 1 ]'
check "the check found the messages behind the slot (event=messages_behind_slot)" \
    grep -q "event=messages_behind_slot count=2 " "$TEST_DIR/applier.log"
check "... and parked them to run again (event=messages_reapplied, parked=2)" \
    grep -q 'event=messages_reapplied count=2 outcome="parked=2"' "$TEST_DIR/applier.log"
wait_for 60 eval '[ "$(q -c "SELECT count(*) FROM t")" -ge 2 ]'
wait_settled 30 || note "not settled after 30 s"
check_eq "the parent and its child applied again, once each" "child,parent" \
    "$(q -c "SELECT string_agg(v, ',' ORDER BY v) FROM t")"
check_eq "no dead letter" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter")"
check_eq "nothing parked is left" 0 "$(q -c "SELECT count(*) FROM atx.applied WHERE status = 'parked'")"
check "no message reported lost" bash -c "! grep -q 'event=messages_lost' '$TEST_DIR/applier.log'"
applier_stop
done_testing
