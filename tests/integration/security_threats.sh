#!/usr/bin/env bash
# Issue 12: findings 4, 6 and 9, and one test per row of the threat model in docs/security.md
# (PUBLIC role, role with CREATE on a schema, audit-table owner, applier role, REPLICATION-only
# role, superuser). Each role is tried as an attacker: the refusal's SQLSTATE is asserted, and
# that nothing ran. The daemon runs as the documented applier role (LOGIN REPLICATION, member of
# atx_applier, not superuser), and the HMAC key sits outside the data directory (atx.key_file).
# Findings 1-3: security_escalation.sh; 5: tests/regress/sql/refusals.sql; 8: fuzz_apply_payload.sh.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
KEY=$TEST_DIR/keys/pg_atx.key
mkdir -p "$TEST_DIR/keys" && chmod 0700 "$TEST_DIR/keys"
[ "$(id -u)" = 0 ] && chown postgres: "$TEST_DIR/keys"
# CREATE EXTENSION made the key in the data directory; moved out, as docs/security.md says.
mv "$TEST_DIR/data/pg_atx.key" "$KEY"
echo "atx.key_file = '$KEY'" >>"$TEST_DIR/data/postgresql.conf"
q -c "SELECT pg_catalog.pg_reload_conf()" >/dev/null
key_file_set() { [ "$(q -c "LOAD 'pg_atx'" -c "SHOW atx.key_file")" = "$KEY" ]; }
wait_for 10 key_file_set || not_ok "atx.key_file is in effect"

q <<'SQL' >/dev/null
CREATE EXTENSION pg_walinspect;
CREATE ROLE atx_app LOGIN REPLICATION;          -- the applier role as docs/setup.md sets it up
GRANT atx_applier TO atx_app;
CREATE ROLE repl LOGIN REPLICATION;             -- REPLICATION only
CREATE ROLE alice LOGIN;                        -- PUBLIC: nothing granted but her own tables
CREATE ROLE bob LOGIN;                          -- the victim whose message is captured
CREATE ROLE mal LOGIN;                          -- CREATE on schema public
GRANT CREATE ON SCHEMA public TO mal;
CREATE ROLE eve LOGIN;                          -- owns an audit table
CREATE SCHEMA alice_s AUTHORIZATION alice;
CREATE SCHEMA mal_s AUTHORIZATION mal;
CREATE SCHEMA eve_s AUTHORIZATION eve;
CREATE TABLE bob_t(v text);                     -- only bob writes it: a second row is a replay
GRANT INSERT, SELECT ON bob_t TO bob;
CREATE TABLE alice_t(v text, who name);
GRANT INSERT, SELECT ON alice_t TO alice;
CREATE TABLE pwned(what text);                  -- only the superuser may write it
CREATE TABLE marker(v int);
GRANT INSERT ON marker TO PUBLIC;
CREATE TABLE audited(id int PRIMARY KEY, v text);            -- audited into eve's table
CREATE TABLE audited_default(id int PRIMARY KEY, v text);    -- audited into atx.audit_log
SQL

# state_of ROLE psql-args...: the SQLSTATE of the first error, else "ok".
state_of() {
    local role=$1 s
    shift
    s=$(PGUSER=$role psql -qAtX -v ON_ERROR_STOP=1 -v VERBOSITY=verbose "$@" 2>&1 >/dev/null |
        sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p' | head -n 1)
    echo "${s:-ok}"
}
# refused DESCRIPTION SQLSTATE ROLE SQL
refused() { check_eq "$1 ($2)" "$2" "$(state_of "$3" -c "$4")"; }
count() { q -c "SELECT count(*) FROM $1"; }
contains() { grep -qF -- "$2" <<<"$1"; }
superuser_of() { q -c "SELECT rolsuper FROM pg_roles WHERE rolname = '$1'"; }
MARK=0
# marker [ROLE [SECONDS]]: a message; returns once it is applied. It orders only after messages of
# the same session (each session is a lane of its own).
marker() {
    MARK=$((MARK + 1))
    PGUSER=${1:-alice} q -c "SELECT atx_log('INSERT INTO marker VALUES (\$1)', $MARK)" >/dev/null
    wait_for "${2:-30}" bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM marker WHERE v = $MARK') = 1 ]"
}
APP="$(conninfo) user=atx_app"
start_applier() { # as atx_app; prunes only when told (atx.prune below); debug: logs server notices
    (trap - EXIT; exec "$APPLIER_BIN" --conninfo "$APP" --dbname postgres --state-dir "$TEST_DIR/state" \
        --http-listen off --log-level debug --prune-interval-ms 3600000 --max-attempts 3 --retry-base-ms 50 \
        >>"$TEST_DIR/applier.log" 2>&1) &
    APPLIER_PID=$!
}
cli() { "$APPLIER_BIN" "$@" --conninfo "$APP" --dbname postgres --state-dir "$TEST_DIR/state"; }
# wait_sql SECONDS SQL: until SQL (as the superuser) returns t
wait_sql() { wait_for "$1" bash -c "[ \"\$(psql -qAtX -c \"\$1\")\" = t ]" _ "$2"; }
start_applier
wait_sql 30 "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = atx.slot_name())" ||
    not_ok "applier created the slot"
# repl's own slot, made before any message exists (what it can read, below).
PGUSER=repl q -c "SELECT pg_create_logical_replication_slot('repl_peek', 'pg_atx')" >/dev/null

# --- The applier role's privileges: exactly the table in docs/security.md -----------------------
expected_privs="function atx.apply(pg_lsn) EXECUTE
function atx.apply_activity() EXECUTE
function atx.apply_batch(pg_lsn[],integer[],timestamp with time zone[],integer,integer,boolean) EXECUTE
function atx.apply_batch(pg_lsn[],integer[],timestamp with time zone[],integer,integer,boolean,text,integer) EXECUTE
function atx.dead_letter_message(pg_lsn,text,integer,timestamp with time zone) EXECUTE
function atx.decode(bytea) EXECUTE
function atx.ensure_slot() EXECUTE
function atx.message_at(pg_lsn) EXECUTE
function atx.messages_between(pg_lsn,pg_lsn,integer) EXECUTE
function atx.park(pg_lsn[]) EXECUTE
function atx.prune() EXECUTE
function atx.retry_dead_letter(bigint,integer) EXECUTE
function atx.run_nonatomic(pg_lsn,integer,timestamp with time zone,integer,text,text,text,text) EXECUTE
function atx.standby_flush_lsn() EXECUTE
function atx.terminate_overdue(integer,pg_lsn) EXECUTE
function atx.unapplied(pg_lsn[]) EXECUTE
function atx.wake(uuid[]) EXECUTE
policy applier_reads_all on atx.dead_letter SELECT
role atx_applier NOLOGIN NOSUPERUSER NOREPLICATION
schema atx USAGE
table atx.applied SELECT
table atx.apply_horizon SELECT
table atx.dead_letter SELECT
table atx.idempotency_key SELECT"
actual_privs=$(q <<'SQL'
SELECT x FROM (
  SELECT 'function ' || p.oid::regprocedure || ' ' || a.privilege_type AS x
    FROM pg_proc p, aclexplode(p.proacl) a WHERE a.grantee = 'atx_applier'::regrole
  UNION ALL
  SELECT 'table ' || c.oid::regclass || ' ' || a.privilege_type
    FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = 'atx_applier'::regrole
  UNION ALL
  SELECT 'table ' || c.oid::regclass || ' column ' || a.privilege_type
    FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid, aclexplode(t.attacl) a
   WHERE a.grantee = 'atx_applier'::regrole
  UNION ALL
  SELECT 'schema ' || n.nspname || ' ' || a.privilege_type
    FROM pg_namespace n, aclexplode(n.nspacl) a WHERE a.grantee = 'atx_applier'::regrole
  UNION ALL
  SELECT 'policy ' || polname || ' on ' || polrelid::regclass || ' ' ||
         CASE polcmd WHEN 'r' THEN 'SELECT' WHEN '*' THEN 'ALL' ELSE polcmd::text END
    FROM pg_policy WHERE 'atx_applier'::regrole = ANY (polroles)
  UNION ALL
  SELECT 'role atx_applier ' || CASE WHEN rolcanlogin THEN 'LOGIN' ELSE 'NOLOGIN' END
         || CASE WHEN rolsuper THEN ' SUPERUSER' ELSE ' NOSUPERUSER' END
         || CASE WHEN rolreplication THEN ' REPLICATION' ELSE ' NOREPLICATION' END
    FROM pg_roles WHERE rolname = 'atx_applier'
  UNION ALL  -- roles atx_applier is a member of (none)
  SELECT 'member of ' || m.roleid::regrole FROM pg_auth_members m WHERE m.member = 'atx_applier'::regrole
) s ORDER BY x COLLATE "C"
SQL
)
check_eq "applier role: atx_applier holds exactly the privileges of the table in docs/security.md" \
    "$expected_privs" "$actual_privs"
privs_doc=$(sed -n "/^## The applier role's privileges/,/^## /p" "$ATX_ROOT/docs/security.md")
undocumented=""
# shellcheck disable=SC2013 # the names are single words ([a-z_]*)
for o in $(sed -n 's/^\(function\|table\) atx\.\([a-z_]*\).*/\2/p' <<<"$actual_privs" | sort -u); do
    grep -qF "\`atx.$o\`" <<<"$privs_doc" || undocumented="$undocumented $o"
done
check_eq "applier role: each of its functions and tables is a row of the privilege table in docs/security.md" "" "$undocumented"
check_eq "applier role: atx_app is LOGIN REPLICATION, not superuser, a member of atx_applier only" "f t atx_applier" \
    "$(q -c "SELECT r.rolsuper, r.rolreplication, (SELECT string_agg(m.roleid::regrole::text, ',') FROM pg_auth_members m WHERE m.member = r.oid) FROM pg_roles r WHERE rolname = 'atx_app'" | tr '|' ' ')"

# --- A genuine message by bob, applied, then captured by the applier role ----------------------
PGUSER=bob q -c "SELECT atx_log('INSERT INTO bob_t VALUES (\$1)', 'genuine')" >/dev/null
wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM bob_t') = 1 ]"
check_eq "bob's genuine message applied once by the non-superuser applier" 1 "$(count bob_t)"
L=$(PGUSER=atx_app q -c "SELECT lsn FROM atx.applied WHERE status = 'applied' ORDER BY lsn LIMIT 1")
# The applier role may read any payload (atx.message_at): it is "captured".
hex=$(PGUSER=atx_app q -c "SELECT encode(atx.message_at('$L'), 'hex')")
q -c "CREATE TABLE cap AS SELECT decode('$hex', 'hex') AS p" -c "GRANT SELECT ON cap TO PUBLIC" >/dev/null
check_eq "the captured copy authenticates (a valid HMAC: only provenance can refuse it)" "INSERT INTO bob_t VALUES (\$1)" \
    "$(q -c "SELECT atx.verify_payload(p)->>'statement' FROM cap")"
# start_of END_LSN: where the record that ends at END_LSN starts. pg_walinspect reads flushed WAL
# only: a transaction that writes (a transactional message) flushes it at commit.
start_of() {
    q -c "SELECT pg_logical_emit_message(true, 'flush', '')" >/dev/null
    q -c "SELECT start_lsn FROM pg_get_wal_records_info('$L', pg_current_wal_flush_lsn()) WHERE end_lsn = '$1'"
}
# forge ROLE: ROLE writes the captured payload again with pg_logical_emit_message (PUBLIC may);
# prints the start LSN of the record.
forge() { start_of "$(PGUSER=$1 q -c "SELECT pg_logical_emit_message(false, 'pg_atx', p) FROM cap")"; }
# apply_status ROLE LSN: the status and SQLSTATE atx.apply_batch returns for one LSN
apply_status() {
    PGUSER=$1 q -c "SELECT status || ' ' || coalesce(sqlstate, '-') FROM atx.apply_batch(ARRAY['$2']::pg_lsn[], '{1}', '{NULL}', 1, 0, false, 'test')"
}

# --- Finding 4 / applier role ------------------------------------------------------------------
for f in "pg_replication_origin_session_setup('pg_atx')" "pg_replication_origin_xact_setup('0/1', now())" \
    "pg_replication_origin_create('atx_mine')" "pg_replication_origin_session_reset()" \
    "pg_replication_origin_progress('pg_atx', false)" "atx.ensure_emit_origin()"; do
    refused "finding 4 / applier role: cannot set up or create a replication origin: $f" 42501 atx_app "SELECT $f"
done
bad=""
for tc in atx.applied:status atx.dead_letter:error atx.idempotency_key:key atx.apply_horizon:lsn atx.audit_log:outcome; do
    t=${tc%%:*} c=${tc#*:}
    for sql in "INSERT INTO $t DEFAULT VALUES" "UPDATE $t SET $c = $c" "DELETE FROM $t" "TRUNCATE $t"; do
        s=$(state_of atx_app -c "$sql")
        [ "$s" = 42501 ] || bad="$bad [$sql: $s]"
    done
done
check_eq "finding 4 / applier role: INSERT, UPDATE, DELETE, TRUNCATE of each atx table refused (42501)" "" "$bad"
FORGED_APP=$(forge atx_app)
check "finding 4 / applier role: wrote a forged copy (pg_logical_emit_message) at ${FORGED_APP:-?}" test -n "$FORGED_APP"
check_eq "finding 4 / applier role: the forged copy named to atx.apply_batch is rejected" "rejected 28000" \
    "$(apply_status atx_app "$FORGED_APP")"
check "finding 4 / applier role: ... because it lacks the pg_atx origin" contains \
    "$(PGUSER=atx_app q -c "SELECT error FROM atx.apply_batch(ARRAY['$FORGED_APP']::pg_lsn[], '{1}', '{NULL}', 1, 0, false, 'test')")" \
    "was not written by atx_log (replication origin)"
refused "finding 4 / applier role: atx.apply of the forged copy" 28000 atx_app "SELECT atx.apply('$FORGED_APP')"
check_eq "finding 4 / applier role: the handled genuine LSN again through atx.apply_batch (replay): 'already'" "already -" \
    "$(apply_status atx_app "$L")"
refused "finding 4 / applier role: atx.apply of the handled genuine LSN (replay)" 23505 atx_app "SELECT atx.apply('$L')"
check_eq "finding 4: bob's statement ran once (the forgery and the replays ran nothing)" 1 "$(count bob_t)"
refused "applier role: cannot read user tables" 42501 atx_app "SELECT * FROM bob_t"
refused "applier role: cannot become a caller (SET ROLE bob)" 42501 atx_app "SET ROLE bob"
refused "applier role: cannot discard a dead letter itself (DELETE)" 42501 atx_app "DELETE FROM atx.dead_letter"
PGUSER=atx_app q -c "SELECT atx_log('INSERT INTO marker SELECT -1 WHERE current_user = ''atx_app''')" >/dev/null
check "applier role: its own atx_log runs as itself (it names no other caller)" \
    wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM marker WHERE v = -1') = 1 ]"

# --- REPLICATION-only role ---------------------------------------------------------------------
for f in "atx.apply('$L')" "atx.message_at('$L')" \
    "* FROM atx.apply_batch(ARRAY['$L']::pg_lsn[], '{1}', '{NULL}', 1, 0, false, 'test')" \
    "atx.dead_letter_message('$L', 'operator')" "pg_replication_origin_session_setup('pg_atx')" \
    "* FROM atx.applied"; do
    refused "REPLICATION role: refused: SELECT $f" 42501 repl "SELECT $f"
done
FORGED_REPL=$(forge repl)
check "REPLICATION role: may write a forged copy (pg_logical_emit_message is PUBLIC's)" test -n "$FORGED_REPL"
peek=$(PGUSER=repl q -c "SELECT data FROM pg_logical_slot_peek_changes('repl_peek', NULL, NULL, 'format', 'text')")
check "REPLICATION role CAN: read payloads (statement, parameters) through a slot of its own" contains "$peek" \
    "statement=INSERT INTO bob_t VALUES (\$1) params=[text:'genuine']"
check_eq "REPLICATION role: that slot has bob's message once, none of the forged copies (origin filter)" 1 \
    "$(grep -c 'statement=INSERT INTO bob_t' <<<"$peek")"
PGUSER=repl q -c "SELECT pg_drop_replication_slot('repl_peek')" >/dev/null

# --- Superuser ---------------------------------------------------------------------------------
check_eq "superuser CAN: read the key (nothing protects it from a superuser)" 32 \
    "$(q -c "SELECT length(pg_read_binary_file('$KEY'))")"
# origin_copy SQL-EXPR: the superuser writes a payload with the pg_atx origin; prints its start LSN.
origin_copy() {
    start_of "$(q -c "SELECT pg_replication_origin_session_setup('pg_atx')" \
        -c "SELECT pg_logical_emit_message(false, 'pg_atx', $1) FROM cap" \
        -c "SELECT pg_replication_origin_session_reset()" | grep /)"
}
dead28=$(q -c "SELECT count(*) FROM atx.dead_letter WHERE sqlstate = '28000'")
REPLAY=$(origin_copy p)
TAMPERED=$(origin_copy "set_byte(p, position('bob_t'::bytea IN p) - 1, ascii('x'))")
wait_sql 20 "SELECT EXISTS (SELECT 1 FROM atx.dead_letter WHERE source_lsn = '$TAMPERED')"
check_eq "superuser: a copy of a handled message with the pg_atx origin is not run again ('already')" "already - 1" \
    "$(apply_status postgres "$REPLAY") $(count bob_t)"
check_eq "superuser: a tampered copy with the pg_atx origin is dead-lettered 28000, none of its text kept" "1 1" \
    "$(q -c "SELECT count(*) - $dead28, count(*) FILTER (WHERE statement = '' AND caller_role = '' AND source_lsn = '$TAMPERED') FROM atx.dead_letter WHERE sqlstate = '28000'" | tr '|' ' ')"
refused "superuser: atx.apply of a handled message" 23505 postgres "SELECT atx.apply('$L')"
refused "superuser: atx_log in READ ONLY without atx.allow_in_read_only" 25006 postgres \
    "BEGIN READ ONLY; SELECT atx_log('INSERT INTO pwned VALUES (''read only'')')"
check_eq "superuser CAN: allow it with atx.allow_in_read_only (the trade-off is its call)" ok \
    "$(state_of postgres -c "SELECT atx.slot_name(); SET atx.allow_in_read_only = on; BEGIN READ ONLY; SELECT atx_log('INSERT INTO marker VALUES (-2)')")"

# Pruned: the horizon passes the genuine message and its atx.applied row goes; a replay by LSN is
# still refused.
prune_past() {
    PGUSER=atx_app psql -qAtX -c "SELECT atx.prune()" >/dev/null &&
        [ "$(PGUSER=atx_app psql -qAtX -c "SELECT (SELECT lsn FROM atx.apply_horizon) > '$L' AND NOT EXISTS (SELECT 1 FROM atx.applied WHERE lsn = '$L')")" = t ]
}
check "applier role CAN: move the horizon past handled messages (atx.prune)" wait_for 20 prune_past
check_eq "finding 4: after pruning, atx.apply_batch on the genuine LSN: 'already'" "already -" "$(apply_status atx_app "$L")"
refused "finding 4: after pruning, atx.apply of the genuine LSN" 23505 atx_app "SELECT atx.apply('$L')"
check_eq "finding 4: bob's statement still ran once" 1 "$(count bob_t)"

# --- PUBLIC role (alice) -------------------------------------------------------------------------
for f in "atx.apply('$L')" "atx.message_at('$L')" "atx.verify_payload(p) FROM cap" "atx.decode(p) FROM cap" \
    "* FROM atx.apply_batch(ARRAY['$L']::pg_lsn[], '{1}', '{NULL}', 1, 0, false, 'test')" "atx.prune()" \
    "* FROM atx.park(ARRAY['$L']::pg_lsn[])" "atx.dead_letter_message('$L', 'operator')" "atx.retry_dead_letter(1)" "atx.wake('{}')" \
    "* FROM atx.unapplied(ARRAY['$L']::pg_lsn[])" "* FROM atx.messages_between('$L', '$L', 1)" \
    "atx.ensure_emit_origin()" "atx.ensure_slot()" \
    "pg_replication_origin_session_setup('pg_atx')" "pg_read_binary_file('$KEY')" "* FROM atx.applied" \
    "* FROM atx.idempotency_key"; do
    refused "PUBLIC role: refused: SELECT $f" 42501 alice "SELECT $f"
done
refused "PUBLIC role: refused: CALL atx.run_nonatomic" 42501 alice "CALL atx.run_nonatomic('$L', 1, now(), 0)"
bad=""
for sql in "INSERT INTO atx.applied VALUES (gen_random_uuid(), '0/1', 'applied')" "DELETE FROM atx.dead_letter" \
    "UPDATE atx.apply_horizon SET lsn = 'FFFFFFFF/0'" "INSERT INTO atx.idempotency_key DEFAULT VALUES" \
    "INSERT INTO atx.audit_log DEFAULT VALUES"; do
    s=$(state_of alice -c "$sql")
    [ "$s" = 42501 ] || bad="$bad [$sql: $s]"
done
check_eq "PUBLIC role: writes to atx tables refused (42501)" "" "$bad"
FORGED_PUB=$(forge alice)
check "PUBLIC role: may write a forged copy" test -n "$FORGED_PUB"
refused "PUBLIC role: a statement it may not run is refused at the call (atx.validate)" 42501 alice \
    "SELECT atx_log('INSERT INTO pwned VALUES (''PUBLIC'')')"
PGUSER=alice q -c "SET atx.validate = off" -c "SELECT atx_log('INSERT INTO pwned VALUES (''PUBLIC unvalidated'')')" >/dev/null
refused "PUBLIC role: atx_log in a READ ONLY transaction" 25006 alice \
    "BEGIN READ ONLY; SELECT atx_log('INSERT INTO alice_t VALUES (''read only'', current_user)')"
refused "PUBLIC role: cannot SET atx.allow_in_read_only (a superuser setting)" 42501 alice \
    "SELECT atx.slot_name(); SET atx.allow_in_read_only = on"
# pg_atx is preloaded here (atx-applier needs it): a non-superuser's SET is refused at once. (Without
# preload a placeholder SET made before the library loads is dropped with a warning: regress.)
refused "PUBLIC role: nor by a SET (preloaded: refused at once)" 42501 alice \
    "SET atx.allow_in_read_only = on; BEGIN READ ONLY; SELECT atx_log('INSERT INTO alice_t VALUES (''read only 2'', current_user)')"
PGUSER=alice q -c "SELECT atx_log('INSERT INTO alice_t VALUES (\$1, current_user)', 'mine')" >/dev/null
wait_sql 20 "SELECT EXISTS (SELECT 1 FROM alice_t WHERE v = 'mine') AND EXISTS (SELECT 1 FROM atx.dead_letter WHERE statement LIKE '%PUBLIC unvalidated%')"
check_eq "PUBLIC role CAN: its own statement is applied, as itself" "mine alice" "$(q -c "SELECT v, who FROM alice_t" | tr '|' ' ')"
check_eq "PUBLIC role: the unvalidated statement was dead-lettered with 42501, nothing ran" "42501 0" \
    "$(q -c "SELECT (SELECT string_agg(sqlstate, ',') FROM atx.dead_letter WHERE statement LIKE '%PUBLIC unvalidated%'), (SELECT count(*) FROM pwned)" | tr '|' ' ')"
check_eq "PUBLIC role: nothing of its READ ONLY calls ran" 0 "$(q -c "SELECT count(*) FROM alice_t WHERE v LIKE 'read only%'")"
check_eq "PUBLIC role: sees its own dead letters, none of the others' (row-level security)" \
    "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE caller_role = 'alice'") 0" \
    "$(PGUSER=alice q -c "SELECT count(*), count(*) FILTER (WHERE caller_role IS DISTINCT FROM 'alice') FROM atx.dead_letter" | tr '|' ' ')"
check "PUBLIC role: ... and there are others' dead letters" \
    test "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE caller_role IS DISTINCT FROM 'alice'")" -ge 1
check_eq "applier role CAN: read every dead letter" "$(count atx.dead_letter)" "$(PGUSER=atx_app q -c "SELECT count(*) FROM atx.dead_letter")"

# --- Role with CREATE on a schema (mal: CREATE on public) ----------------------------------------
refused "CREATE role: cannot create a function in schema atx" 42501 mal "CREATE FUNCTION atx.f() RETURNS int LANGUAGE sql AS 'SELECT 1'"
refused "CREATE role: cannot create a table in schema atx" 42501 mal "CREATE TABLE atx.applied_shadow(x int)"
refused "CREATE role: cannot replace atx_log(text) in public" 42723 mal \
    "CREATE FUNCTION public.atx_log(text) RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'"
# Traps that would catch unqualified calls and operators in the applier's and the extension's SQL
# if public were on their search_path; each records who ran it.
PGUSER=mal q <<'SQL' >/dev/null
CREATE TABLE mal_s.caught(who name, what text);
GRANT INSERT ON mal_s.caught TO PUBLIC;
GRANT USAGE ON SCHEMA mal_s TO PUBLIC;
CREATE FUNCTION public.trap_mul(bigint, interval) RETURNS interval LANGUAGE plpgsql AS $$
BEGIN INSERT INTO mal_s.caught VALUES (current_user, '*(bigint, interval)'); RETURN $2; END $$;
CREATE OPERATOR public.* (LEFTARG = bigint, RIGHTARG = interval, FUNCTION = public.trap_mul);
CREATE FUNCTION public.trap_plus(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN INSERT INTO mal_s.caught VALUES (current_user, '+(timestamptz, interval)'); RETURN $1; END $$;
CREATE OPERATOR public.+ (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = public.trap_plus);
CREATE FUNCTION public.trap_lt(pg_lsn, pg_lsn) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO mal_s.caught VALUES (current_user, '<(pg_lsn, pg_lsn)'); RETURN $1 OPERATOR(pg_catalog.<) $2; END $$;
CREATE OPERATOR public.< (LEFTARG = pg_lsn, RIGHTARG = pg_lsn, FUNCTION = public.trap_lt);
CREATE FUNCTION public.unnest(pg_lsn[]) RETURNS SETOF pg_lsn LANGUAGE plpgsql AS $$
BEGIN INSERT INTO mal_s.caught VALUES (current_user, 'unnest(pg_lsn[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.unnest(uuid[]) RETURNS SETOF uuid LANGUAGE plpgsql AS $$
BEGIN INSERT INTO mal_s.caught VALUES (current_user, 'unnest(uuid[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
SQL
# What uses those shapes: messages applied, a dead letter and its retry by the applier role, the
# audit trigger, pruning.
q -c "SELECT atx.enable_audit('audited_default')" >/dev/null
q -c "INSERT INTO audited_default VALUES (1, 'x')" >/dev/null
PGUSER=mal q -c "SET atx.validate = off" -c "SELECT atx_log('INSERT INTO mal_s.later VALUES (1)')" >/dev/null
wait_sql 20 "SELECT EXISTS (SELECT 1 FROM atx.dead_letter WHERE statement LIKE '%mal_s.later%') AND EXISTS (SELECT 1 FROM atx.audit_log)"
PGUSER=mal q -c "CREATE TABLE mal_s.later(v int)" >/dev/null
cli retry "$(q -c "SELECT id FROM atx.dead_letter WHERE statement LIKE '%mal_s.later%'")" >/dev/null 2>&1
PGUSER=atx_app q -c "SELECT atx.prune()" >/dev/null
check_eq "CREATE role: its dead letter was retried and applied (the traps had their chance)" 1 "$(count mal_s.later)"
check_eq "CREATE role: the audit row was written" 1 "$(q -c "SELECT count(*) FROM atx.audit_log WHERE table_name = 'public.audited_default'")"
check_eq "CREATE role: none of its traps in public ran, as anyone" "" "$(q -c "SELECT string_agg(who || ':' || what, ', ') FROM mal_s.caught")"

# --- Audit-table owner (eve) ---------------------------------------------------------------------
PGUSER=eve q <<'SQL' >/dev/null
CREATE TABLE eve_s.audit (id bigserial, table_oid oid, table_name text, operation text, old_row jsonb,
    new_row jsonb, caller_role name, caller_session_user name, application_name text, client_addr inet,
    caller_xid xid8, emitted_at timestamptz, applied_at timestamptz DEFAULT clock_timestamp(),
    message_id uuid, outcome text);
CREATE TABLE eve_s.ran(who name, su boolean, message_at text);
CREATE FUNCTION eve_s.grab() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    st text := 'ran';
BEGIN
    BEGIN
        ALTER ROLE eve SUPERUSER;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN  -- only the applier role may call it
        PERFORM atx.message_at('0/1');
    EXCEPTION WHEN OTHERS THEN st := SQLSTATE;
    END;
    INSERT INTO eve_s.ran SELECT current_user, rolsuper, st FROM pg_roles WHERE rolname = 'eve';
    RETURN NEW;
END $$;
CREATE TRIGGER grab BEFORE INSERT ON eve_s.audit FOR EACH ROW EXECUTE FUNCTION eve_s.grab();
GRANT USAGE ON SCHEMA eve_s TO PUBLIC;
SQL
q -c "SELECT atx.enable_audit('audited', 'eve_s.audit')" >/dev/null
q -c "INSERT INTO audited VALUES (1, 'x')" >/dev/null
wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM eve_s.audit') = 1 ]"
check_eq "audit-table owner: its trigger ran as itself, without the applier role's rights (atx.message_at: 42501)" \
    "eve f 42501" "$(q -c "SELECT who, su, message_at FROM eve_s.ran" | tr '|' ' ')"
refused "audit-table owner: atx._audit_insert outside an apply" 42501 eve \
    "SELECT atx._audit_insert('audited_default'::regclass::oid, 'INSERT', '[[null, {\"id\": 666}]]', 'eve', 'x', NULL)"
refused "audit-table owner: atx._audit_write" 42501 eve \
    "SELECT atx._audit_write('atx.audit_log', 0, 't', 'INSERT', '[]', 'x', 'x', 'x', NULL, NULL, now(), gen_random_uuid(), NULL)"
refused "audit-table owner: resolve_outcomes of atx.audit_log (no UPDATE)" 42501 eve "SELECT atx.resolve_outcomes('atx.audit_log')"
# An audit row for a table it may not write, forged through a message (which runs as eve).
PGUSER=eve q -c "SET atx.validate = off" \
    -c "SELECT atx_log('SELECT atx._audit_insert(\$1, ''INSERT'', ''[[null, {\"id\": 666}]]'', ''eve'', ''x'', NULL)', 'audited_default'::regclass::oid)" >/dev/null
wait_sql 20 "SELECT EXISTS (SELECT 1 FROM atx.dead_letter WHERE caller_role = 'eve')"
check_eq "audit-table owner: an audit row forged through a message is dead-lettered 42501" 42501 \
    "$(q -c "SELECT string_agg(sqlstate, ',') FROM atx.dead_letter WHERE caller_role = 'eve'")"
check_eq "audit-table owner: no forged row in atx.audit_log" 0 "$(q -c "SELECT count(*) FROM atx.audit_log WHERE new_row->>'id' = '666'")"
check_eq "audit-table owner CAN: write its own audit table (it is as trustworthy as its owner)" ok \
    "$(state_of eve -c "INSERT INTO eve_s.audit (table_name, operation) VALUES ('forged', 'INSERT')")"
check_eq "audit-table owner: not superuser" f "$(superuser_of eve)"

# --- Finding 6: log injection and amplification --------------------------------------------------
PGUSER=alice q <<'SQL' >/dev/null
CREATE FUNCTION alice_s.boom(n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE WARNING '%', E'warned\n2030-01-01T00:00:00.000000Z level=critical FORGED-WARNING \x1b[2J';
    -- A transient SQLSTATE, raised by user code: no reason to retry.
    RAISE EXCEPTION USING ERRCODE = '40001',
        MESSAGE = E'boom\n2030-01-01T00:00:00.000000Z level=critical FORGED-ERROR \x1b[2J ' || repeat('x', n),
        DETAIL = repeat('d', n), HINT = repeat('h', n);
END $$;
SQL
log_before=$(stat -c %s "$TEST_DIR/applier.log")
state_before=$(du -sb "$TEST_DIR/state" | cut -f1)
PGUSER=alice q -c "SELECT atx_log('SELECT alice_s.boom(20000000)')" >/dev/null
wait_sql 30 "SELECT EXISTS (SELECT 1 FROM atx.dead_letter WHERE statement LIKE '%alice_s.boom%')"
wait_for 10 grep -q 'event=dead_lettered .*FORGED-ERROR' "$TEST_DIR/applier.log"
log_growth=$(($(stat -c %s "$TEST_DIR/applier.log") - log_before))
state_growth=$(($(du -sb "$TEST_DIR/state" | cut -f1) - state_before))
note "finding 6: a 20 MB error (and 20 MB detail and hint): applier log +$log_growth bytes, state directory +$state_growth bytes"
row=$(q -c "SELECT sqlstate, attempts, octet_length(error) <= 8100, octet_length(detail) <= 2100, octet_length(hint) <= 2100, left(error, 4) FROM atx.dead_letter WHERE statement LIKE '%alice_s.boom%'" | tr '|' ' ')
check_eq "finding 6: dead-lettered at the first attempt (user code cannot ask for retries)" "40001 1" "$(echo "$row" | cut -d' ' -f1-2)"
check_eq "finding 6: stored error, detail and hint bounded (8000, 2000, 2000 bytes and a note)" "t t t boom" "$(echo "$row" | cut -d' ' -f3-6)"
check "finding 6: the applier log grew by less than 8 KB for it" test "$log_growth" -lt 8192
check "finding 6: the state directory grew by less than 1 MB for it" test "$state_growth" -lt 1048576
mid=$(q -c "SELECT message_id FROM atx.dead_letter WHERE statement LIKE '%alice_s.boom%'")
local_err=$(cli show "$mid" --json | python3 -c "import json,sys; print(len(json.load(sys.stdin)[0]['local_state'][0]['last_error'] or ''))")
check "finding 6: the applier's own record of the error is bounded (${local_err:-?} bytes)" test "${local_err:-99999}" -le 400
check "finding 6: the WARNING reached the applier log, escaped" \
    grep -qF 'warned\n2030-01-01T00:00:00.000000Z level=critical FORGED-WARNING \x1b[2J' "$TEST_DIR/applier.log"
check "finding 6: the error reached the applier log, escaped" \
    grep -qF 'boom\n2030-01-01T00:00:00.000000Z level=critical FORGED-ERROR \x1b[2J' "$TEST_DIR/applier.log"
check_eq "finding 6: every applier log line is one of its own (no forged line)" "" \
    "$(grep -vE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z level=' "$TEST_DIR/applier.log" | head -n 3)"
check "finding 6: no escape byte in the applier log" bash -c "! grep -q \$'\\x1b' '$TEST_DIR/applier.log'"
# The operator retries it: the CLI prints what the server said (the WARNING too) on its terminal.
cli retry "$(q -c "SELECT id FROM atx.dead_letter WHERE message_id = '$mid'")" >"$TEST_DIR/retry_boom.out" 2>&1
check "finding 6: the retry was reported" grep -q 'failed 40001: boom' "$TEST_DIR/retry_boom.out"
check_eq "finding 6: the operator CLI's output (retry) has no forged line" "" \
    "$(grep -E '^2030-01-01T' "$TEST_DIR/retry_boom.out" | head -n 3)"
check "finding 6: the operator CLI's output (retry) has no escape byte" bash -c "! grep -q \$'\\x1b' '$TEST_DIR/retry_boom.out'"

# --- Finding 9: the pg_atx origin dropped and re-created while the walsender streams ------------
origin_id() { q -c "SELECT roident FROM pg_replication_origin WHERE roname = 'pg_atx'"; }
old=$(origin_id)
q -c "SELECT pg_replication_origin_drop('pg_atx')" -c "SELECT pg_replication_origin_create('atx_filler')" \
  -c "SELECT atx.ensure_emit_origin()" >/dev/null
new=$(origin_id)
check "finding 9: the re-created origin has a new id ($old -> $new)" test "$new" != "$old"
PGUSER=alice q -c "SELECT atx_log('INSERT INTO alice_t VALUES (''after re-create'', current_user)')" >/dev/null
check "finding 9: a message written after the re-create is delivered and applied" wait_for 20 \
    bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM alice_t WHERE v = 'after re-create'\") = 1 ]"
# The walsender has just seen a record of another origin; that origin is dropped and pg_atx is
# re-created under its id, at once.
q -c "SELECT pg_replication_origin_create('atx_other')" -c "SELECT pg_replication_origin_session_setup('atx_other')" \
  -c "SELECT pg_logical_emit_message(false, 'other', 'x')" -c "SELECT pg_replication_origin_session_reset()" >/dev/null
marker
other=$(q -c "SELECT roident FROM pg_replication_origin WHERE roname = 'atx_other'")
q -c "SELECT pg_replication_origin_drop('pg_atx')" -c "SELECT pg_replication_origin_drop('atx_other')" \
  -c "SELECT pg_replication_origin_create('atx_filler2')" -c "SELECT atx.ensure_emit_origin()" >/dev/null
check_eq "finding 9: pg_atx re-created under the id the walsender saw as another origin's" "$other" "$(origin_id)"
PGUSER=alice q -c "SELECT atx_log('INSERT INTO alice_t VALUES (''id recycled'', current_user)')" >/dev/null
check "finding 9: a message written under that recycled id is delivered and applied" \
    wait_for 15 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM alice_t WHERE v = 'id recycled'\") = 1 ]"
wait_for 20 marker alice 2 || not_ok "messages are delivered again after the origin was re-created"

# --- The key outside the data directory -----------------------------------------------------------
check "key file: the key is at atx.key_file (32 bytes), none in the data directory" \
    bash -c "[ \$(stat -c %s '$KEY') = 32 ] && [ ! -e '$TEST_DIR/data/pg_atx.key' ]"
bb=$TEST_DIR/basebackup
PGUSER=atx_app pg_basebackup -D "$bb" -X stream -c fast >"$TEST_DIR/basebackup.log" 2>&1
check "finding 4: the applier role (REPLICATION) can take a base backup" test -f "$bb/PG_VERSION"
check "finding 4: the base backup carries no key file" bash -c "[ -z \"\$(find '$bb' -name 'pg_atx.key*')\" ]"
check "finding 4: no file of the base backup (WAL included) contains the key's bytes" python3 - "$KEY" "$bb" <<'PY'
import os, sys
key = open(sys.argv[1], 'rb').read()
for root, _, files in os.walk(sys.argv[2]):
    for f in files:
        with open(os.path.join(root, f), 'rb') as fh:
            if key in fh.read():
                sys.exit(1)
PY
rm -rf "$bb"
# A session does not choose its key: a connection option naming another key file (which the server
# keeps as a placeholder until the library is loaded) must neither sign with another key nor leave
# a key in the data directory.
dead28=$(q -c "SELECT count(*) FROM atx.dead_letter WHERE sqlstate = '28000'")
if PGUSER=alice PGOPTIONS="-c atx.key_file=$TEST_DIR/alice.key" psql -qAtX -v ON_ERROR_STOP=1 \
    -c "SELECT atx_log('INSERT INTO alice_t VALUES (''own key file'', current_user)')" >/dev/null 2>&1; then
    wait_sql 20 "SELECT EXISTS (SELECT 1 FROM alice_t WHERE v = 'own key file') OR (SELECT count(*) FROM atx.dead_letter WHERE sqlstate = '28000') > $dead28"
fi
check_eq "PUBLIC role: with PGOPTIONS -c atx.key_file its message is applied or refused, never signed with another key" \
    "$dead28" "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE sqlstate = '28000'")"
check "PUBLIC role: with PGOPTIONS -c atx.key_file no key file appears in the data directory" \
    test ! -e "$TEST_DIR/data/pg_atx.key"
rm -f "$TEST_DIR/data/pg_atx.key"   # not to confuse what follows
# Failover to a node with another key: what was written under the old key is dead-lettered, and
# nothing of it runs; a message handled before, which the slot sends again after the reconnect,
# is not touched; with the old key back, "atx-applier retry --all" applies each message once.
marker
handled=$MARK   # the last message handled before the stop: the slot sends it again
applier_stop
last=$(q -c "SELECT coalesce(max(id), 0) FROM atx.dead_letter")
from=$(q -c "SELECT pg_current_wal_insert_lsn()")
PGUSER=alice q -c "SELECT atx_log('INSERT INTO alice_t VALUES (''under the old key'', current_user)')" >/dev/null
cp -p "$KEY" "$TEST_DIR/keys/old.key"
head -c 32 /dev/urandom >"$TEST_DIR/keys/new.key"
[ "$(id -u)" = 0 ] && chown postgres: "$TEST_DIR/keys/new.key"
chmod 0600 "$TEST_DIR/keys/new.key" && mv "$TEST_DIR/keys/new.key" "$KEY"
start_applier   # new sessions: they read the new key
wait_sql 20 "SELECT EXISTS (SELECT 1 FROM atx.dead_letter WHERE source_lsn >= '$from')"
check_eq "key differs: the message is dead-lettered 28000 (unauthenticated), no text of it kept" "28000||" \
    "$(q -c "SELECT string_agg(sqlstate || '|' || statement || '|' || caller_role, ',') FROM atx.dead_letter WHERE source_lsn >= '$from'")"
check_eq "key differs: nothing ran" 0 "$(q -c "SELECT count(*) FROM alice_t WHERE v = 'under the old key'")"
check_eq "key differs: a message handled before the change, sent again by the slot, is not dead-lettered" "" \
    "$(q -c "SELECT string_agg(source_lsn || ' ' || sqlstate, ', ') FROM atx.dead_letter WHERE id > $last AND source_lsn < '$from'")"
mv "$TEST_DIR/keys/old.key" "$KEY"
applier_stop
start_applier   # each session reads the key once: the applier's sessions start again
cli retry --all >"$TEST_DIR/retry_all.out" 2>&1
check_eq "key restored: retry --all applies the message once, as its caller" "1 alice" \
    "$(q -c "SELECT count(*), string_agg(who, ',') FROM alice_t WHERE v = 'under the old key'" | tr '|' ' ')"
check_eq "key restored: retry --all runs nothing a second time (the message handled before the change)" 1 \
    "$(q -c "SELECT count(*) FROM marker WHERE v = $handled")"

# --- Nothing ran that should not have --------------------------------------------------------------
marker
check_eq "no attacker wrote pwned" 0 "$(count pwned)"
check_eq "bob's message ran exactly once" 1 "$(count bob_t)"
check_eq "no role became superuser" "" "$(q -c "SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolsuper AND rolname <> 'postgres'")"
check "the daemon never was handed a forged copy (no message_rejected in its log)" \
    bash -c "! grep -q event=message_rejected '$TEST_DIR/applier.log'"
applier_stop
done_testing
