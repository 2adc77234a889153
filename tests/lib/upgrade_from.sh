# shellcheck shell=bash
# An installation of release $UPGRADE_FROM (0.1 or 0.2), built from its tagged sources and holding
# data in every table, upgraded to this tree in the order docs/upgrade.md gives; the wrong orders
# are refused. Sourced by tests/integration/upgrade_from_<version>.sh after setting UPGRADE_FROM.
#
#  1. The old extension and applier (tests/lib/old_release.sh) in a throwaway copy of the server.
#     The old applier, as the least-privilege role, applies messages of a clerk: numbers (some in
#     transactions that roll back), keyed messages and their duplicates, statements that fail
#     (dead letters), audited INSERTs (audit configuration, audit rows).
#  2. The old applier stops. More of the same is written by the old atx_log and waits in the slot:
#     also duplicates of keys the old release recorded.
#  3. Upgrade: the new library and scripts installed, the server restarted (pg_atx is preloaded);
#     more is written (the new library through the old SQL). The new applier refuses the old
#     extension (and `atx-applier check` fails). ALTER EXTENSION pg_atx UPDATE; more is written.
#     The old applier, started against the new extension, applies nothing. The new applier starts.
#  4. Every message applied (or dead-lettered, or suppressed by its key) exactly once, every row of
#     every table readable, old dead letters retried exactly once, the upgraded objects equal to a
#     fresh installation's, `atx-applier check` passes.
# shellcheck source=ext_schema.sh
. "$TESTLIB_DIR/ext_schema.sh"
# shellcheck source=old_release.sh
. "$TESTLIB_DIR/old_release.sh"

FROM=$UPGRADE_FROM
TO=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$ATX_BUILD_DIR/sql/pg_atx.control" 2>/dev/null)
use_seed

# --- 1. the old release ------------------------------------------------------------------------
# 0.1 was built and tested for PostgreSQL 15 only; it predates 17's MyProcNumber and does not
# compile for 18 (tried: ext/exec.cc, 'MyBackendId' was not declared).
if [ "$FROM" = 0.1 ] && [ "$ATX_PG_MAJOR" -ge 16 ]; then
    ok "# skip release 0.1 supported PostgreSQL 15 only (this is $ATX_PG_MAJOR)"
    done_testing
fi
old_release_build "$FROM"
case $? in
0) ok "release $FROM built from its sources for PostgreSQL $ATX_PG_MAJOR" ;;
2)
    ok "# skip release $FROM: its sources are not in this clone (tag v$FROM.0)"
    done_testing
    ;;
*)
    not_ok "release $FROM builds for PostgreSQL $ATX_PG_MAJOR (see $ATX_BUILD_DIR/releases/$FROM/build.log)"
    done_testing
    ;;
esac
NEW_APPLIER=$APPLIER_BIN
OLD_APPLIER=$OLD_BUILD/applier/atx-applier
check_eq "the new applier is release $TO" "atx-applier $TO" "$("$NEW_APPLIER" --version | cut -d. -f1-2)"

TEST_DIR=$(atx_cluster_mkdir "upgrade_from_$FROM")
server_copy "$TEST_DIR/server" || { not_ok "a copy of the server in $TEST_DIR/server"; done_testing; }
install_build_into_copy "$OLD_BUILD" || { not_ok "release $FROM installed into the copy"; done_testing; }
if ! atx_cluster_init "$TEST_DIR" "shared_preload_libraries = 'pg_atx'" || ! atx_cluster_start "$TEST_DIR"; then
    not_ok "cluster start"
    done_testing
fi
eval "$(atx_cluster_env "$TEST_DIR")"
APP_CONNINFO="host=$TEST_DIR port=$(cat "$TEST_DIR/port") user=atx_app"

q <<'SQL' >/dev/null
CREATE EXTENSION pg_atx;
CREATE ROLE atx_app LOGIN REPLICATION;
GRANT atx_applier TO atx_app;
CREATE ROLE clerk LOGIN;
CREATE TABLE numbers(n int);   -- no unique constraint: a duplicate must be countable
CREATE TABLE orders(id int PRIMARY KEY, item text);
GRANT INSERT, SELECT ON numbers TO clerk;
GRANT INSERT, UPDATE, SELECT ON orders TO clerk;
SELECT atx.enable_audit('orders');
SQL
check_eq "extension at $FROM" "$FROM" "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'")"

# daemon_start NAME BINARY ARGS...: an applier as atx_app; its log is $TEST_DIR/NAME.log.
declare -A DAEMON
daemon_start() {
    local name=$1 bin=$2
    shift 2
    (trap - EXIT; exec "$bin" --conninfo "$APP_CONNINFO" --dbname postgres --state-dir "$TEST_DIR/state-$name" \
        "$@" >>"$TEST_DIR/$name.log" 2>&1) &
    DAEMON[$name]=$!
}
daemon_stop() {
    local pid=${DAEMON[$1]:-}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    DAEMON[$1]=""
}
_upgrade_cleanup() {
    local p
    for p in "${DAEMON[@]}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
    _testlib_cleanup
}
trap _upgrade_cleanup EXIT

# emit FIRST LAST KIND: the clerk's messages, one per number. KIND: plain (every third in a
# transaction that rolls back: delivered all the same), keyed (the key twice, the second with -n,
# which must never land), ghost (a table that does not exist: a dead letter, 42P01).
emit() {
    local first=$1 last=$2 kind=$3 n
    {
        echo "SET ROLE clerk;"
        # 0.2 and later check the statement at the call; a ghost must reach the applier.
        [ "$kind" = ghost ] && [ "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'")" != 0.1 ] &&
            echo "SET atx.validate = off;"
        for n in $(seq "$first" "$last"); do
            case $kind in
            plain)
                if [ $((n % 3)) = 0 ]; then
                    echo "BEGIN; SELECT atx_log('INSERT INTO numbers VALUES (\$1)', $n); ROLLBACK;"
                else
                    echo "SELECT atx_log('INSERT INTO numbers VALUES (\$1)', $n);"
                fi
                ;;
            keyed)
                echo "SELECT atx_log_keyed('k$n', 'INSERT INTO numbers VALUES (\$1)', $n);"
                echo "SELECT atx_log_keyed('k$n', 'INSERT INTO numbers VALUES (\$1)', -$n);"
                ;;
            dupkey) echo "SELECT atx_log_keyed('k$n', 'INSERT INTO numbers VALUES (\$1)', -$n);" ;;
            ghost) echo "SELECT atx_log('INSERT INTO ghost VALUES (\$1)', $n);" ;;
            order) echo "INSERT INTO orders VALUES ($n, 'item $n');" ;;
            esac
        done
    } | q >/dev/null
}
numbers() { q -c "SELECT coalesce(string_agg(n::text, ',' ORDER BY n), '') FROM numbers"; }
ghosts() {
    q -c "SELECT coalesce(string_agg(atx.decode(payload)->'params'->0->>'value', ',' ORDER BY (atx.decode(payload)->'params'->0->>'value')::int), '')
            FROM atx.dead_letter WHERE statement LIKE '%ghost%' AND sqlstate = '42P01'"
}
audited() {
    q -c "SELECT coalesce(string_agg(operation || ':' || coalesce(new_row->>'id', old_row->>'id') || ':' || caller_role, ',' ORDER BY operation, coalesce(new_row->>'id', old_row->>'id')::int), '')
            FROM atx.audit_log"
}
landed() { [ "$(numbers)" = "$1" ] && [ "$(ghosts)" = "$2" ] && [ "$(audited)" = "$3" ]; } # landed NUMBERS GHOSTS AUDIT
seqlist() { seq -s, "$@"; }   # seqlist FIRST LAST
# Sorted union of comma lists.
union() { echo "$*" | tr ' ,' '\n' | sed '/^$/d' | sort -n | paste -sd,; }

# --- 1. data in every table, applied by the old applier --------------------------------------
daemon_start old "$OLD_APPLIER" --http-listen off
wait_for 30 bash -c "psql -qAtX -c \"SELECT 1 FROM pg_replication_slots WHERE plugin = 'pg_atx' AND active\" | grep -q 1" ||
    note "the old applier made no slot: $(tail -n 5 "$TEST_DIR/old.log")"
emit 1 30 plain
emit 101 110 keyed
emit 1001 1005 ghost
emit 1 5 order
A_NUMBERS=$(union "$(seqlist 1 30)" "$(seqlist 101 110)")
A_GHOSTS=$(seqlist 1001 1005)
A_AUDIT=$(seq 1 5 | sed 's/^/INSERT:/; s/$/:clerk/' | paste -sd,)
wait_for 60 landed "$A_NUMBERS" "$A_GHOSTS" "$A_AUDIT"
check_eq "release $FROM applied the numbers and keys once, no duplicate-key row" "$A_NUMBERS" "$(numbers)"
check_eq "release $FROM dead-lettered the statements that fail" "$A_GHOSTS" "$(ghosts)"
check_eq "release $FROM wrote the audit rows" "$A_AUDIT" "$(audited)"
check_eq "audit configuration" "orders|statement" "$(q -c "SELECT target::text, level FROM atx.audit_config")"
check_eq "release $FROM recorded the 10 keys" 10 "$(q -c "SELECT count(*) FROM atx.idempotency_key")"
old_dead_ids=$(q -c "SELECT string_agg(message_id::text, ' ' ORDER BY id) FROM atx.dead_letter")
daemon_stop old

# --- 2. messages of the old atx_log waiting in the slot ------------------------------------
emit 201 230 plain
emit 101 105 dupkey      # keys the old release recorded
emit 301 305 keyed
emit 2001 2003 ghost
emit 6 7 order
WAITING_FROM=$(q -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE plugin = 'pg_atx'")

# --- 3. the upgrade, in the documented order (docs/upgrade.md) -------------------------------
# The new module and scripts (a package upgrade), and a restart: pg_atx is preloaded.
install_build_into_copy "$ATX_BUILD_DIR" || not_ok "the new release installed into the copy"
atx_cluster_stop "$TEST_DIR" fast && atx_cluster_start "$TEST_DIR"
check_eq "the server runs the new library with the old extension" "$FROM" \
    "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'")"
emit 231 240 plain       # the new library through the old SQL definitions
emit 8 8 order

# Wrong order: the new applier before ALTER EXTENSION ... UPDATE.
out=$("$NEW_APPLIER" check --conninfo "$APP_CONNINFO" --dbname postgres 2>&1); rc=$?
check_eq "atx-applier check fails against the old extension" 2 "$rc"
check "and says to update it" grep -q "FAIL  extension pg_atx: extension pg_atx is at version $FROM in database postgres; atx-applier $TO.* ALTER EXTENSION pg_atx UPDATE" <<<"$out"
before=$(numbers)
rc=0
timeout 60 "$NEW_APPLIER" --conninfo "$APP_CONNINFO" --dbname postgres --state-dir "$TEST_DIR/state-wrong" \
    --http-listen off --once >"$TEST_DIR/new-too-early.log" 2>&1 || rc=$?
refused=$(grep -c "event=not_ready error=\"extension pg_atx is at version $FROM in database postgres" "$TEST_DIR/new-too-early.log")
if [ "$rc" = 1 ] && [ "$refused" -ge 1 ]; then ok "the new applier refuses extension $FROM (exit 1, event=not_ready)"
else not_ok "the new applier refuses extension $FROM (exit $rc; $(tail -n 2 "$TEST_DIR/new-too-early.log" | tr '\n' ' '))"; fi
check_eq "and applied nothing" "$before" "$(numbers)"

out=$(psql -qAtX -v ON_ERROR_STOP=1 -c "ALTER EXTENSION pg_atx UPDATE" 2>&1)
check "ALTER EXTENSION pg_atx UPDATE ($out)" test $? = 0
check_eq "extension at $TO" "$TO" "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'")"
emit 241 250 plain       # the new library through the new SQL

# Wrong order: the old applier against the new extension. The extension must refuse it: nothing
# applied, nothing dead-lettered, nothing confirmed past the waiting messages.
before=$(numbers)
dead_before=$(q -c "SELECT count(*) FROM atx.dead_letter")
daemon_start old-late "$OLD_APPLIER" --http-listen off
sleep 8
daemon_stop old-late
check_eq "the old applier applied nothing through the new extension" "$before" "$(numbers)"
check_eq "and dead-lettered nothing" "$dead_before" "$(q -c "SELECT count(*) FROM atx.dead_letter")"
# (Before 17 a restart may set it back to its last checkpointed value: a replay, harmless.)
check "and confirmed nothing past the waiting messages" \
    test "$(q -c "SELECT confirmed_flush_lsn <= '$WAITING_FROM' FROM pg_replication_slots WHERE plugin = 'pg_atx'")" = t
case $FROM in
0.1)
    # 0.1 kept its progress in a replication origin, which 0.2 no longer lets the applier role
    # set up: it stops there, before streaming.
    check "the old applier's log says why: it may no longer set up its replication origin (42501)" \
        grep -q 'sqlstate=42501 .*permission denied for function pg_replication_origin_session_setup' "$TEST_DIR/old-late.log"
    ;;
*)
    # The old apply_batch signature is kept to refuse: 55000 naming both versions (ext/apply_batch.cc).
    out=$(psql -X -v VERBOSITY=verbose -qAt -h "$TEST_DIR" -p "$(cat "$TEST_DIR/port")" -U atx_app -d postgres \
        -c "SELECT * FROM atx.apply_batch('{}'::pg_lsn[], '{}'::int[], '{}'::timestamptz[], 8, 1000, false)" 2>&1)
    if grep -q "ERROR:  55000: .*pg_atx $FROM .*extension pg_atx $TO" <<<"$out" && grep -q "DETAIL: .*pg_atx $FROM" <<<"$out"; then
        ok "the $FROM apply_batch signature raises 55000 naming $FROM and $TO"
    else
        not_ok "the $FROM apply_batch signature raises 55000 naming $FROM and $TO (got: $(echo "$out" | head -n 3 | tr '\n' ' '))"
    fi
    # It stops before it calls it: the messages written since the upgrade are of a newer format
    # (event=not_ready ... upgrade atx-applier); an old applier that called it would log 55000.
    check "the old applier's log tells to upgrade it (event=not_ready, or batch_failed 55000)" \
        grep -Eq "event=not_ready .*upgrade atx-applier|event=batch_failed .*sqlstate=55000 .*extension pg_atx $TO" \
        "$TEST_DIR/old-late.log"
    ;;
esac

# The right order: the new applier, as atx_app.
daemon_start new "$NEW_APPLIER" --http-listen off
B_NUMBERS=$(union "$A_NUMBERS" "$(seqlist 201 250)" "$(seqlist 301 305)")
B_GHOSTS=$(union "$A_GHOSTS" "$(seqlist 2001 2003)")
B_AUDIT=$(seq 1 8 | sed 's/^/INSERT:/; s/$/:clerk/' | paste -sd,)
wait_for 90 landed "$B_NUMBERS" "$B_GHOSTS" "$B_AUDIT"
sleep 2   # anything applied twice would show now

# --- 4. exactly once, and every row readable ---------------------------------------------------
check_eq "every number applied exactly once across the upgrade, no duplicate-key row" "$B_NUMBERS" "$(numbers)"
check_eq "every failing statement dead-lettered exactly once" "$B_GHOSTS" "$(ghosts)"
check_eq "every audited change written exactly once, as its caller" "$B_AUDIT" "$(audited)"
if [ "$FROM" = 0.1 ]; then
    check_eq "0.1's keys read as role 0 (any role), the new ones as the clerk's" \
        "$(seq 101 110 | sed 's/^/k/; s/$/\/0/' | paste -sd,),$(seq 301 305 | sed 's/^/k/; s/$/\/clerk/' | paste -sd,)" \
        "$(q -c "SELECT string_agg(key || '/' || CASE role_oid WHEN 0 THEN '0' ELSE role_oid::regrole::text END, ',' ORDER BY key) FROM atx.idempotency_key")"
else
    check_eq "the keys are the clerk's" \
        "$(seq 101 110 | sed 's/^/k/; s/$/\/clerk/' | paste -sd,),$(seq 301 305 | sed 's/^/k/; s/$/\/clerk/' | paste -sd,)" \
        "$(q -c "SELECT string_agg(key || '/' || role_oid::regrole::text, ',' ORDER BY key) FROM atx.idempotency_key")"
fi
# (Counted in every applier's log since the upgrade: an applier that was let through in the
# wrong order may have handled them.)
check_eq "the 10 waiting duplicates suppressed by their keys, 5 of them keys of $FROM" 10 \
    "$(cat "$TEST_DIR"/new-too-early.log "$TEST_DIR"/old-late.log "$TEST_DIR"/new.log | grep -c 'event=duplicate .*role=clerk')"
check_eq "the audit configuration is unchanged" "orders|statement" "$(q -c "SELECT target::text, level FROM atx.audit_config")"
# atx.applied may be empty by now: atx.prune forgets what the slot confirmed.
for t in atx.dead_letter atx.idempotency_key atx.audit_log atx.audit_config atx.applied atx.apply_horizon atx.audit_outcome; do
    out=$(psql -qAtX -v ON_ERROR_STOP=1 -c "SELECT count(*) FROM (SELECT t::text FROM $t t) s" 2>&1)
    min=1
    [ "$t" = atx.applied ] && min=0
    check "every row of $t readable ($out rows)" test -n "$out" -a "$out" -ge "$min" 2>/dev/null
done
check_eq "the clerk reads its own dead letters, old ones included (row-level security)" 8 \
    "$(q -c "SET ROLE clerk" -c "SELECT count(*) FROM atx.dead_letter")"
out=$("$NEW_APPLIER" dead-letters --conninfo "$APP_CONNINFO" --dbname postgres --json 2>&1)
check_eq "atx-applier dead-letters lists them all" 8 "$(grep -o '"message_id"' <<<"$out" | wc -l)"
first_old=${old_dead_ids%% *}
check "atx-applier show finds a dead letter of release $FROM" \
    "$NEW_APPLIER" show "$first_old" --conninfo "$APP_CONNINFO" --dbname postgres

# The old dead letters still authenticate: once the table exists, they run, exactly once.
q -c "CREATE TABLE ghost(n int)" -c "GRANT INSERT ON ghost TO clerk" >/dev/null
out=$("$NEW_APPLIER" retry --all --conninfo "$APP_CONNINFO" --dbname postgres 2>&1); rc=$?
check_eq "atx-applier retry --all runs every dead letter, the release's included" 0 "$rc"
check_eq "each once" "$B_GHOSTS" "$(q -c "SELECT string_agg(n::text, ',' ORDER BY n) FROM ghost")"
check_eq "no dead letter left" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter")"

out=$("$NEW_APPLIER" check --conninfo "$APP_CONNINFO" --dbname postgres 2>&1); rc=$?
check_eq "atx-applier check passes after the upgrade" 0 "$rc"
[ "$rc" = 0 ] || note "$(grep FAIL <<<"$out")"

# The upgraded objects, data and all, equal a fresh installation's.
q -c "CREATE DATABASE fresh" >/dev/null
psql -qAtX -d fresh -c "CREATE EXTENSION pg_atx" >/dev/null
user_tables=(--exclude-table=public.numbers --exclude-table=public.orders --exclude-table=public.ghost)
ext_schema postgres "${user_tables[@]}" >"$TEST_DIR/upgraded.sql"
ext_schema fresh >"$TEST_DIR/fresh.sql"
if diff -u "$TEST_DIR/fresh.sql" "$TEST_DIR/upgraded.sql" >"$TEST_DIR/schema.diff"; then
    ok "the upgraded objects equal a fresh install of $TO"
else
    not_ok "the upgraded objects equal a fresh install of $TO (diff in $TEST_DIR/schema.diff)"
    sed 's/^/# /' "$TEST_DIR/schema.diff" | head -n 40
fi
daemon_stop new
done_testing
