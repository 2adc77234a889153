#!/usr/bin/env bash
# The operator CLI end to end, with the daemon running: check, status, dead-letters, show, retry
# of a dead letter after its cause is fixed (exactly once, also with two operators racing),
# retry --all with progress, discard with an audit trail, --json everywhere.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q -c "CREATE TABLE t(v int)" >/dev/null
applier_start --http-listen off
wait_for_slot || not_ok "applier created the slot"

cli() { "$APPLIER_BIN" "$@" --conninfo "$(conninfo)" --dbname postgres --state-dir "$TEST_DIR/state"; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# Workload: 5 good (one keyed), 4 into a table that does not exist yet (one keyed).
q <<'SQL' >/dev/null
SELECT atx_log('INSERT INTO t VALUES ($1)', g) FROM generate_series(1, 4) g;
SELECT atx_log_keyed('good-key', 'INSERT INTO t VALUES (5)');
SELECT atx_log('INSERT INTO later VALUES ($1)', g) FROM generate_series(1, 3) g;
SELECT atx_log_keyed('late-key', 'INSERT INTO later VALUES (100)');
SQL
wait_for 15 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM atx.dead_letter') = 4 ]"
check_eq "4 dead letters" 4 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM t') = 5 ]"

# check
out=$(cli check); rc=$?
note "$(echo "$out" | head -20)"
check_eq "check passes on a good setup" 0 "$rc"
check "check reports wal_level and the slot" bash -c "echo \"\$1\" | grep -q 'ok    wal_level: logical' && echo \"\$1\" | grep -q 'slot pg_atx_[0-9]* active: a walsender'" _ "$out"
check_eq "check --json ok" True "$(cli check --json | jq_py 'd["ok"]')"
q -c "CREATE DATABASE bare" >/dev/null
rc=0; out=$("$APPLIER_BIN" check --conninfo "$(conninfo)" --dbname bare) || rc=$?
check_eq "check fails (exit 2) without the extension" 2 "$rc"
check "and names it" bash -c "echo \"\$1\" | grep -q 'FAIL  extension pg_atx: not installed'" _ "$out"

# status (RocksDB read-only while the daemon holds it)
out=$(cli status); rc=$?
note "$(echo "$out" | sed 's/^/  /')"
check_eq "status exit 0" 0 "$rc"
check "status: streaming, dead letters" bash -c "echo \"\$1\" | grep -q 'streaming' && echo \"\$1\" | grep -q 'dead letters:  4'" _ "$out"
js=$(cli status --json)
check_eq "status --json: streaming, 4 dead letters, last record read from RocksDB" "True 4 True" \
    "$(echo "$js" | jq_py 'd[0]["streaming"], d[0]["dead_letters"], d[0]["state"]["last"] is not None' | tr -d '(),')"

# dead-letters
check_eq "dead-letters --json lists 4 with 42P01" "4 42P01" \
    "$(cli dead-letters --json | jq_py 'len(d), d[0]["sqlstate"]' | tr -d "(),'")"
out=$(cli dead-letters)
check "dead-letters human output shows the statement" bash -c "echo \"\$1\" | grep -q 'INSERT INTO later VALUES'" _ "$out"

# show: a dead letter by message id, an applied message by key, nothing
mid=$(q -c "SELECT message_id FROM atx.dead_letter ORDER BY id LIMIT 1")
id1=$(q -c "SELECT id FROM atx.dead_letter ORDER BY id LIMIT 1")
js=$(cli show "$mid" --json)
check_eq "show <message-id>: dead letter on the server and 'dead' in RocksDB" "1 dead" \
    "$(echo "$js" | jq_py 'len(d[0]["dead_letters"]), d[0]["local_state"][0]["status"]' | tr -d "(),'")"
js=$(cli show good-key --json)
check_eq "show <key>: idempotency key row and 'applied' in RocksDB" "1 applied" \
    "$(echo "$js" | jq_py 'len(d[0]["idempotency_keys"]), d[0]["local_state"][0]["status"]' | tr -d "(),'")"
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

# retry --all: progress on stderr, the rest applied once, the keyed one records its key
out=$(cli retry --all 2>"$TEST_DIR/progress"); rc=$?
check_eq "retry --all exit 0" 0 "$rc"
check "progress lines on stderr" grep -q '^\[3/3\] dead letter' "$TEST_DIR/progress"
check_eq "every 'later' row exactly once" "1,2,3,100" "$(q -c 'SELECT string_agg(v::text, $$,$$ ORDER BY v) FROM later')"
check_eq "dead letters empty" 0 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"
check_eq "retried keyed message recorded its key" 1 "$(q -c "SELECT count(*) FROM atx.idempotency_key WHERE key = 'late-key'")"
rc=0; cli retry "$id1" >/dev/null || rc=$?
check_eq "retrying a gone dead letter exits 4" 4 "$rc"
check "retries are in the audit file" bash -c "[ \$(grep -c '\"action\":\"retry\"' '$TEST_DIR/state/operator-audit.jsonl') -ge 4 ]"

# discard: needs a reason; keeps the row in the audit trail and the server log
q -c "SELECT atx_log('INSERT INTO never VALUES (1)')" -c "SELECT atx_log('INSERT INTO never VALUES (2)')" >/dev/null
wait_for 15 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM atx.dead_letter') = 2 ]"
d1=$(q -c "SELECT id FROM atx.dead_letter ORDER BY id LIMIT 1")
rc=0; cli discard "$d1" >/dev/null 2>&1 || rc=$?
check_eq "discard without --reason is refused" 1 "$rc"
out=$(cli discard "$d1" --reason "table 'never' was dropped on purpose (TICKET-1)"); rc=$?
note "$out"
check_eq "discard exit 0" 0 "$rc"
check_eq "discarded row gone" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE id = $d1")"
check "audit file keeps reason and row" bash -c "grep '\"action\":\"discard\"' '$TEST_DIR/state/operator-audit.jsonl' | grep -q 'TICKET-1.*INSERT INTO never VALUES (1)'"
check "server log has the discard" grep -q "discard of dead letter $d1 .*TICKET-1" "$TEST_DIR/server.log"
check "RocksDB meta not written while the daemon holds the lock" bash -c "echo \"\$1\" | grep -q 'RocksDB meta: not written'" _ "$out"

# the daemon is undisturbed: a new message is applied
q -c "SELECT atx_log('INSERT INTO t VALUES (6)')" >/dev/null
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM t') = 6 ]"
check_eq "daemon still applies after the CLI ran" 6 "$(q -c 'SELECT count(*) FROM t')"

# with the daemon stopped, discard also records the reason in RocksDB meta; show displays it
applier_stop
d2=$(q -c "SELECT id FROM atx.dead_letter ORDER BY id LIMIT 1")
m2=$(q -c "SELECT message_id FROM atx.dead_letter ORDER BY id LIMIT 1")
out=$(cli discard "$d2" --reason "obsolete")
check "RocksDB meta written when the daemon is stopped" bash -c "echo \"\$1\" | grep -q 'RocksDB meta: written'" _ "$out"
check_eq "show of the discarded message shows the reason" obsolete \
    "$(cli show "$m2" --json | jq_py 'd[0]["local_state"][0]["discarded"]["reason"]')"
applier_start --http-listen off
wait_for 10 bash -c "grep -c event=streaming '$TEST_DIR/applier.log' | grep -q 2"
check "daemon starts again on the state the CLI wrote to" bash -c "[ \$(grep -c event=streaming '$TEST_DIR/applier.log') = 2 ]"
applier_stop

done_testing
