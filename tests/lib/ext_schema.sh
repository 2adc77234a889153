# shellcheck shell=bash
# The extension's objects in one database as comparable text: what a fresh CREATE EXTENSION and an
# ALTER EXTENSION UPDATE chain must agree on (tests/integration/extension_upgrade.sh,
# tests/integration/upgrade_*.sh). Sourced after testlib.sh.
#
#   ext_schema DB [PG_DUMP_OPTION...] >FILE
#                          every object with its privileges, initial privileges, policies,
#                          comments, function bodies and properties, and extension membership
#                          (pg_dump --schema-only --binary-upgrade, which dumps an extension's
#                          members one by one), then the tables pg_dump carries the data of
#
# What is taken out because it names oids, xids or LSNs of one database and not the schema: the
# binary_upgrade_set_next_* calls, relfrozenxid/relminmxid, the oids in
# binary_upgrade_create_empty_extension (listed by name below instead), pg_dump's \restrict key.
# One more thing is taken out, with its reason: binary_upgrade_set_missing_value, the value that
# ALTER TABLE ... ADD COLUMN ... DEFAULT stores for rows that existed before the column (0.2 gave
# atx.idempotency_key its role_oid that way: 0.1's keys read as role 0). It describes old rows,
# not the table; a fresh installation has no such rows. The same for the sequences' positions
# (setval), which binary-upgrade dumps carry.
ext_schema() {
    local db=$1
    shift
    pg_dump --schema-only --binary-upgrade --no-sync "$@" -d "$db" |
        sed -E -e '/^\\(un)?restrict /d' \
            -e '/binary_upgrade_set_next_/d' \
            -e '/^-- set missing value\.$/d' -e '/binary_upgrade_set_missing_value/d' \
            -e "s/^SELECT pg_catalog.setval\(('[^']*'), .*/SELECT pg_catalog.setval(\1, ...);/" \
            -e "s/relfrozenxid = '[0-9]+', relminmxid = '[0-9]+'/relfrozenxid = X, relminmxid = X/" \
            -e "s/WHERE oid = '[0-9]+'/WHERE oid = N/" \
            -e "s/(binary_upgrade_create_empty_extension\(.*, )'\{[0-9,]*\}', '\{[^}]*\}'/\1'{config}', '{conditions}'/" |
        cat -s || return 1
    echo "-- tables and sequences whose rows pg_dump carries (pg_extension_config_dump), with their conditions"
    psql -qAtX -d "$db" -v ON_ERROR_STOP=1 <<'SQL'
SELECT format('%s %L', c.oid::regclass, coalesce(x.cond, ''))
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(oid, cond) JOIN pg_class c ON c.oid = x.oid
 WHERE e.extname = 'pg_atx'
 ORDER BY 1;
SQL
}

# ext_schema_members DB: how many objects belong to the extension (a dump of nothing equals
# a dump of nothing: the comparison must have had something to compare).
ext_schema_members() {
    psql -qAtX -d "$1" -c "SELECT count(*) FROM pg_depend WHERE refclassid = 'pg_extension'::regclass
                            AND deptype = 'e' AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_atx')"
}
