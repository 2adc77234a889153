#!/usr/bin/env bash
# Runs the pg_atx pg_regress suite against an already running cluster.
#
#   PGHOST=/tmp/x PGPORT=5499 PGUSER=postgres tests/regress/run.sh
#
# The cluster needs wal_level = logical, max_replication_slots >= 1, and (on
# PostgreSQL 15.19+) pg_atx in output_plugin_libraries; the extension must be
# installed (cmake --install). PGUSER must be a superuser. The suite runs in a
# fresh database (ATX_REGRESS_DB, default atx_regress) that is dropped again
# on success; inputs are copied to a temp dir so the source tree stays clean.
# Exit status is pg_regress's.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PG_CONFIG=${PG_CONFIG:-pg_config}
bindir=$("$PG_CONFIG" --bindir)
# pgxs is .../lib/pgxs/src/makefiles/pgxs.mk; pg_regress is .../lib/pgxs/src/test/regress/pg_regress
pg_regress=${PG_REGRESS:-$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress}
db=${ATX_REGRESS_DB:-atx_regress}
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -d postgres)

work=$(mktemp -d "${TMPDIR:-/tmp}/atx_regress.XXXXXX")
cp -r "$here/sql" "$here/expected" "$here/schedule" "$work/"
chmod -R a+rwX "$work"

# Leftovers of an earlier failed run: its slots pin the database, its roles
# are cluster-wide.
reset_db() {
    PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" "${psql[@]}" >/dev/null <<SQL
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
 WHERE database = '$db' AND NOT active;
DROP DATABASE IF EXISTS "$db";
DO \$\$
DECLARE r name;
BEGIN
    FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'regress\_atx\_%' LOOP
        EXECUTE format('DROP ROLE %I', r);
    END LOOP;
END
\$\$;
SQL
}
reset_db
"${psql[@]}" -c "CREATE DATABASE \"$db\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"

rc=0
"$pg_regress" --use-existing --bindir="$bindir" \
    --inputdir="$work" --outputdir="$work" --dbname="$db" \
    --schedule="$work/schedule" \
    ${PGHOST:+--host="$PGHOST"} ${PGPORT:+--port="$PGPORT"} ${PGUSER:+--user="$PGUSER"} || rc=$?

if [ "$rc" -eq 0 ]; then
    reset_db
    rm -rf "$work"
else
    echo "pg_regress failed (exit $rc); outputs kept in $work" >&2
    [ -f "$work/regression.diffs" ] && cat "$work/regression.diffs" >&2
fi
exit "$rc"
