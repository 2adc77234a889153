#!/usr/bin/env bash
# Hostile input, end to end through the applier (a superuser applier: the worst case), with a
# non-superuser caller role "mallory":
#  - forged pg_logical_emit_message(false, 'pg_atx', <copy of a real payload>) (and a flipped
#    byte): never in the stream, never executed;
#  - privilege escalation from inside an autonomous statement (RESET ROLE, SET ROLE, SET SESSION
#    AUTHORIZATION, set_config('role'), COPY TO PROGRAM, ALTER SYSTEM, CREATE FUNCTION in a schema
#    the caller cannot use, SECURITY DEFINER functions owned by the caller): each dead-lettered
#    with its SQLSTATE, compared with what the same statement does in mallory's own session, and
#    nothing executed (each escalation is followed by an INSERT only a superuser could do).
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
PWNED=$TEST_DIR/pwned
q <<SQL >/dev/null
CREATE ROLE mallory LOGIN;
CREATE TABLE target(tag text);
GRANT INSERT, SELECT ON target TO mallory;
CREATE TABLE secret(tag text);            -- only the applier (superuser) could write it
CREATE SCHEMA locked;                     -- mallory has no USAGE/CREATE here
CREATE SCHEMA mallory_s AUTHORIZATION mallory;
CREATE TABLE marker(v int); GRANT INSERT ON marker TO mallory;
SELECT pg_create_logical_replication_slot('copyslot', 'pg_atx');
SQL
M() { PGUSER=mallory q "$@"; }
# reliability FAULT DONE COUNTED RESULT: a row of docs/reliability.md (tools/reliability_report.sh).
reliability() { echo "# reliability: $1 | $2 | $3 | $4"; }

# A real payload, emitted by mallory and then skipped in the applier's slot (advanced past it by
# hand): only copyslot still has it. (Frame: 'M', 8 bytes of start LSN, the payload.)
q -c "SELECT atx.ensure_slot()" >/dev/null
M -c "SELECT atx_log('INSERT INTO target VALUES (\$1)', 'copied payload'::text)" >/dev/null
q -c "SELECT pg_replication_slot_advance(atx.slot_name(), pg_current_wal_insert_lsn())" >/dev/null
q -c "CREATE TABLE stolen AS SELECT substr(data, 10) AS p FROM pg_logical_slot_get_binary_changes('copyslot', NULL, NULL, 'format', 'binary'); GRANT SELECT ON stolen TO mallory" >/dev/null
check_eq "got a copy of the real payload" 1 "$(q -c 'SELECT count(*) FROM stolen')"

applier_start --max-attempts 2 --retry-base-ms 50 --statement-timeout-ms 5000
wait_for_slot || not_ok "applier created the slot"

# Forgeries by mallory (non-superuser), non-transactional and transactional, exact copy and a flipped byte.
for sql in \
    "SELECT pg_logical_emit_message(false, 'pg_atx', p) FROM stolen" \
    "SELECT pg_logical_emit_message(true, 'pg_atx', p) FROM stolen" \
    "SELECT pg_logical_emit_message(false, 'pg_atx', set_byte(p, 40, get_byte(p, 40) # 1)) FROM stolen"; do
    out=$(M -c "$sql" 2>&1)
    check "mallory may call pg_logical_emit_message (the guard is not EXECUTE): $(echo "$sql" | cut -c8-60)" \
        bash -c "echo '$out' | grep -q '/'"
done
# Escalation attempts. Each: <attempt>; INSERT INTO secret (succeeds only with the applier's identity).
declare -A STMT
STMT[reset_role]="RESET ROLE; INSERT INTO secret VALUES ('reset_role')"
STMT[set_role]="SET ROLE postgres; INSERT INTO secret VALUES ('set_role')"
STMT[set_role_self]="SET ROLE mallory; INSERT INTO target VALUES ('set_role_self')"
STMT[set_session_auth]="SET SESSION AUTHORIZATION postgres; INSERT INTO secret VALUES ('set_session_auth')"
STMT[set_config_role]="SELECT set_config('role', 'postgres', false); INSERT INTO secret VALUES ('set_config_role')"
STMT[copy_to_program]="COPY (SELECT 1) TO PROGRAM 'touch $PWNED'"
STMT[alter_system]="ALTER SYSTEM SET work_mem = '77MB'"
STMT[create_func_locked]="CREATE FUNCTION locked.f() RETURNS int LANGUAGE sql AS 'SELECT 1'"
STMT[secdef_insert]="SELECT mallory_s.sd_insert()"
STMT[secdef_set_config]="SELECT mallory_s.sd_set_config()"
STMT[alter_role_superuser]="ALTER ROLE mallory SUPERUSER"
M <<'SQL' >/dev/null
CREATE FUNCTION mallory_s.sd_insert() RETURNS void SECURITY DEFINER LANGUAGE sql
AS $$ INSERT INTO secret VALUES ('secdef_insert') $$;
CREATE FUNCTION mallory_s.sd_set_config() RETURNS void SECURITY DEFINER LANGUAGE plpgsql
AS $$ BEGIN PERFORM set_config('role', 'postgres', false); INSERT INTO secret VALUES ('secdef_set_config'); END $$;
SQL
# What each does in mallory's own session (rolled back).
own_state() { # own_state SQL -> SQLSTATE or "ok"
    local o
    o=$(PGUSER=mallory psql -qAtX -v VERBOSITY=verbose -c "BEGIN" -c "$1" -c "ROLLBACK" 2>&1 >/dev/null |
        sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p' | head -n 1)
    echo "${o:-ok}"
}
declare -A OWN
for k in "${!STMT[@]}"; do
    OWN[$k]=$(own_state "${STMT[$k]}")   # in a transaction block, as the autonomous statement runs
    # Not validated at the call: these must reach the apply side (validation refuses some of them
    # already; that is tested below).
    M -c "SET atx.validate = off" -c "SELECT atx_log(\$a\$/* esc:$k */ ${STMT[$k]}\$a\$)" >/dev/null || not_ok "emit $k"
done
M -c "SELECT atx_log('INSERT INTO marker VALUES (1)')" >/dev/null
wait_for 30 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM marker') = 1 ]" || not_ok "marker applied"
wait_settled 30 || note "the applier did not settle"   # whatever it would run of the WAL so far, it ran

check_eq "forged copies never executed (target has no 'copied payload')" 0 \
    "$(q -c "SELECT count(*) FROM target WHERE tag = 'copied payload'")"
check_eq "forgeries not in the stream (copyslot sees only atx_log messages: 12)" 12 \
    "$(q -c "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('copyslot', NULL, NULL, 'format', 'binary')")"
check "applier never saw a forgery (no undecodable/28000 in its log)" bash -c "! grep -qE '28000|undecodable' '$TEST_DIR/applier.log'"
reliability "forged message (pg_logical_emit_message by a non-superuser)" \
    "mallory re-emitted a copy of a real payload with prefix pg_atx (non-transactional, transactional, one byte flipped)" \
    "rows of the copied statement: $(q -c "SELECT count(*) FROM target WHERE tag = 'copied payload'"); forged records in the stream: 0 (origin filter)" \
    "$([ "$(q -c "SELECT count(*) FROM target WHERE tag = 'copied payload'")" = 0 ] && echo pass || echo FAIL)"

for k in $(echo "${!STMT[@]}" | tr ' ' '\n' | sort); do
    got=$(q -c "SELECT sqlstate FROM atx.dead_letter WHERE statement LIKE '/* esc:$k */%'")
    got=${got:-applied}
    note "$k: autonomous=$got own-session=${OWN[$k]} :: ${STMT[$k]}"
    case $k in
    set_role_self) # harmless in both; the SRO refuses even that
        check "$k: refused (42501) or harmless" test "$got" = 42501 -o "$got" = applied ;;
    reset_role)    # a no-op in the own session; refused inside the security-restricted operation
        check_eq "$k: dead-lettered 42501" 42501 "$got" ;;
    alter_system)  # cannot run in a transaction block: runs as mallory's own top-level statement
        check_eq "$k: dead-lettered 42501 (as in mallory's own session outside a transaction block)" 42501 "$got" ;;
    *)
        check_eq "$k: dead-lettered with the own session's SQLSTATE" "${OWN[$k]}" "$got"
        check "$k: failed (not applied)" test "$got" != applied ;;
    esac
    reliability "escalation: $k" "mallory: atx_log('${STMT[$k]//|//}')" \
        "dead letter SQLSTATE $got; own session ${OWN[$k]}" \
        "$( { [ "$got" != applied ] || [ "$k" = set_role_self ]; } && echo pass || echo FAIL)"
done
out=$(M -v VERBOSITY=verbose -c "SELECT atx_log('SELECT set_config(''role'', ''postgres'', false); INSERT INTO secret VALUES (''validated'')')" 2>&1)
check "validated at the call: an INSERT mallory may not do is refused there (42501)" grep -q 42501 <<<"$out"
note "ALTER SYSTEM outside a transaction block in mallory's own session: $(PGUSER=mallory psql -qAtX -v VERBOSITY=verbose -c "ALTER SYSTEM SET work_mem = '77MB'" 2>&1 | head -n 1)"
check_eq "nothing written with the applier's identity (secret empty)" 0 "$(q -c 'SELECT count(*) FROM secret')"
check "COPY TO PROGRAM ran nothing" test ! -e "$PWNED"
check "ALTER SYSTEM wrote nothing" bash -c "! grep -q 77MB '$TEST_DIR/data/postgresql.auto.conf'"
check_eq "no function in schema locked" 0 "$(q -c "SELECT count(*) FROM pg_proc WHERE pronamespace = 'locked'::regnamespace")"
check_eq "mallory still not superuser" f "$(q -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'")"
check_eq "applier session identity unchanged (its next message still runs as the caller)" mallory \
    "$(M -c "SELECT atx_log('INSERT INTO target SELECT current_user')" >/dev/null; wait_for 10 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM target WHERE tag = 'mallory'\") = 1 ]"; q -c "SELECT tag FROM target WHERE tag = 'mallory'")"
q -c "SELECT pg_drop_replication_slot('copyslot')" >/dev/null
applier_stop
done_testing
