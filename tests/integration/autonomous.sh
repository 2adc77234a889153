#!/usr/bin/env bash
# Autonomous routines end to end (atx.make_autonomous; docs/usage.md "Autonomous routines"):
# every return form through the applier, the body's errors in the caller, the caller's
# uncommitted rows invisible, a deadlock with the caller (40P01, the work discarded), nesting to
# 16 (the 17th refused), a procedure that commits inside, CREATE OR REPLACE, pg_dump and
# pg_restore into a fresh database (still autonomous there), and the attacker's cases: another
# role's routine (42501), a SECURITY DEFINER routine gains nothing, a planted search_path
# redirects nothing.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster "shared_preload_libraries = 'pg_atx'" || { not_ok "cluster start"; done_testing; }
export PGOPTIONS="-c atx.exec_timeout=20s"
q <<'SQL' >/dev/null
CREATE TABLE log(id serial PRIMARY KEY, msg text, who name DEFAULT current_user);
CREATE TYPE pair AS (a int, b text);
CREATE FUNCTION f_scalar(m text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE i int; BEGIN INSERT INTO log(msg) VALUES (m) RETURNING id INTO i; RETURN i; END $$;
CREATE FUNCTION f_comp(x int) RETURNS pair LANGUAGE sql AS $$ SELECT x, 'v' || x $$;
CREATE FUNCTION f_setof(n int) RETURNS SETOF int LANGUAGE sql AS $$ SELECT generate_series(1, n) $$;
CREATE FUNCTION f_setcomp(n int) RETURNS SETOF pair LANGUAGE sql AS $$ SELECT g, 'r' || g FROM generate_series(1, n) g $$;
CREATE FUNCTION f_table(n int) RETURNS TABLE(i int, t timestamptz, arr text[], j jsonb)
LANGUAGE sql AS $$ SELECT g, '2024-01-02 03:04:05.123456+00'::timestamptz, ARRAY['x', NULL, 'z'], '{"k": [1, 2.5]}'::jsonb
                     FROM generate_series(1, n) g $$;
CREATE FUNCTION f_out(x int, OUT doubled int, INOUT y text) LANGUAGE plpgsql AS $$ BEGIN doubled := 2 * x; y := y || '!'; END $$;
CREATE FUNCTION f_void(m text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN INSERT INTO log(msg) VALUES (m); END $$;
CREATE FUNCTION f_null() RETURNS numeric LANGUAGE sql AS $$ SELECT NULL::numeric $$;
CREATE FUNCTION f_exact(x float8, y numeric, b bytea, d date, iv interval) RETURNS TABLE(x float8, y numeric, b bytea, d date, iv interval)
LANGUAGE sql AS $$ SELECT x, y, b, d, iv $$;
CREATE FUNCTION f_var(VARIADIC xs int[]) RETURNS int LANGUAGE sql AS $$ SELECT sum(x)::int FROM unnest(xs) x $$;
CREATE FUNCTION f_poly(x anyelement) RETURNS anyelement LANGUAGE sql AS $$ SELECT x $$;
CREATE PROCEDURE p_inout(INOUT a int, IN b int, OUT c text) LANGUAGE plpgsql AS $$ BEGIN a := a + b; c := 'c' || a; END $$;
CREATE FUNCTION f_err(x int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'bad %', x USING ERRCODE = '22023', DETAIL = 'the detail', HINT = 'the hint'; END $$;
CREATE FUNCTION f_dup(x int) RETURNS int LANGUAGE sql AS $$ INSERT INTO log(id, msg) VALUES (x, 'dup') RETURNING id $$;
CREATE FUNCTION f_count(m text) RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM log WHERE msg = m $$;
CREATE FUNCTION f_touch(x int) RETURNS int LANGUAGE sql AS $$ UPDATE log SET msg = msg WHERE id = x RETURNING id $$;
CREATE PROCEDURE p_commit_out(INOUT n int) LANGUAGE plpgsql AS $$ BEGIN n := n + 1; COMMIT; END $$;
CREATE PROCEDURE p_commit(m text) LANGUAGE plpgsql AS $$
BEGIN INSERT INTO log(msg) VALUES (m || ' 1'); COMMIT; INSERT INTO log(msg) VALUES (m || ' 2'); ROLLBACK; INSERT INTO log(msg) VALUES (m || ' 3'); END $$;
CREATE FUNCTION nest(depth int, target int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    IF depth >= target THEN RETURN (atx.current_message()).depth; END IF;  -- depth: this call's nesting
    RETURN nest(depth + 1, target);
END $$;
-- Runs sql and returns 'ok' or 'SQLSTATE|message|detail|hint'.
CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; msg text; det text; hin text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL, hin = PG_EXCEPTION_HINT;
    RETURN st || '|' || msg || '|' || det || '|' || hin;
END $$;
GRANT EXECUTE ON FUNCTION try(text) TO PUBLIC;
SELECT atx.make_autonomous(p.oid) FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace AND p.proname IN ('f_scalar', 'f_comp', 'f_setof', 'f_setcomp',
       'f_table', 'f_out', 'f_void', 'f_null', 'f_exact', 'f_var', 'f_poly', 'p_inout', 'f_err', 'f_dup', 'f_count',
       'f_touch', 'p_commit', 'p_commit_out', 'nest');
SQL
applier_start
wait_for_slot || not_ok "applier created the slot"
check_eq "19 routines are autonomous" 19 "$(q -c "SELECT count(*) FROM atx.autonomous_routines WHERE body IS NOT NULL")"

# 1. Every return form, each call committed on its own: the caller rolls back, the rows stay.
out=$(q -c "BEGIN" -c "SELECT f_scalar('scalar')" -c "SELECT f_void('void')" -c "ROLLBACK")
check_eq "scalar: the new id inside a transaction that rolls back" 1 "$out"
check_eq "... and both rows stay after the caller's ROLLBACK, written as the caller" "scalar postgres|void postgres" \
    "$(q -c "SELECT string_agg(msg || ' ' || who, '|' ORDER BY id) FROM log")"
check_eq "composite" "(3,v3)|v4" "$(q -c "SELECT f_comp(3), (f_comp(4)).b")"
check_eq "SETOF scalar, in FROM and in the select list" "1,2,3|2" \
    "$(q -c "SELECT string_agg(x::text, ',') FROM f_setof(3) x" -c "SELECT count(*) FROM (SELECT f_setof(2)) s" | paste -sd'|')"
check_eq "SETOF composite" "1 r1,2 r2" "$(q -c "SELECT string_agg(a || ' ' || b, ',') FROM f_setcomp(2)")"
check_eq "RETURNS TABLE: timestamps, arrays with NULLs, jsonb exact" \
    '2|2024-01-02 03:04:05.123456+00|{x,NULL,z}|{"k": [1, 2.5]}' \
    "$(q -c "SET TimeZone = UTC" -c "SELECT count(*), min(t), min(arr::text), min(j::text) FROM f_table(2)" | tail -1)"
check_eq "OUT and INOUT parameters of a function" "42|hi!" "$(q -c "SELECT * FROM f_out(21, 'hi')")"
check_eq "a NULL result" t "$(q -c "SELECT f_null() IS NULL")"
check_eq "values exact whatever the caller's settings (float8, numeric scale, bytea, DMY dates, intervals)" \
    "0.1|1.50|\\x00ff|02/01/2024|@ 1 day 2 hours" \
    "$(q -c "SET DateStyle = 'SQL, DMY'" -c "SET IntervalStyle = postgres_verbose" -c "SET extra_float_digits = 0" \
         -c "SELECT * FROM f_exact(0.1, 1.50, '\\x00ff', '2024-01-02', '1 day 2 hours')" | tail -1)"
check_eq "VARIADIC, spread and as an array" "6|9" "$(q -c "SELECT f_var(1, 2, 3), f_var(VARIADIC ARRAY[4, 5])")"
check_eq "polymorphic" "7|x" "$(q -c "SELECT f_poly(7), f_poly('x'::text)")"
check_eq "procedure: INOUT and OUT from CALL" "3|c3" "$(q -c "CALL p_inout(1, 2, NULL)")"
check_eq "procedure: INOUT and OUT into PL/pgSQL variables" "a=15 c=c15" \
    "$(q -c "DO \$\$ DECLARE a int := 10; c text; BEGIN CALL p_inout(a, 5, c); RAISE NOTICE 'a=% c=%', a, c; END \$\$" 2>&1 | sed -n 's/.*NOTICE:  //p')"
check_eq "each call is a message of the applier (atx.current_message inside the body)" t \
    "$(q -c "CREATE FUNCTION f_msg() RETURNS uuid LANGUAGE sql AS 'SELECT (atx.current_message()).id'" \
         -c "SELECT atx.make_autonomous('f_msg()') IS NOT NULL" -c "SELECT f_msg() IS NOT NULL AND f_msg() <> f_msg()" | tail -1)"

# 2. Errors come back with the body's SQLSTATE, message, detail and hint, catchable.
check_eq "the body's error, as it raised it" "22023|bad 5|the detail|the hint" "$(q -c "SELECT try('SELECT f_err(5)')")"
check_eq "caught by EXCEPTION WHEN, the caller goes on" "caught 22023" \
    "$(q -c "DO \$\$ BEGIN PERFORM f_err(6); EXCEPTION WHEN invalid_parameter_value THEN RAISE NOTICE 'caught %', SQLSTATE; END \$\$" 2>&1 | sed -n 's/.*NOTICE:  //p')"
check_eq "a server error of the body (unique violation) with its detail" \
    '23505|duplicate key value violates unique constraint "log_pkey"|Key (id)=(1) already exists.|' \
    "$(q -c "SELECT try('SELECT f_dup(1)')")"
out=$(q -c "BEGIN" -c "INSERT INTO log(msg) VALUES ('caller')" -c "SAVEPOINT s" -c "\\set ON_ERROR_STOP 0" \
        -c "SELECT f_err(1)" -c "ROLLBACK TO s" -c "SELECT count(*) FROM log WHERE msg = 'caller'" -c "COMMIT" 2>&1)
check "in a savepoint: the error names the routine and the message in its context" \
    grep -q "CONTEXT:  pg_atx message .* (dead-lettered)" <<<"$out"
check_eq "... and the caller's transaction goes on and commits" 1 "$(q -c "SELECT count(*) FROM log WHERE msg = 'caller'")"

# 3. The body does not see the caller's uncommitted rows.
check_eq "the caller's uncommitted row is invisible to the body" "1|0" \
    "$(q -c "BEGIN" -c "INSERT INTO log(msg) VALUES ('uncommitted')" -c "SELECT count(*) FROM log WHERE msg = 'uncommitted'" \
         -c "SELECT f_count('uncommitted')" -c "ROLLBACK" | paste -sd'|')"

# 4. Deadlock with the caller: 40P01 at once, and the autonomous work never happens.
out=$(q -c "BEGIN" -c "SELECT id FROM log WHERE id = 1 FOR UPDATE" -c "SELECT try('SELECT f_touch(1)')" -c "ROLLBACK" | tail -1)
check "deadlock with the caller: 40P01" grep -q "^40P01|deadlock detected" <<<"$out"
sleep 1
check_eq "... and the autonomous work was cancelled (dead-lettered 57014), not applied later" 1 \
    "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE sqlstate = '57014' AND statement LIKE '%f_touch%'")"

# 5. Nesting: an autonomous routine calling itself. The client's call is depth 0; 16 nested
# levels below it work (as EDB allows), a 17th is refused.
check_eq "16 nested levels below the client's call" 16 "$(q -c "SELECT nest(0, 16)")"
check_eq "a 17th nested level is refused with 54001" 54001 "$(q -c "SELECT split_part(try('SELECT nest(0, 17)'), '|', 1)")"

# 6. A procedure with COMMIT and ROLLBACK inside: runs as a top-level CALL of its own.
q -c "BEGIN" -c "CALL p_commit('txn')" -c "ROLLBACK" >/dev/null 2>&1
check_eq "procedure with COMMIT/ROLLBACK inside, called in a transaction that rolls back: its 1 and 3 stay" \
    "txn 1,txn 3" "$(q -c "SELECT string_agg(msg, ',' ORDER BY id) FROM log WHERE msg LIKE 'txn %'")"

out=$(q -c "CALL p_commit_out(1)" -c "SELECT 'after'" 2>&1)
check_eq "a procedure that commits hands back its INOUT value (the non-atomic run returns its CALL's row)" \
    "2|after" "$(paste -sd'|' <<<"$out")"

# 7. CREATE OR REPLACE keeps it autonomous, with the new body.
q -c "CREATE OR REPLACE FUNCTION f_scalar(m text) RETURNS int LANGUAGE sql AS \$\$ INSERT INTO log(msg) VALUES (upper(m)) RETURNING -id \$\$" >/dev/null 2>&1
q -c "BEGIN" -c "SELECT f_scalar('replaced')" -c "ROLLBACK" >/dev/null
check_eq "CREATE OR REPLACE: still autonomous, running the new body" "1|sql" \
    "$(q -c "SELECT count(*) FROM log WHERE msg = 'REPLACED'" -c "SELECT body_language FROM atx.autonomous_routines WHERE routine = 'f_scalar(text)'::regprocedure" | paste -sd'|')"

# 8. The attacker's cases.
q <<'SQL' >/dev/null 2>&1
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE SCHEMA app AUTHORIZATION alice;
CREATE SCHEMA bobs AUTHORIZATION bob;
GRANT USAGE ON SCHEMA app TO bob;
SET ROLE alice;
CREATE TABLE app.audit(id serial, what text, by_user name DEFAULT current_user, marker text);
CREATE FUNCTION app.mark() RETURNS text LANGUAGE sql AS $$ SELECT 'app' $$;
-- A SECURITY DEFINER audit routine with a pinned search_path, as PostgreSQL advises.
CREATE FUNCTION app.record(what text) RETURNS name SECURITY DEFINER SET search_path = app, pg_temp
LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit(what, marker) VALUES (what, mark()); RETURN current_user; END $$;
-- An invoker routine writing alice's table.
CREATE FUNCTION app.direct(what text) RETURNS void LANGUAGE sql AS $$ INSERT INTO app.audit(what) VALUES (what) $$;
CREATE FUNCTION app.mine() RETURNS int LANGUAGE sql AS 'SELECT 1';
GRANT EXECUTE ON FUNCTION app.record(text), app.direct(text) TO bob;
SELECT atx.make_autonomous('app.record(text)'), atx.make_autonomous('app.direct(text)');
RESET ROLE;
SET ROLE bob;
CREATE FUNCTION bobs.mark() RETURNS text LANGUAGE sql AS $$ SELECT 'planted' $$;
CREATE FUNCTION bobs."app.record"(what text) RETURNS name LANGUAGE sql AS $$ SELECT 'planted'::name $$;
CREATE FUNCTION bobs._autonomous_encode(anyelement) RETURNS bytea LANGUAGE sql AS $$ SELECT '\x74706c616e746564'::bytea $$;
SQL
check_eq "another role's routine cannot be made autonomous (42501)" 42501 \
    "$(q -c "SET ROLE bob" -c "SELECT split_part(try('SELECT atx.make_autonomous(''app.mine()'')'), '|', 1)" | tail -1)"
check_eq "... nor made ordinary (42501)" 42501 \
    "$(q -c "SET ROLE bob" -c "SELECT split_part(try('SELECT atx.make_ordinary(''app.record(text)'')'), '|', 1)" | tail -1)"
check_eq "SECURITY DEFINER: its body runs as its owner, as before" alice \
    "$(q -c "SET ROLE bob" -c "SELECT app.record('by bob')" | tail -1)"
check_eq "... and bob cannot run the owner's body outside the autonomous transaction (42501)" 42501 \
    "$(q -c "SET ROLE bob" -c "SELECT split_part(try('SELECT atx_autonomous.\"app.record\"(''sneak'')'), '|', 1)" | tail -1)"
check_eq "an invoker routine runs as the caller: bob cannot write alice's table through it (42501)" 42501 \
    "$(q -c "SET ROLE bob" -c "SELECT split_part(try('SELECT app.direct(''sneak'')'), '|', 1)" | tail -1)"
check_eq "a search_path planted by the caller (his mark(), a look-alike body and encoder) redirects nothing" alice \
    "$(q -c "SET ROLE bob" -c "SET search_path = bobs, app, public" -c "SELECT app.record('by bob 2')" | tail -1)"
check_eq "... the body ran app's mark() as alice" "app alice" \
    "$(q -c "SELECT marker || ' ' || by_user FROM app.audit WHERE what = 'by bob 2'")"
check_eq "nothing bob tried left a row" "by bob|by bob 2" "$(q -c "SELECT string_agg(what, '|' ORDER BY id) FROM app.audit")"

# 9. pg_dump and pg_restore into a fresh database: still autonomous there.
pg_bindir=$(dirname "$(command -v psql)")
"$pg_bindir/pg_dump" -Fc -f "$TEST_DIR/dump.pgc" postgres 2>"$TEST_DIR/dump.err"
check "pg_dump" test -s "$TEST_DIR/dump.pgc"
q -c "CREATE DATABASE restored" >/dev/null
"$pg_bindir/pg_restore" -d restored "$TEST_DIR/dump.pgc" 2>"$TEST_DIR/restore.err"
check_eq "pg_restore: no errors" "" "$(grep -v '^$' "$TEST_DIR/restore.err" | head -3)"
check_eq "restored: every routine autonomous, each with its body" "22|22" \
    "$(PGDATABASE=restored q -c "SELECT count(*), count(body) FROM atx.autonomous_routines")"
check_eq "restored: the bodies are linked to their routines again (DROP of a routine drops its body)" 22 \
    "$(PGDATABASE=restored q -c "SELECT count(*) FROM pg_depend d JOIN atx.autonomous_routines r ON d.objid = r.body AND d.refobjid = r.routine AND d.deptype = 'a'")"
restored_applier_log=$TEST_DIR/applier_restored.log
(trap - EXIT; exec "$APPLIER_BIN" --conninfo "$(conninfo)" --dbname restored --state-dir "$TEST_DIR/state_restored" \
    --http-listen 127.0.0.1:0 >>"$restored_applier_log" 2>&1) &
restored_applier=$!
wait_for 30 bash -c "PGDATABASE=restored psql -qAtX -c \"SELECT 1 FROM pg_replication_slots WHERE slot_name = atx.slot_name() AND active\" | grep -q 1" ||
    not_ok "an applier for the restored database"
PGDATABASE=restored q -c "BEGIN" -c "SELECT f_void('after restore')" -c "ROLLBACK" >/dev/null
check_eq "restored: a call still commits on its own (the caller rolled back)" 1 \
    "$(PGDATABASE=restored q -c "SELECT count(*) FROM log WHERE msg = 'after restore'")"
check_eq "restored: the SECURITY DEFINER body is still the owner's alone" "{alice=X/alice}" \
    "$(PGDATABASE=restored q -c "SELECT proacl FROM pg_proc WHERE oid = atx._autonomous_body('app.record(text)')")"
kill -TERM "$restored_applier" 2>/dev/null
wait "$restored_applier" 2>/dev/null

if [ "$T_FAILED" != 0 ]; then
    note "applier log:"
    tail -n 20 "$TEST_DIR/applier.log" | sed 's/^/#   /'
fi
applier_stop
done_testing
