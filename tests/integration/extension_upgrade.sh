#!/usr/bin/env bash
# A fresh CREATE EXTENSION pg_atx (the full install script of the default version,
# sql/pg_atx--<version>.d) and an installation of the first release (0.1) updated step by step
# along the upgrade chain end with the same objects: privileges, initial privileges, policies,
# comments, function bodies and properties, extension membership and the tables pg_dump carries
# (tests/lib/ext_schema.sh). The two sides are written separately, so this fails when a change
# lands on one side only. The comparison itself is checked too: each kind of difference it must
# see is made on a copy of the fresh database, and must show.
. "$(dirname "$0")/../lib/testlib.sh"
# shellcheck source=../lib/ext_schema.sh
. "$TESTLIB_DIR/ext_schema.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
default=$(q -c "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_atx'")
sharedir=$(pg_config --sharedir)/extension
scripts=("$sharedir"/pg_atx--*.sql)
note "default version $default; scripts: ${scripts[*]##*/}"
check "the default version has a full install script (pg_atx--$default.sql)" test -f "$sharedir/pg_atx--$default.sql"

# The chain: every released version, oldest first, each one step from the one before.
versions=$(q -c "SELECT string_agg(version, ' ' ORDER BY string_to_array(version, '.')::int[])
                   FROM pg_available_extension_versions WHERE name = 'pg_atx'")
note "versions: $versions"
case " $versions " in *" 0.1 "*) ok "0.1 is installable" ;; *) not_ok "0.1 is installable" ;; esac
path=$(q -c "SELECT path FROM pg_extension_update_paths('pg_atx') WHERE source = '0.1' AND target = '$default'")
check_eq "the update path from 0.1 walks every version" "${versions// /--}" "$path"

q -c "CREATE DATABASE fresh" -c "CREATE DATABASE upgraded" >/dev/null
out=$(psql -qAtX -v ON_ERROR_STOP=1 -d fresh -c "CREATE EXTENSION pg_atx" 2>&1)
check "CREATE EXTENSION pg_atx (version $default) succeeds ($out)" test $? = 0
first=${versions%% *}
out=$(psql -qAtX -v ON_ERROR_STOP=1 -d upgraded -c "CREATE EXTENSION pg_atx VERSION '$first'" 2>&1)
check "CREATE EXTENSION pg_atx VERSION '$first' succeeds ($out)" test $? = 0
for v in ${versions#"$first"}; do
    out=$(psql -qAtX -v ON_ERROR_STOP=1 -d upgraded -c "ALTER EXTENSION pg_atx UPDATE TO '$v'" 2>&1)
    check "ALTER EXTENSION pg_atx UPDATE TO '$v' succeeds ($out)" test $? = 0
done
check_eq "the updated database is at the default version" "$default" \
    "$(psql -qAtX -d upgraded -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'")"
# PostgreSQL prefers a full script when there is one: the fresh side must not have been built
# along the chain (0.2's ALTER TABLE left a stored default for old rows, which a table created
# whole does not have).
check_eq "the fresh database ran the full script, not the chain" "f/t" \
    "$(psql -qAtX -d fresh -c "SELECT atthasmissing FROM pg_attribute WHERE attrelid = 'atx.idempotency_key'::regclass AND attname = 'role_oid'")/$(
       psql -qAtX -d upgraded -c "SELECT atthasmissing FROM pg_attribute WHERE attrelid = 'atx.idempotency_key'::regclass AND attname = 'role_oid'")"

ext_schema fresh >"$TEST_DIR/fresh.sql"
ext_schema upgraded >"$TEST_DIR/upgraded.sql"
members=$(ext_schema_members fresh)
note "$members extension members, $(wc -l <"$TEST_DIR/fresh.sql") lines of schema compared"
check "the fresh install has its objects ($members members)" test "$members" -gt 40
if diff -u "$TEST_DIR/fresh.sql" "$TEST_DIR/upgraded.sql" >"$TEST_DIR/schema.diff"; then
    ok "the updated objects equal a fresh install of $default"
else
    not_ok "the updated objects equal a fresh install of $default (diff in $TEST_DIR/schema.diff)"
    sed 's/^/# /' "$TEST_DIR/schema.diff" | head -n 80
fi

# The comparison sees each kind of difference. A copy of the fresh database per change (no
# session may be connected to a template while it is copied).
differs() { # differs WHAT SQL: the copy with SQL applied no longer compares equal
    local db="tampered_$T_NUM"
    q -c "CREATE DATABASE $db TEMPLATE fresh" >/dev/null
    if ! psql -qAtX -v ON_ERROR_STOP=1 -d "$db" -c "$2" >/dev/null 2>"$TEST_DIR/tamper.err"; then
        not_ok "comparison sees $1 (could not make the change: $(head -c 300 "$TEST_DIR/tamper.err"))"
    elif ext_schema "$db" | cmp -s - "$TEST_DIR/fresh.sql"; then
        not_ok "comparison sees $1: the copy still compares equal"
    else
        ok "comparison sees $1"
    fi
    q -c "DROP DATABASE $db" >/dev/null
}
differs "a privilege" "GRANT EXECUTE ON FUNCTION atx.prune() TO PUBLIC"
differs "a revoked privilege" "REVOKE SELECT ON atx.dead_letter FROM PUBLIC"
differs "a policy" "ALTER POLICY own_messages ON atx.dead_letter USING (true)"
differs "a comment" "COMMENT ON FUNCTION atx.slot_name() IS 'changed'"
differs "a function body" "CREATE OR REPLACE FUNCTION atx.caller_outcome(caller_xid xid8, persisted text)
    RETURNS text LANGUAGE sql VOLATILE PARALLEL SAFE AS \$\$ SELECT COALESCE(\$2, 'unknown') \$\$"
differs "a function property" "ALTER FUNCTION atx.wake(uuid[]) SECURITY INVOKER"
differs "a column" "ALTER TABLE atx.applied ADD COLUMN extra int"
differs "an index" "DROP INDEX atx.applied_lsn"
differs "membership" "ALTER EXTENSION pg_atx DROP FUNCTION atx.decode(bytea)"
differs "a condition on the rows pg_dump carries" "UPDATE pg_extension SET extcondition[1] = 'WHERE false' WHERE extname = 'pg_atx'"
differs "row-level security" "ALTER TABLE atx.dead_letter DISABLE ROW LEVEL SECURITY"
done_testing
