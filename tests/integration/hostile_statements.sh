#!/usr/bin/env bash
# Hostile statements, end to end through the applier, from a non-superuser caller "mallory":
# a statement that loops forever (statement timeout, dead letter, others not held up), one returning a
# million rows (memory recorded), one waiting on a lock its caller still holds, nesting (a
# statement that calls atx_log), multi-statement strings, an empty string, a role dropped / a
# table dropped between emit and apply, a database renamed between emit and apply.
. "$(dirname "$0")/../lib/testlib.sh"

reliability() { echo "# reliability: $1 | $2 | $3 | $4"; }
atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE mallory LOGIN;
CREATE TABLE locked_t(v text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE nest(v int);
CREATE TABLE multi(v int);
-- busy: how many other apply sessions were running a statement when the marker was applied.
CREATE FUNCTION apply_sessions_busy() RETURNS int LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
$$ SELECT count(*)::int FROM pg_stat_activity
    WHERE application_name LIKE 'atx-applier apply%' AND state = 'active' AND pid <> pg_backend_pid() $$;
CREATE TABLE marker(v int, busy int DEFAULT apply_sessions_busy());
CREATE TABLE dropme(v int);
GRANT INSERT, SELECT ON locked_t, nest, multi, marker, dropme TO mallory;
GRANT UPDATE ON locked_t TO mallory;   -- LOCK ... IN ACCESS EXCLUSIVE MODE needs more than INSERT
SQL
M() { PGUSER=mallory q "$@"; }
dl() { q -c "SELECT sqlstate || ' attempts=' || attempts FROM atx.dead_letter WHERE statement LIKE '%$1%'"; }
ARGS=(--statement-timeout-ms 2000 --max-attempts 3 --retry-base-ms 300 --retry-cap-ms 600)
applier_start "${ARGS[@]}"
wait_for_slot || not_ok "applier created the slot"
MARK=0
marker() { # emit a marker and wait until it is applied: everything before it was handled
    MARK=$((MARK + 1))
    M -c "SELECT atx_log('INSERT INTO marker VALUES (\$1)', $MARK)" >/dev/null
    wait_for "${1:-30}" bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM marker WHERE v = $MARK') = 1 ]"
}

# 1. A statement that loops forever: cancelled by the per-message timeout and dead-lettered at
# once (a timeout is not retried); other messages go on meanwhile.
t0=$SECONDS; ms0=$(date +%s%N)
M -c "SELECT atx_log('/* forever */ DO \$\$ BEGIN LOOP END LOOP; END \$\$')" >/dev/null
marker 60; tm=$((($(date +%s%N) - ms0) / 1000000))
wait_for 30 bash -c "psql -qAtX -c \"SELECT 1 FROM atx.dead_letter WHERE statement LIKE '%forever%'\" | grep -q 1"
t=$((SECONDS - t0))
got=$(dl forever)
note "infinite loop: dead letter '$got' after ${t} s (statement timeout 2 s); a later message applied after ${tm} ms"
check_eq "infinite loop dead-lettered 57014 after one attempt" "57014 attempts=1" "$got"
# The marker's row says whether another apply session was still busy (the loop) when it landed.
before=$(q -c "SELECT busy > 0 FROM marker WHERE v = $MARK")
check_eq "... while a later message of another session was applied (${tm} ms after the loop's emit)" t "$before"
reliability "statement that loops forever" "DO \$\$ LOOP END LOOP \$\$ as mallory; --statement-timeout-ms 2000" \
    "dead letter: $got after ${t} s; a later message applied after ${tm} ms, while the loop still ran: $before" "$([ "$got" = "57014 attempts=1" ] && [ "$before" = t ] && echo pass || echo FAIL)"

# 2. A million rows.
hwm() { sed -n 's/^VmHWM:\s*//p' "/proc/$1/status" 2>/dev/null | tr -d ' '; }
a0=$(hwm "$APPLIER_PID")
t0=$SECONDS
M -c "SELECT atx_log('/* million */ SELECT generate_series(1, 1000000)')" >/dev/null
marker 120; t=$((SECONDS - t0))
a1=$(hwm "$APPLIER_PID")
got=$(dl million); got=${got:-applied}
note "million rows: $got in ${t} s; applier VmHWM $a0 -> $a1 (the apply backend's memory: tests/integration/isolation.sh)"
check "million-row SELECT applied (not dead-lettered)" test "$got" = applied
check "applier memory not blown up by the result (VmHWM < 200 MB)" test "${a1%kB}" -lt 204800
reliability "statement returning a million rows" "atx_log('SELECT generate_series(1, 1000000)') as mallory" \
    "$got in ${t} s; applier VmHWM $a0 -> $a1" \
    "$([ "$got" = applied ] && [ "${a1%kB}" -lt 204800 ] && echo pass || echo FAIL)"

# 3. A lock the caller still holds: waits until the caller ends, then runs.
M -c "BEGIN" -c "LOCK TABLE locked_t IN ACCESS EXCLUSIVE MODE" \
  -c "SELECT atx_log('INSERT INTO locked_t(v) VALUES (\$1)', 'autonomous'::text)" \
  -c "SELECT pg_sleep(1.5)" -c "INSERT INTO locked_t(v) VALUES ('caller')" -c "COMMIT" >/dev/null
marker 30
order=$(q -c "SELECT string_agg(v, ',' ORDER BY at) FROM locked_t")
check_eq "lock held by the caller: autonomous statement ran after the caller committed" "caller,autonomous" "$order"
reliability "statement needs a lock its caller holds" "mallory: BEGIN; LOCK locked_t; atx_log(INSERT INTO locked_t); sleep 1.5 s; INSERT; COMMIT" \
    "rows in commit order: $order; dead letters: $(dl locked_t | wc -w)" "$([ "$order" = caller,autonomous ] && echo pass || echo FAIL)"

# 4. Nesting: an autonomous statement that calls atx_log.
M -c "SELECT atx_log(\$a\$/* nested */ SELECT atx_log('INSERT INTO nest VALUES (2)'); INSERT INTO nest VALUES (1)\$a\$)" >/dev/null
marker 30; marker 30
nest=$(q -c "SELECT string_agg(v::text, ',' ORDER BY v) FROM nest")
got=$(dl nested)
note "nesting: nest rows '$nest', dead letter '${got:-none}'"
check_eq "nested atx_log: both rows land" "1,2" "$nest"
reliability "autonomous statement calls atx_log (nesting)" "atx_log('SELECT atx_log(''INSERT 2''); INSERT 1')" \
    "nest rows: ${nest:-none}; dead letter: ${got:-none}" "$([ "$nest" = 1,2 ] && echo pass || echo FAIL)"

# 5. Multi-statement strings.
M -c "SELECT atx_log('/* multi-a */ INSERT INTO multi VALUES (1); INSERT INTO multi VALUES (2)')" >/dev/null
M -c "SELECT atx_log('/* multi-b */ INSERT INTO multi VALUES (\$1); INSERT INTO multi VALUES (\$1 + 1)', 10)" >/dev/null
M -c "SELECT atx_log('/* multi-c */ INSERT INTO multi VALUES (100); SELECT 1/0')" >/dev/null
marker 30
multi=$(q -c "SELECT string_agg(v::text, ',' ORDER BY v) FROM multi")
note "multi-statement: rows '$multi'; multi-b dead letter '$(dl multi-b)'; multi-c dead letter '$(dl multi-c)'"
check "two statements without parameters: both rows" bash -c "echo ',$multi,' | grep -q ',1,2,'"
check_eq "a failing second statement takes the first with it (atomic): 100 absent, 22012" "22012 attempts=1" "$(dl multi-c)"
check "multi-statement with parameters: both rows or a clear dead letter" \
    bash -c "echo ',$multi,' | grep -q ',10,11,' || [ -n \"\$(psql -qAtX -c \"SELECT 1 FROM atx.dead_letter WHERE statement LIKE '%multi-b%'\")\" ]"
reliability "multi-statement strings" "'INSERT 1; INSERT 2'; with \$1 in both; 'INSERT 100; SELECT 1/0'" \
    "rows: $multi; with parameters: $(dl multi-b | grep . || echo applied); failing second: $(dl multi-c)" \
    "$(echo ",$multi," | grep -q ',1,2,' && [ "$(dl multi-c)" = "22012 attempts=1" ] && echo pass || echo FAIL)"

# 6. Empty strings: refused at emit.
e1=$(PGUSER=mallory psql -qAtX -v VERBOSITY=verbose -c "SELECT atx_log('')" 2>&1 | sed -n 's/^ERROR:  \([0-9A-Z]*\):.*/\1/p')
e2=$(PGUSER=mallory psql -qAtX -v VERBOSITY=verbose -c "SELECT atx_log(E'  \\n\\t ')" 2>&1 | sed -n 's/^ERROR:  \([0-9A-Z]*\):.*/\1/p')
e3=$(PGUSER=mallory psql -qAtX -v VERBOSITY=verbose -c "SELECT atx_log(NULL)" 2>&1 | sed -n 's/^ERROR:  \([0-9A-Z]*\):.*/\1/p')
check_eq "empty / whitespace / NULL statement refused at emit" "22023 22023 22004" "$e1 $e2 $e3"
reliability "empty statement" "atx_log(''), atx_log(whitespace), atx_log(NULL)" "refused at emit: $e1 $e2 $e3" \
    "$([ "$e1 $e2 $e3" = "22023 22023 22004" ] && echo pass || echo FAIL)"

# 7. Role dropped and table dropped between emit and apply.
applier_stop
q -c "CREATE ROLE doomed LOGIN" -c "GRANT INSERT ON marker TO doomed" >/dev/null
PGUSER=doomed q -c "SELECT atx_log('/* doomed */ INSERT INTO marker VALUES (-1)')" >/dev/null
q -c "REVOKE INSERT ON marker FROM doomed" -c "DROP ROLE doomed" >/dev/null
M -c "SELECT atx_log('/* dropme */ INSERT INTO dropme VALUES (1)')" >/dev/null
q -c "DROP TABLE dropme" >/dev/null
applier_start "${ARGS[@]}"
marker 30
check_eq "role dropped between emit and apply: 42704 dead letter" "42704 attempts=1" "$(dl doomed)"
check_eq "... and not run as anyone else" 0 "$(q -c 'SELECT count(*) FROM marker WHERE v = -1')"
check_eq "table dropped between emit and apply: 42P01 dead letter" "42P01 attempts=1" "$(dl dropme)"
reliability "caller role dropped between emit and apply" "applier stopped; role emits; DROP ROLE; applier started" \
    "dead letter: $(dl doomed); rows: $(q -c 'SELECT count(*) FROM marker WHERE v = -1')" "$([ "$(dl doomed)" = "42704 attempts=1" ] && echo pass || echo FAIL)"
reliability "target table dropped between emit and apply" "applier stopped; INSERT emitted; DROP TABLE; applier started" \
    "dead letter: $(dl dropme)" "$([ "$(dl dropme)" = "42P01 attempts=1" ] && echo pass || echo FAIL)"
applier_stop

# 8. Database renamed between emit and apply (the slot is named by oid).
q -c "CREATE DATABASE renameme" >/dev/null
PGDATABASE=renameme q -c "CREATE EXTENSION pg_atx" -c "CREATE TABLE r(v int)" -c "GRANT INSERT ON r TO mallory" >/dev/null
PGDATABASE=renameme applier_start "${ARGS[@]}"
wait_for 30 bash -c "[ -n \"\$(PGDATABASE=renameme psql -qAtX -c \"SELECT 1 FROM pg_replication_slots WHERE plugin = 'pg_atx' AND database = 'renameme'\")\" ]"
PGDATABASE=renameme M -c "SELECT atx_log('INSERT INTO r VALUES (1)')" >/dev/null
wait_for 20 bash -c "[ \$(PGDATABASE=renameme psql -qAtX -c 'SELECT count(*) FROM r') = 1 ]"
applier_stop
slot_before=$(q -c "SELECT slot_name FROM pg_replication_slots WHERE database = 'renameme'")
PGDATABASE=renameme M -c "SELECT atx_log('INSERT INTO r VALUES (2)')" -c "BEGIN" -c "SELECT atx_log('INSERT INTO r VALUES (3)')" -c "ROLLBACK" >/dev/null
q -c "ALTER DATABASE renameme RENAME TO renamed" >/dev/null
PGDATABASE=renamed applier_start "${ARGS[@]}"
wait_for 30 bash -c "[ \$(PGDATABASE=renamed psql -qAtX -c 'SELECT count(*) FROM r') -ge 3 ]"
PGDATABASE=renamed wait_settled 30 || note "the applier did not settle"
rows=$(PGDATABASE=renamed q -c "SELECT string_agg(v::text, ',' ORDER BY v) FROM r")
slot_after=$(q -c "SELECT string_agg(slot_name, ',') FROM pg_replication_slots WHERE database = 'renamed'")
check_eq "renamed database: backlog applied once under the new name" "1,2,3" "$rows"
check_eq "same slot (by oid), no new one" "$slot_before" "$slot_after"
reliability "database renamed between emit and apply" "applier stopped; 2 messages emitted; ALTER DATABASE renameme RENAME TO renamed; applier started with --dbname renamed" \
    "rows $rows; slot $slot_before -> $slot_after" "$([ "$rows" = 1,2,3 ] && [ "$slot_before" = "$slot_after" ] && echo pass || echo FAIL)"
applier_stop
done_testing
