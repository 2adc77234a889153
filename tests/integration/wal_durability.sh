#!/usr/bin/env bash
# A message written by atx_log in a transaction that rolls back survives an immediate
# shutdown (a crash, as far as WAL is concerned) and is still delivered by the slot.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q -c "SELECT atx.ensure_slot()" >/dev/null

peek_text() {
    q -c "SELECT data FROM pg_logical_slot_peek_changes((SELECT slot_name FROM pg_replication_slots WHERE plugin = 'pg_atx'), NULL, NULL, 'format', 'text')"
}

id=$(q <<'SQL' | tail -n 1
CREATE TABLE employees(id int PRIMARY KEY, name text);
CREATE TABLE audit_log(msg text, who name);
BEGIN;
INSERT INTO employees VALUES (999, 'Test');
SELECT atx_log('INSERT INTO audit_log(msg, who) VALUES ($1, current_user)', 'tried to add 999'::text);
ROLLBACK;
SQL
)
check "atx_log returned a uuid ($id)" grep -Eq '^[0-9a-f-]{36}$' <<<"$id"
check_eq "caller's row rolled back" 0 "$(q -c 'SELECT count(*) FROM employees')"

# Crash right after the ROLLBACK: nothing else has been written or flushed since.
atx_cluster_crash "$TEST_DIR"
atx_cluster_start "$TEST_DIR" || not_ok "restart after crash"

out=$(peek_text)
note "$out"
check "message present after crash, by id" grep -q "id=$id" <<<"$out"
check "statement carried" grep -q 'INSERT INTO audit_log(msg, who) VALUES ($1, current_user)' <<<"$out"
check "parameter carried" grep -q 'tried to add 999' <<<"$out"
check_eq "exactly one message in the stream" 1 "$(grep -c 'pg_atx message' <<<"$out")"

# Ordinary DML and a forged message from a plain role never reach the stream.
q <<'SQL' >/dev/null
CREATE ROLE mallory LOGIN;
CREATE TABLE noise(v int);
GRANT INSERT ON noise TO mallory;
SQL
psql -qAtX -U mallory -c "INSERT INTO noise VALUES (1)" >/dev/null
psql -qAtX -U mallory -c "BEGIN; SELECT pg_logical_emit_message(false, 'pg_atx', 'forged'); ROLLBACK" >/dev/null
psql -qAtX -U mallory -c "SELECT pg_logical_emit_message(false, 'pg_atx', 'forged2')" >/dev/null
out=$(peek_text)
check_eq "forged messages and DML filtered out" 1 "$(grep -c 'pg_atx message' <<<"$out")"
check "no forged payload in the stream" test "$(grep -c forged <<<"$out")" = 0

# The same through a real walsender (pg_recvlogical), where the plugin decodes outside any
# transaction: text format must work there too.
slot=$(q -c "SELECT slot_name FROM pg_replication_slots WHERE plugin = 'pg_atx'")
end=$(q -c "SELECT pg_current_wal_flush_lsn()")
out=$(timeout 20 pg_recvlogical -d postgres --slot "$slot" --start --endpos "$end" -o format=text -f - 2>&1)
note "$out"
check "pg_recvlogical -o format=text streams the message" grep -q "id=$id" <<<"$out"
check_eq "pg_recvlogical sees nothing forged" 0 "$(grep -c forged <<<"$out")"

# Refusals that need another server configuration: wal_level below logical.
REPLICA_DIR=$(atx_cluster_mkdir replica-level)
atx_cluster_init "$REPLICA_DIR" "wal_level = replica" && atx_cluster_start "$REPLICA_DIR"
err=$(PGHOST=$REPLICA_DIR PGPORT=$(cat "$REPLICA_DIR/port") psql -qAtX -v VERBOSITY=verbose \
    -c "CREATE EXTENSION pg_atx" -c "SELECT atx_log('SELECT 1')" 2>&1)
note "$err"
check "wal_level=replica refused with 55000" grep -q "55000" <<<"$err"
atx_cluster_stop "$REPLICA_DIR" immediate
rm -rf "$REPLICA_DIR"

# On a standby (a real one, from pg_basebackup) atx_log refuses with 25006.
STANDBY_DIR=$(atx_cluster_mkdir standby)
atx_as_server "$ATX_PG_BINDIR/pg_basebackup" -h "$TEST_DIR" -p "$PGPORT" -U postgres \
    -D "$STANDBY_DIR/data" -R -X stream >/dev/null 2>&1 || not_ok "pg_basebackup"
sport=$((PGPORT + 1))
printf "port = %s\nunix_socket_directories = '%s'\n" "$sport" "$STANDBY_DIR" |
    atx_as_server tee -a "$STANDBY_DIR/data/postgresql.conf" >/dev/null
echo "$sport" >"$STANDBY_DIR/port"
atx_cluster_start "$STANDBY_DIR" || not_ok "standby start"
err=$(PGHOST=$STANDBY_DIR PGPORT=$sport psql -qAtX -v VERBOSITY=verbose -c "SELECT atx_log('SELECT 1')" 2>&1)
note "$err"
check "on a standby atx_log is refused with 25006" grep -q "25006" <<<"$err"
atx_cluster_stop "$STANDBY_DIR" immediate
rm -rf "$STANDBY_DIR"

done_testing
