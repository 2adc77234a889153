#!/usr/bin/env bash
# Reproduction (first seen in tools/atx soak, seed 5, pair, --durability standby-flush without
# pg_read_all_stats, 2026-12-06: "event=messages_behind_slot count=19", then 20 s later
# "event=messages_lost ... server closed the connection", again on every reconnect): the failover
# check (DatabaseWorker::check_failover) re-applies the messages behind the slot with one
# synchronous atx.apply_batch call before the apply sessions start.
#  1. A re-applied message that waits for a nested atx_exec waits for a session that does not
#     exist yet: the check, and all delivery of the database, stands still until the nested wait
#     times out (atx.exec_timeout, 30 s).
#  2. Whatever that call returns is logged as reapplied (outcome="skipped=1 retry=1" here), but a
#     message behind the slot is never sent again: the parent, retried by nobody, is lost (no row,
#     no dead letter); its child is dead-lettered 57014 (its waiter gave up). Any transient failure
#     during the repair (a lock timeout, a serialization failure) loses its message the same way.
#
# Simulated on one server: a parent whose statement calls atx_exec is applied, then the server
# "loses" its apply commit the way a failover does (its atx.applied records and effects deleted,
# the slot left where it is, pruning held off so that the horizon stays behind the messages).
#   PG_CONFIG=... bash tools/soak/repro/failover_check_nested_exec.sh
set -uo pipefail
. "$(dirname "$0")/../../../tests/lib/testlib.sh"
atx_test_cluster || exit 2
q <<'SQL' >/dev/null
CREATE TABLE t(v text);
CREATE FUNCTION parent() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atx_exec('INSERT INTO t VALUES (''child'')');
    INSERT INTO t VALUES ('parent');
END $$;
SQL
ARGS=(--prune-interval-ms 3600000)
applier_start "${ARGS[@]}"; wait_for_slot
q -c "SELECT atx_log('SELECT parent()')" >/dev/null
wait_for 30 eval "[ \"\$(q -c 'SELECT count(*) FROM t')\" = 2 ]" || { echo "not applied at first"; exit 2; }
wait_settled 30
applier_stop
# What a failover to a replica without the apply commit leaves: no record, no effect, the slot past.
q -c "DELETE FROM atx.applied" -c "DELETE FROM t" >/dev/null
q -c "CREATE TABLE after(v int)" -c "SELECT atx_log('INSERT INTO after VALUES (1)')" >/dev/null
t0=$SECONDS
applier_start "${ARGS[@]}"
wait_for 90 eval "[ \"\$(q -c 'SELECT count(*) FROM after')\" = 1 ]"
echo "a new message was applied $((SECONDS - t0)) s after the applier started"
grep -oE 'event=(messages_behind_slot|messages_reapplied|messages_lost)[^"]*"[^"]*"' "$TEST_DIR/applier.log" | cut -c1-200
echo "rows of t: $(q -c "SELECT string_agg(v, ',' ORDER BY v) FROM t")"
echo "dead letters: $(q -c "SELECT string_agg(sqlstate || ' ' || left(statement, 40), '; ') FROM atx.dead_letter")"
applier_stop
