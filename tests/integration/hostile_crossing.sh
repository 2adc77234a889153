#!/usr/bin/env bash
# Issue 21, invariants 3, 5 and 6 (docs/security.md): nothing crosses roles in the apply sessions,
# what a caller is told is true, and exactly once holds for nested emits after prunes and operator
# retries. One test per finding of the issue (rows 5, 6, 11-16), as an ordinary role (mal) against
# a victim, with the applier running as the documented least-privilege role.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster "max_connections = 100" || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE atx_app LOGIN REPLICATION;
GRANT atx_applier TO atx_app;
CREATE ROLE victim LOGIN;
CREATE ROLE mal LOGIN;
CREATE SCHEMA v AUTHORIZATION victim;
CREATE SCHEMA m AUTHORIZATION mal;
SQL
PGUSER=mal q -c "CREATE TABLE m.huge(n bigint)" >/dev/null
PGUSER=victim q <<'SQL' >/dev/null
CREATE TABLE v.log(msg text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE v.secret(s text);
INSERT INTO v.secret VALUES ('one'), ('two'), ('three');
CREATE TABLE v.dates(d date);
CREATE TABLE v.seen(what text, value text);
CREATE TABLE v.gate(g int);
GRANT USAGE ON SCHEMA v TO PUBLIC;
SQL
APP="$(conninfo | sed 's/user=postgres/user=atx_app/')"
APP_ARGS=(--conninfo "$APP" --dbname postgres --state-dir "$TEST_DIR/state" --http-listen 127.0.0.1:0
          --statement-timeout-ms 20000 --prune-interval-ms 1000 --log-level info)
start_app() { (trap - EXIT; exec "$APPLIER_BIN" "${APP_ARGS[@]}" >>"$TEST_DIR/applier.log" 2>&1) & APPLIER_PID=$!; }
start_app
wait_for_slot || not_ok "applier created the slot"
V() { PGUSER=victim q "$@"; }
M() { PGUSER=mal q "$@"; }
A() { psql -qAtX "$APP dbname=postgres" "$@"; }
# rows TABLE_WHERE N: waits until N rows match (a message's effect: records are pruned once confirmed).
rows() { wait_for 60 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM $1\") -ge $2 ]"; }

# --- Row 5: a parse made under one caller's settings is never run for another's ----------------
# Under standard_conforming_strings = off, the text below is an INSERT and a DELETE of the
# victim's secrets; under on (the victim's), an INSERT of two rows. Eight lanes of mal's send it
# first (each dead-lettered: mal may not write there), then the victim.
STMT="INSERT INTO v.log(msg) VALUES ('x\\'), ('); DELETE FROM v.secret; --')"
for _ in $(seq 1 8); do
    M -c "SET standard_conforming_strings = off" -c "SET atx.validate = off" -c "SELECT atx_log(\$s\$$STMT\$s\$)" >/dev/null 2>&1
done
M -c "SET DateStyle = 'SQL, DMY'" -c "SET atx.validate = off" -c "SELECT atx_log(\$\$INSERT INTO v.dates VALUES ('03/04/2020'::date)\$\$)" >/dev/null
wait_for 60 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE caller_role = 'mal'\") = 9 ]"
V -c "SELECT atx_log(\$s\$$STMT\$s\$)" >/dev/null
V -c "SET DateStyle = 'ISO, MDY'" -c "SELECT atx_log(\$\$INSERT INTO v.dates VALUES ('03/04/2020'::date)\$\$)" >/dev/null
rows v.log 2
rows v.dates 1
check_eq "row 5: mal's 9 messages were dead-lettered (42501)" "9" \
    "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE caller_role = 'mal' AND sqlstate = '42501'")"
check_eq "row 5: the victim's statement ran as the victim's parse: its secrets are intact" 3 "$(q -c "SELECT count(*) FROM v.secret")"
check_eq "row 5: ... and it inserted its two rows" "); DELETE FROM v.secret; --|x\\" \
    "$(q -c "SELECT string_agg(msg, '|' ORDER BY msg) FROM v.log")"
check_eq "row 5: the victim's date constant read under its own DateStyle" "2020-03-04" "$(q -c "SELECT d FROM v.dates")"

# --- Row 13: placeholders a role leaves behind are never seen by another -------------------------
for _ in $(seq 1 8); do
    M -c "SET rt.tenant = 'mal'" -c "SELECT atx_log('SELECT current_setting(''rt.tenant'', true)')" >/dev/null
done
for _ in $(seq 1 8); do
    V -c "SELECT atx_log(\$\$INSERT INTO v.seen VALUES ('rt.tenant', coalesce(current_setting('rt.tenant', true), 'NULL'))\$\$)" >/dev/null
done
rows "v.seen WHERE what = 'rt.tenant'" 8
check_eq "row 13: every victim message saw rt.tenant unset (NULL), on every apply session" "NULL 8" \
    "$(q -c "SELECT value || ' ' || count(*) FROM v.seen WHERE what = 'rt.tenant' GROUP BY value")"

# --- Row 6: a huge statement does not leave its memory in the apply session --------------------
{
    printf 'SELECT atx_log($huge$INSERT INTO m.huge SELECT count(*) FROM (VALUES '
    printf '(1),%.0s' $(seq 1 199999)
    printf '(1)) v(x)$huge$);\n'
} >"$TEST_DIR/huge.sql"
for _ in 1 2 3; do M -f "$TEST_DIR/huge.sql" >/dev/null; done
rows "m.huge WHERE n = 200000" 3
check_eq "row 6: the three statements were applied" "3" "$(q -c "SELECT count(*) FROM m.huge WHERE n = 200000")"
rss_max=0
for pid in $(q -c "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'atx-applier apply %'"); do
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${kb:-0}" -gt "$rss_max" ] && rss_max=$kb
done
note "row 6: largest apply backend RSS after three 200,000-row statements: $((rss_max / 1024)) MB"
check "row 6: every apply backend holds at most 256 MB ($((rss_max / 1024)) MB)" test "$rss_max" -le $((256 * 1024))

# --- Row 11: a nested emit stays exactly once after a prune and an operator's retry ------------
id=$(V -c "SELECT atx_log(\$q\$SELECT atx_log('INSERT INTO v.log(msg) VALUES (''nested-once'')'); SELECT 1 / (SELECT count(*) FROM v.gate)::int\$q\$)")
wait_for 60 bash -c "[ -n \"\$(psql -qAtX -c \"SELECT 1 FROM atx.dead_letter WHERE message_id = '$id'\")\" ]"
wait_for 60 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM v.log WHERE msg = 'nested-once'\") = 1 ]"
# The prune passes the child's record (the horizon follows the slot).
child_lsn=$(q -c "SELECT lsn FROM atx.applied WHERE parent_id = '$id'")
wait_for 30 bash -c "[ \"\$(psql -qAtX -c \"SELECT lsn > '$child_lsn' FROM atx.apply_horizon\")\" = t ]"
check_eq "row 11: the child's record outlives the prune while its parent is dead-lettered" 1 \
    "$(q -c "SELECT count(*) FROM atx.applied WHERE parent_id = '$id'")"
V -c "INSERT INTO v.gate VALUES (1)"
dl=$(q -c "SELECT id FROM atx.dead_letter WHERE message_id = '$id'")
check_eq "row 11: the operator's retry applies the parent" "applied" "$(A -c "SELECT status FROM atx.retry_dead_letter($dl)")"
sleep 2
check_eq "row 11: the nested insert applied exactly once" 1 "$(q -c "SELECT count(*) FROM v.log WHERE msg = 'nested-once'")"

# --- Row 12: a waiting caller hears the server's words, never the applier role's ----------------
check_eq "row 12: the applier role cannot dead-letter with a text of its own" "42883" \
    "$(A -v VERBOSITY=verbose -c "SELECT atx.dead_letter_message('0/1', '28P01', 'password authentication failed, re-enter it at https://evil.example/login', 1, now())" 2>&1 | sed -n 's/^ERROR:  \([0-9A-Z]*\):.*/\1/p')"
check_eq "row 12: nor with an unknown verdict" "22023" \
    "$(A -v VERBOSITY=verbose -c "SELECT atx.dead_letter_message('0/1', 'please re-enter your password')" 2>&1 | sed -n 's/^ERROR:  \([0-9A-Z]*\):.*/\1/p')"
# The victim waits; the operator dead-letters its message: the victim is told the fixed verdict.
applier_stop
lsn_before=$(q -c "SELECT pg_current_wal_insert_lsn()")
(trap - EXIT; PGUSER=victim psql -qAtX -c "SET atx.exec_timeout = 30000" \
    -c "SELECT atx_exec('INSERT INTO v.log(msg) VALUES (''row12'')')" >"$TEST_DIR/row12.out" 2>&1) &
waiter=$!
wait_for 10 bash -c "[ -n \"\$(psql -qAtX -c \"SELECT 1 FROM pg_logical_slot_peek_binary_changes(atx.slot_name(), NULL, NULL) WHERE lsn > '$lsn_before'\")\" ]"
w_lsn=$(q -c "SELECT (substr(h, 1, 8) || '/' || substr(h, 9, 8))::pg_lsn FROM (SELECT encode(substring(data FROM 2 FOR 8), 'hex') AS h
                FROM pg_logical_slot_peek_binary_changes(atx.slot_name(), NULL, NULL) WHERE lsn > '$lsn_before' LIMIT 1) f")
A -c "SELECT atx.dead_letter_message('$w_lsn', 'operator')" >/dev/null
wait "$waiter"
check "row 12: the waiting victim got the server's fixed verdict (57000)" \
    grep -q "dead-lettered by an operator without running" "$TEST_DIR/row12.out"
check "row 12: ... and no text the applier role chose" bash -c "! grep -q 'evil.example' '$TEST_DIR/row12.out'"
start_app
wait_for_slot || not_ok "applier restarted"

# --- Row 14: resolving audit outcomes respects row-level security -------------------------------
q <<'SQL' >/dev/null
CREATE TABLE v.aud (LIKE atx.audit_log INCLUDING DEFAULTS);
ALTER TABLE v.aud OWNER TO victim;
INSERT INTO v.aud (table_oid, table_name, operation, caller_role, caller_xid, emitted_at, message_id)
SELECT 0, 'x', 'INSERT', 'victim', pg_current_xact_id(), now(), gen_random_uuid() FROM generate_series(1, 3);
SQL
PGUSER=victim q -c "ALTER TABLE v.aud ENABLE ROW LEVEL SECURITY" -c "CREATE POLICY hidden ON v.aud USING (false)" \
    -c "GRANT SELECT, UPDATE ON v.aud TO mal" >/dev/null
got=$(M -c "SELECT atx._audit_resolve('v.aud')" 2>&1)
check_eq "row 14: mal's resolve updates none of the rows hidden from her" "0" "$got"
check_eq "row 14: the hidden rows are untouched" 3 "$(q -c "SELECT count(*) FROM v.aud WHERE outcome IS NULL")"
check_eq "row 14: the owner's resolve still resolves them" "3" "$(PGUSER=victim q -c "ALTER TABLE v.aud DISABLE ROW LEVEL SECURITY" -c "SELECT atx.resolve_outcomes('v.aud')" | tail -1)"

# --- Row 15: a dead-letter notification tells nothing about whose message it was -------------
(trap - EXIT; PGUSER=mal psql -qAtX -c "LISTEN atx_dead_letter" -c "SELECT pg_sleep(6)" >"$TEST_DIR/listen.out" 2>&1) &
listener=$!
sleep 1
V -c "SELECT atx_log('INSERT INTO v.nowhere VALUES (1)')" >/dev/null 2>&1 || V -c "SET atx.validate = off" -c "SELECT atx_log('INSERT INTO v.nowhere VALUES (1)')" >/dev/null
wait "$listener"
check "row 15: mal hears that a dead letter was written" grep -q 'atx_dead_letter' "$TEST_DIR/listen.out"
check "row 15: ... with no payload (no message id, no emit time)" \
    bash -c "! grep -Eq 'payload \"[^\"]+\"' '$TEST_DIR/listen.out'"

# --- Row 16: an error text with Unicode line breaks stays one log line --------------------------
V -c "SET atx.validate = off" -c "SELECT atx_log(\$q\$DO \$d\$BEGIN RAISE EXCEPTION '%', E'x\\u0085level=critical event=forged\\u2028y'; END\$d\$\$q\$)" >/dev/null
wait_for 30 grep -q 'event=dead_lettered.*forged' "$TEST_DIR/applier.log"
check "row 16: no NEL, U+2028 or U+2029 reaches the applier's log raw" \
    bash -c "! LC_ALL=C grep -qP '\\xc2\\x85|\\xe2\\x80\\xa8|\\xe2\\x80\\xa9' '$TEST_DIR/applier.log'"
check "row 16: the forged text is escaped inside its own field" grep -q 'x\\u0085level=critical event=forged\\u2028y' "$TEST_DIR/applier.log"
done_testing
