#!/usr/bin/env bash
# ALTER EXTENSION pg_atx UPDATE from the first released version (0.1) to the default version
# gives the same objects as a fresh CREATE EXTENSION. Walks every installed upgrade script, so a
# new version only needs its pg_atx--A--B.sql to be covered.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
default=$(q -c "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_atx'")
note "default version $default; upgrade scripts: $(ls "$(pg_config --sharedir)"/extension/pg_atx--*--*.sql 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')"
check "0.1 is installable" bash -c "psql -qAtX -c \"SELECT 1 FROM pg_available_extension_versions WHERE name = 'pg_atx' AND version = '0.1'\" | grep -q 1"
path=$(q -c "SELECT path FROM pg_extension_update_paths('pg_atx') WHERE source = '0.1' AND target = '$default'")
if [ "$default" = "0.1" ]; then
    ok "0.1 is the default version: the update path is the identity"
else
    check "an update path 0.1 -> $default exists ($path)" test -n "$path"
fi

# Objects of the extension, described by signature, so two databases can be compared.
describe() {
    psql -qAtX -d "$1" <<'SQL'
SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_atx')
 ORDER BY 1;
SELECT format('%s.%s(%s) -> %s %s', n.nspname, p.proname, pg_get_function_arguments(p.oid),
              pg_get_function_result(p.oid), p.proacl)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'atx' OR p.proname LIKE 'atx\_%' ORDER BY 1;
SELECT format('%s %s %s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod))
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'atx' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1;
SQL
}

q -c "CREATE DATABASE fresh" -c "CREATE DATABASE upgraded" >/dev/null
psql -qAtX -d fresh -c "CREATE EXTENSION pg_atx" >/dev/null
psql -qAtX -d upgraded -c "CREATE EXTENSION pg_atx VERSION '0.1'" >/dev/null
out=$(psql -qAtX -d upgraded -c "ALTER EXTENSION pg_atx UPDATE" 2>&1)
check "ALTER EXTENSION pg_atx UPDATE succeeds ($out)" test $? = 0
check_eq "upgraded database is at the default version" "$default" \
    "$(psql -qAtX -d upgraded -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'")"
describe fresh >"$TEST_DIR/fresh.txt"
describe upgraded >"$TEST_DIR/upgraded.txt"
note "$(wc -l <"$TEST_DIR/fresh.txt") objects described"
check "upgraded objects equal a fresh install" diff -u "$TEST_DIR/fresh.txt" "$TEST_DIR/upgraded.txt"
check "fresh install describes some objects" test "$(wc -l <"$TEST_DIR/fresh.txt")" -gt 20
done_testing
