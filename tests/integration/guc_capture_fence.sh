#!/usr/bin/env bash
# The settings capture reads server internals it checks first (ext/guc_capture.cc): the parameter
# table's structs, and on 16+ the bytes of SerializeGUCState. On a server it was built for, the
# checks pass for settings from every source: a file (a source file and line in the serialized
# state), ALTER ROLE, ALTER ROLE IN DATABASE, connection options, SET, a superuser's SET, custom
# placeholders, a RESET one; and each arrives in the applied statement as the caller had it. (The
# refusal itself, XX000 before anything is written, is unit-tested on crafted bytes:
# tests/unit/test_guc_state.cc.)
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster "work_mem = '7MB'" "shared_preload_libraries = 'pg_atx'" || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE clerk LOGIN;
CREATE TABLE seen(source text, name text, value text);
GRANT INSERT ON seen TO clerk;
ALTER ROLE clerk SET statement_timeout = '45s';          -- denied: never carried
ALTER ROLE clerk SET DateStyle = 'SQL, DMY';              -- ALTER ROLE
ALTER ROLE clerk IN DATABASE postgres SET extra_float_digits = 2;   -- ALTER ROLE IN DATABASE
ALTER ROLE clerk SET app.region = 'north';                -- a placeholder from ALTER ROLE
ALTER ROLE clerk SET log_statement = 'ddl';               -- superuser-only, set by a superuser
SQL
applier_start
wait_for_slot || not_ok "applier streams"

capture() { # capture LABEL SETUP...: atx_log of every value the statement then sees
    local label=$1
    shift
    {
        printf '%s;\n' "$@"
        cat <<SQL
SELECT atx_log(\$q\$INSERT INTO seen SELECT '$label', n, current_setting(n, true)
  FROM unnest(ARRAY['DateStyle', 'extra_float_digits', 'app.region', 'app.tenant', 'lock_timeout',
                    'search_path', 'IntervalStyle', 'work_mem', 'log_statement', 'statement_timeout',
                    'application_name', 'app.gone', 'geqo_threshold', 'app.client']) n\$q\$);
SQL
    } | PGOPTIONS="-c geqo_threshold=9 -c app.client=c1" psql -qAtX -v ON_ERROR_STOP=1 -U clerk 2>&1
}
out=$(capture clerk "SET lock_timeout = '3s'" "SET search_path = public, pg_temp" "SET IntervalStyle = iso_8601" \
    "SET app.tenant = 't42'" "SET app.gone = 'x'" "RESET app.gone")
check "a non-superuser session with settings from every source emits (no XX000: $out)" test -n "$out" -a "${out#*ERROR}" = "$out"
out=$(printf '%s;\n' "SET log_statement = 'mod'" \
    "SELECT atx_log(\$q\$INSERT INTO seen SELECT 'superuser', 'log_statement', current_setting('log_statement')\$q\$)" |
    psql -qAtX -v ON_ERROR_STOP=1 2>&1)
check "a superuser's SET of a superuser-only parameter is carried (no XX000: $out)" test -n "$out" -a "${out#*ERROR}" = "$out"
wait_for 30 bash -c '[ "$(psql -qAtX -c "SELECT count(*) FROM seen")" -ge 15 ]'

seen() { q -c "SELECT coalesce(value, '<null>') FROM seen WHERE source = '$1' AND name = '$2'"; }
check_eq "ALTER ROLE: DateStyle" "SQL, DMY" "$(seen clerk DateStyle)"
check_eq "ALTER ROLE IN DATABASE: extra_float_digits" "2" "$(seen clerk extra_float_digits)"
check_eq "ALTER ROLE: a placeholder" "north" "$(seen clerk app.region)"
check_eq "SET: a placeholder" "t42" "$(seen clerk app.tenant)"
check_eq "connection option: geqo_threshold" "9" "$(seen clerk geqo_threshold)"
check_eq "connection option: a placeholder" "c1" "$(seen clerk app.client)"
check_eq "denied: lock_timeout is the applier's (--lock-timeout-ms), not the SET one" "10s" "$(seen clerk lock_timeout)"
check_eq "SET: search_path" "public, pg_temp" "$(seen clerk search_path)"
check_eq "SET: IntervalStyle" "iso_8601" "$(seen clerk IntervalStyle)"
check_eq "the server's file: work_mem, the same in the apply session" "7MB" "$(seen clerk work_mem)"
check_eq "denied: statement_timeout is the applier's" "$(q -c "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'" | sed 's/^0$/0/')" \
    "$(seen clerk statement_timeout | sed 's/^0$/0/')"
check "denied: application_name is not the caller's" test "$(seen clerk application_name)" != "psql"
check_eq "a superuser's SET log_statement" "mod" "$(seen superuser log_statement)"
# The rule of guc_capture.cc: a setting made with superuser rights in the caller's session (here
# a superuser's ALTER ROLE ... SET of a superuser-only parameter) is applied with them, although
# the caller is no superuser; the clerk could not SET it itself.
check_eq "ALTER ROLE ... SET by a superuser of a superuser-only parameter reaches a non-superuser's message" \
    "ddl" "$(seen clerk log_statement)"
out=$(psql -qAtX -U clerk -c "SET log_statement = 'all'" 2>&1)
check "which the clerk may not set itself" grep -q "permission denied" <<<"$out"
check_eq "no statement failed" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter")"
done_testing
