#!/usr/bin/env bash
# The operator CLI end to end, with the daemon running as the documented applier role (atx_app):
# check (and what it reports on a role with too many privileges, per-role settings, a missing
# preload), dead-letter by LSN, status (slot position and apply horizon), dead-letters, show, retry of a dead letter
# after its cause is fixed (exactly once, also with two operators racing; a second retry finds it
# gone), retry refused to a role outside atx_applier, retry --all with progress, discard with an
# audit trail, user text escaped in human output and complete in --json, the config file.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE TABLE t(v int);
CREATE ROLE atx_app LOGIN REPLICATION;
GRANT atx_applier TO atx_app;
CREATE ROLE alice LOGIN;
CREATE TABLE alice_t(v int);
GRANT INSERT ON alice_t TO alice;
SQL
APP="$(conninfo) user=atx_app"
# The daemon as the applier role (testlib's applier_start passes the superuser's conninfo). It
# prunes atx.applied rarely, so that show finds the rows of the messages it handled.
start_applier() {
    (trap - EXIT; exec "$APPLIER_BIN" --conninfo "$APP" --dbname postgres --state-dir "$TEST_DIR/state" \
        --http-listen off --prune-interval-ms 3600000 >>"$TEST_DIR/applier.log" 2>&1) &
    APPLIER_PID=$!
}
start_applier
wait_for_slot || not_ok "applier created the slot"

cli() { "$APPLIER_BIN" "$@" --conninfo "$APP" --dbname postgres --state-dir "$TEST_DIR/state"; }
cli_su() { "$APPLIER_BIN" "$@" --conninfo "$(conninfo)" --dbname postgres --state-dir "$TEST_DIR/state"; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# Statements into tables that do not exist yet are refused at the call unless validation is off.
qn() { q -c "SET atx.validate = off" "$@"; }

# Workload: 5 good (one keyed), 4 into a table that does not exist yet (one keyed).
qn -c "SELECT atx_log('INSERT INTO t VALUES (\$1)', g) FROM generate_series(1, 4) g" \
   -c "SELECT atx_log_keyed('good-key', 'INSERT INTO t VALUES (5)')" \
   -c "SELECT atx_log('INSERT INTO later VALUES (\$1)', g) FROM generate_series(1, 3) g" \
   -c "SELECT atx_log_keyed('late-key', 'INSERT INTO later VALUES (100)')" >/dev/null
wait_for 15 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM atx.dead_letter') = 4 ]"
check_eq "4 dead letters" 4 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM t') = 5 ]"

# check, as the applier role
out=$(cli check); rc=$?
note "$(echo "$out" | head -30)"
check_eq "check passes on a good setup" 0 "$rc"
check "check reports wal_level and the slot" bash -c "echo \"\$1\" | grep -q 'ok    wal_level: logical' && echo \"\$1\" | grep -q 'slot pg_atx_[0-9]* active: a walsender'" _ "$out"
extv=$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'")
check "check: extension $extv, apply functions, no origin setup, no writes" bash -c "echo \"\$1\" | grep -q \"ok    extension pg_atx: version $extv\$\" && echo \"\$1\" | grep -q 'ok    apply functions' && echo \"\$1\" | grep -q 'ok    no replication origin setup' && echo \"\$1\" | grep -q 'ok    no writes to atx.applied'" _ "$out"
check "check: preload ok (seen by the applier role)" bash -c "echo \"\$1\" | grep -q 'ok    shared_preload_libraries: pg_atx is preloaded'" _ "$out"
check "check warns about the key in the data directory" bash -c "echo \"\$1\" | grep -q 'WARN  key file: pg_atx.key in the data directory'" _ "$out"
check_eq "check --json ok" True "$(cli check --json | jq_py 'd["ok"]')"
q -c "GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text) TO atx_app" \
  -c "GRANT INSERT ON atx.applied TO atx_app" -c "ALTER ROLE atx_app SET work_mem = '77MB'" >/dev/null
rc=0; out=$(cli check) || rc=$?
check_eq "check fails (exit 2) for a role that can set up origins or write atx.applied" 2 "$rc"
check "and names each" bash -c "echo \"\$1\" | grep -q 'FAIL  no replication origin setup' && echo \"\$1\" | grep -q 'FAIL  no writes to atx.applied' && echo \"\$1\" | grep -q 'WARN  settings of the login role: .*work_mem=77MB'" _ "$out"
q -c "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text) FROM atx_app" \
  -c "REVOKE INSERT ON atx.applied FROM atx_app" -c "ALTER ROLE atx_app RESET ALL" >/dev/null
out=$(cli_su check)
check "check as a superuser warns (least privilege)" bash -c "echo \"\$1\" | grep -q 'WARN  least privilege'" _ "$out"
q -c "CREATE DATABASE bare" >/dev/null
rc=0; out=$("$APPLIER_BIN" check --conninfo "$APP" --dbname bare) || rc=$?
check_eq "check fails (exit 2) without the extension" 2 "$rc"
check "and names it" bash -c "echo \"\$1\" | grep -q 'FAIL  extension pg_atx: not installed'" _ "$out"

# The daemon's config file serves the commands too; the command line wins.
cat >"$TEST_DIR/atx.conf" <<EOF
# as in packaging/atx-applier.conf.example
conninfo = $APP
dbname = postgres
state-dir = $TEST_DIR/state
batch-size = 100
log-level = info
EOF
check_eq "status --config reads conninfo, dbname, state-dir from the file" "postgres True" \
    "$("$APPLIER_BIN" status --config "$TEST_DIR/atx.conf" --json | jq_py 'd[0]["database"], d[0]["state"]["last"] is not None' | tr -d "(),'")"
rc=0; "$APPLIER_BIN" check --config "$TEST_DIR/atx.conf" --dbname bare >/dev/null || rc=$?
check_eq "--dbname on the command line wins over the file" 2 "$rc"
echo "batchsize = 3" >>"$TEST_DIR/atx.conf"
rc=0; err=$("$APPLIER_BIN" status --config "$TEST_DIR/atx.conf" 2>&1 >/dev/null) || rc=$?
check_eq "a misspelt setting in the file is a usage error" 1 "$rc"
check "naming the line" bash -c "echo \"\$1\" | grep -q \"line 7: unknown setting 'batchsize'\"" _ "$err"
rc=0; "$APPLIER_BIN" --config "$TEST_DIR/atx.conf" --once >/dev/null 2>&1 || rc=$?
check_eq "and the daemon refuses it too (exit 1)" 1 "$rc"

# status (RocksDB read-only while the daemon holds it)
out=$(cli status); rc=$?
# shellcheck disable=SC2001 # indents every line
note "$(echo "$out" | sed 's/^/  /')"
check_eq "status exit 0" 0 "$rc"
check "status: streaming, dead letters" bash -c "echo \"\$1\" | grep -q 'streaming' && echo \"\$1\" | grep -q 'dead letters:  4'" _ "$out"
check "status: confirmed position and apply horizon" bash -c "echo \"\$1\" | grep -q 'confirmed:     [0-9A-F]*/[0-9A-F]*' && echo \"\$1\" | grep -q 'apply horizon: [0-9A-F]*/[0-9A-F]* (every message before it was handled'" _ "$out"
js=$(cli status --json)
check_eq "status --json: streaming, 4 dead letters, last record read from RocksDB, horizon, confirmed" "True 4 True True True" \
    "$(echo "$js" | jq_py 'd[0]["streaming"], d[0]["dead_letters"], d[0]["state"]["last"] is not None, d[0]["apply_horizon"]["lsn"] is not None, d[0]["slot"]["confirmed_flush_lsn"] is not None' | tr -d '(),')"

# dead-letters
check_eq "dead-letters --json lists 4 with 42P01" "4 42P01" \
    "$(cli dead-letters --json | jq_py 'len(d), d[0]["sqlstate"]' | tr -d "(),'")"
out=$(cli dead-letters)
check "dead-letters human output shows the statement" bash -c "echo \"\$1\" | grep -q 'INSERT INTO later VALUES'" _ "$out"

# show: a dead letter by message id, an applied message by key, nothing
mid=$(q -c "SELECT message_id FROM atx.dead_letter ORDER BY id LIMIT 1")
id1=$(q -c "SELECT id FROM atx.dead_letter ORDER BY id LIMIT 1")
js=$(cli show "$mid" --json)
check_eq "show <message-id>: dead letter, 'dead' in atx.applied and in RocksDB" "1 dead dead" \
    "$(echo "$js" | jq_py 'len(d[0]["dead_letters"]), d[0]["applied"][0]["status"], d[0]["local_state"][0]["status"]' | tr -d "(),'")"
js=$(cli show good-key --json)
check_eq "show <key>: idempotency key row, atx.applied and RocksDB say applied" "1 applied applied" \
    "$(echo "$js" | jq_py 'len(d[0]["idempotency_keys"]), d[0]["applied"][0]["status"], d[0]["local_state"][0]["status"]' | tr -d "(),'")"
rc=0; cli show no-such-thing >/dev/null || rc=$?
check_eq "show of an unknown id exits 4" 4 "$rc"

# retry before the cause is fixed: still failing, attempts counted, row kept
rc=0; out=$(cli retry "$id1") || rc=$?
check_eq "retry of a still-broken message exits 2" 2 "$rc"
check "and reports the SQLSTATE" bash -c "echo \"\$1\" | grep -q 'failed 42P01'" _ "$out"
check_eq "dead letter kept with attempts + 1" "1 2" "$(q -c "SELECT count(*), max(attempts) FROM atx.dead_letter WHERE id = $id1" | tr '|' ' ')"

# fix the cause; two operators retry the same dead letter at once: applied exactly once
q -c "CREATE TABLE later(v int)" >/dev/null
cli retry "$id1" --json >"$TEST_DIR/r1" 2>&1 &
p1=$!
cli retry "$mid" --json >"$TEST_DIR/r2" 2>&1 &
p2=$!
wait "$p1"; rc1=$?
wait "$p2"; rc2=$?
note "racing retries exited $rc1 and $rc2"
check_eq "one racing retry applied it, the other found it gone (exit 0 and 4)" "0 4" "$(printf '%s\n' "$rc1" "$rc2" | sort -n | tr '\n' ' ' | sed 's/ $//')"
check_eq "row applied exactly once" 1 "$(q -c 'SELECT count(*) FROM later WHERE v = 1')"
check_eq "its dead letter is gone" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE id = $id1")"
check_eq "atx.applied says applied" applied "$(q -c "SELECT status FROM atx.applied WHERE message_id = '$mid'")"
rc=0; out=$(cli retry "$mid") || rc=$?
check_eq "a second retry finds it gone (exit 4)" 4 "$rc"
check_eq "and applies nothing" 1 "$(q -c 'SELECT count(*) FROM later WHERE v = 1')"

# retry by a role outside atx_applier: it sees its own dead letter (row-level security), the
# server refuses to run it
q -U alice -c "SET atx.validate = off" -c "SELECT atx_log('INSERT INTO alice_missing VALUES (1)')" >/dev/null
wait_for 15 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE caller_role = 'alice'\") = 1 ]"
aid=$(q -c "SELECT id FROM atx.dead_letter WHERE caller_role = 'alice'")
alice() { "$APPLIER_BIN" "$@" --conninfo "$(conninfo) user=alice" --dbname postgres; }
check_eq "alice sees only her own dead letter" 1 "$(alice dead-letters --json | jq_py 'len(d)')"
q -c "CREATE TABLE alice_missing(v int)" -c "GRANT INSERT ON alice_missing TO alice" >/dev/null
rc=0; out=$(alice retry "$aid") || rc=$?
check_eq "retry by a role outside atx_applier is refused (exit 1)" 1 "$rc"
check "with the reason" bash -c "echo \"\$1\" | grep -q 'refused 42501: .*permission denied'" _ "$out"
check_eq "her dead letter is still there, nothing applied" "1 0" \
    "$(q -c "SELECT (SELECT count(*) FROM atx.dead_letter WHERE id = $aid), (SELECT count(*) FROM alice_missing)" | tr '|' ' ')"

# retry --all: progress on stderr, the rest (alice's too) applied once, the keyed one records its key
out=$(cli retry --all 2>"$TEST_DIR/progress"); rc=$?
check_eq "retry --all exit 0" 0 "$rc"
check "progress lines on stderr" grep -q '^\[4/4\] dead letter' "$TEST_DIR/progress"
check_eq "every 'later' row exactly once" "1,2,3,100" "$(q -c 'SELECT string_agg(v::text, $$,$$ ORDER BY v) FROM later')"
check_eq "dead letters empty" 0 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"
check_eq "alice's message applied by the applier's retry --all" 1 "$(q -c "SELECT count(*) FROM alice_missing")"
check_eq "retried keyed message recorded its key" 1 "$(q -c "SELECT count(*) FROM atx.idempotency_key WHERE key = 'late-key'")"
rc=0; cli retry "$id1" >/dev/null || rc=$?
check_eq "retrying a gone dead letter exits 4" 4 "$rc"
check "retries are in the audit file" bash -c "[ \$(grep -c '\"action\":\"retry\"' '$TEST_DIR/state/operator-audit.jsonl') -ge 5 ]"
check "and in the server log" grep -q "atx-applier retry of dead letter $id1 .*applied" "$TEST_DIR/server.log"

# user text: escape sequences and newlines are escaped in human output, complete in --json
qn -c "SELECT atx_log(E'INSERT INTO never VALUES (1) -- \\x1b[2J\\nFORGED line')" \
   -c "SELECT atx_log('INSERT INTO never VALUES (2)')" >/dev/null
wait_for 15 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM atx.dead_letter') = 2 ]"
out=$(cli dead-letters)
check "no escape byte reaches the terminal" bash -c "! printf '%s' \"\$1\" | grep -q \$'\\x1b'" _ "$out"
check "no forged line" bash -c "! echo \"\$1\" | grep -q '^FORGED' && echo \"\$1\" | grep -q '\\\\x1b\\[2J\\\\nFORGED line'" _ "$out"
check_eq "--json carries the complete text" True \
    "$(cli dead-letters --json | jq_py '"\x1b[2J\nFORGED line" in d[0]["statement"]')"

# discard: needs a reason and DELETE on atx.dead_letter (not the applier role's); keeps the row
# in the audit trail and the server log
d1=$(q -c "SELECT id FROM atx.dead_letter ORDER BY id LIMIT 1")
rc=0; cli_su discard "$d1" >/dev/null 2>&1 || rc=$?
check_eq "discard without --reason is refused" 1 "$rc"
rc=0; cli discard "$d1" --reason "x" >/dev/null 2>&1 || rc=$?
check_eq "discard as the applier role is refused (no DELETE)" 1 "$rc"
out=$(cli_su discard "$d1" --reason "table 'never' was dropped on purpose (TICKET-1)
FAKE log line"); rc=$?
note "$out"
check_eq "discard exit 0" 0 "$rc"
check_eq "discarded row gone" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE id = $d1")"
check "audit file keeps reason and row" bash -c "grep '\"action\":\"discard\"' '$TEST_DIR/state/operator-audit.jsonl' | grep -q 'TICKET-1.*INSERT INTO never VALUES (1)'"
check "server log has the discard" grep -q "discard of dead letter $d1 .*TICKET-1" "$TEST_DIR/server.log"
check "a newline in the reason forges no server log line" bash -c "! grep -q '^FAKE log line' '$TEST_DIR/server.log' && grep -q 'TICKET-1)\\\\nFAKE log line' '$TEST_DIR/server.log'"
check "RocksDB meta not written while the daemon holds the lock" bash -c "echo \"\$1\" | grep -q 'RocksDB meta: not written'" _ "$out"

# the daemon is undisturbed: a new message is applied
q -c "SELECT atx_log('INSERT INTO t VALUES (6)')" >/dev/null
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM t') = 6 ]"
check_eq "daemon still applies after the CLI ran" 6 "$(q -c 'SELECT count(*) FROM t')"

# with the daemon stopped, discard also records the reason in RocksDB meta; show displays it
applier_stop
d2=$(q -c "SELECT id FROM atx.dead_letter ORDER BY id LIMIT 1")
m2=$(q -c "SELECT message_id FROM atx.dead_letter ORDER BY id LIMIT 1")
out=$(cli_su discard "$d2" --reason "obsolete")
check "RocksDB meta written when the daemon is stopped" bash -c "echo \"\$1\" | grep -q 'RocksDB meta: written'" _ "$out"
check_eq "show of the discarded message shows the reason" obsolete \
    "$(cli show "$m2" --json | jq_py 'd[0]["local_state"][0]["discarded"]["reason"]')"

# dead-letter: an operator finalizes a waiting message by its start LSN without running it.
lsn_before=$(q -c "SELECT pg_current_wal_insert_lsn()")
q -c "SELECT atx_log('INSERT INTO t VALUES (-99)')" >/dev/null
dl_lsn=$(q -c "SELECT (substr(h, 1, 8) || '/' || substr(h, 9, 8))::pg_lsn FROM (SELECT encode(substring(data FROM 2 FOR 8), 'hex') AS h
                FROM pg_logical_slot_peek_binary_changes(atx.slot_name(), NULL, NULL) WHERE lsn > '$lsn_before' LIMIT 1) f")
out=$(cli dead-letter "$dl_lsn" --reason "bad batch, do not run")
check "dead-letter by LSN (as the applier role)" bash -c "echo \"\$1\" | grep -q 'dead-lettered the message at $dl_lsn'" _ "$out"
check_eq "its dead letter: the server's fixed verdict" "57000" "$(q -c "SELECT sqlstate FROM atx.dead_letter WHERE source_lsn = '$dl_lsn'")"
check "the reason is in the audit trail" grep -q '"action":"dead-letter".*bad batch, do not run' "$TEST_DIR/state/operator-audit.jsonl"
rc=0; cli dead-letter "$dl_lsn" --reason again >/dev/null || rc=$?
check_eq "a second dead-letter finds it handled (exit 4)" 4 "$rc"
rc=0; cli dead-letter "not-an-lsn" --reason x >/dev/null 2>&1 || rc=$?
check_eq "a target that is neither an LSN nor a message id: usage error" 1 "$rc"
start_applier
wait_for 10 bash -c "grep -c event=streaming '$TEST_DIR/applier.log' | grep -q 2"
check "daemon starts again on the state the CLI wrote to" bash -c "[ \$(grep -c event=streaming '$TEST_DIR/applier.log') = 2 ]"
out=$(cli_su check)
check "check: preload ok, as a superuser, who may read the setting" bash -c "echo \"\$1\" | grep -q \"ok    shared_preload_libraries: 'pg_atx'\"" _ "$out"
applier_stop

# Without pg_atx preloaded: check fails and says why, and the daemon does not apply (it cannot bound
# a message's time).
echo "shared_preload_libraries = ''" >>"$TEST_DIR/data/postgresql.conf"
atx_cluster_stop "$TEST_DIR" fast && atx_cluster_start "$TEST_DIR"
rc=0; out=$(cli check) || rc=$?
check_eq "check fails (exit 2) without the preload" 2 "$rc"
check "check names the missing preload and what it breaks" bash -c "echo \"\$1\" | grep -q 'FAIL  shared_preload_libraries: .*atx-applier cannot bound'" _ "$out"
start_applier
wait_for 10 grep -q 'event=not_ready.*shared_preload_libraries' "$TEST_DIR/applier.log"
check "the daemon waits, saying why" grep -q 'event=not_ready.*shared_preload_libraries' "$TEST_DIR/applier.log"
applier_stop

done_testing
