#!/usr/bin/env bash
# One applier, two databases: each gets its own slot, origin and thread, and a statement blocked
# on a lock in one database does not hold up the other.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q -c "CREATE DATABASE shop" -c "CREATE DATABASE billing" >/dev/null
for db in shop billing; do
    psql -qAtX -d $db -c "CREATE EXTENSION pg_atx" -c "CREATE TABLE t(v int)" >/dev/null
done
# Both databases served by one process.
(trap - EXIT; exec "$APPLIER_BIN" --conninfo "$(conninfo)" --dbname shop --dbname billing \
    --state-dir "$TEST_DIR/state" --http-listen off >>"$TEST_DIR/applier.log" 2>&1) &
APPLIER_PID=$!
wait_for 30 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM pg_replication_slots WHERE plugin = 'pg_atx' AND active\") = 2 ]"
check_eq "two slots, both streamed" 2 "$(q -c "SELECT count(*) FROM pg_replication_slots WHERE plugin = 'pg_atx' AND active")"
check_eq "slot names are pg_atx_<database oid>" "pg_atx_$(q -c "SELECT oid FROM pg_database WHERE datname = 'billing'")" \
    "$(q -c "SELECT slot_name FROM pg_replication_slots WHERE database = 'billing'")"

# shop's statement waits on a lock for 6 s; billing's messages must not wait with it.
psql -qAtX -d shop -c "BEGIN" -c "LOCK TABLE t IN ACCESS EXCLUSIVE MODE" -c "SELECT pg_sleep(6)" -c "COMMIT" >/dev/null &
locker=$!
PGDATABASE=shop wait_for_lock 10 t || not_ok "the lock holder has its lock"
psql -qAtX -d shop -c "SELECT atx_log('INSERT INTO t VALUES (1)')" >/dev/null
t0=$(date +%s%N)
for i in $(seq 1 20); do
    psql -qAtX -d billing -c "BEGIN" -c "SELECT atx_log('INSERT INTO t VALUES (\$1)', $i)" -c "ROLLBACK" >/dev/null
done
wait_for 5 bash -c "[ \$(psql -qAtX -d billing -c 'SELECT count(*) FROM t') = 20 ]"
ms=$((($(date +%s%N) - t0) / 1000000))
check_eq "billing applied while shop was blocked" 20 "$(psql -qAtX -d billing -c 'SELECT count(*) FROM t')"
check_eq "shop's apply session meanwhile waits on the lock" 1 \
    "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND application_name LIKE 'atx-applier apply%' AND wait_event_type = 'Lock'")"
note "billing's 20 messages applied in ${ms} ms while shop waited on its lock"
wait "$locker"
wait_for 20 bash -c "[ \$(psql -qAtX -d shop -c 'SELECT count(*) FROM t') = 1 ]"
check_eq "shop applied once the lock went away" 1 "$(psql -qAtX -d shop -c 'SELECT count(*) FROM t')"
applier_stop
check_eq "clean exit" 0 "$?"
done_testing
