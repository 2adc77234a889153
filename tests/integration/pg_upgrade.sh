#!/usr/bin/env bash
# PostgreSQL major upgrades with pg_upgrade, as docs/upgrade.md says to do them.
#
#  15 -> 18: callers emit numbered messages (rollbacks, keys, statements that fail) while the
#    applier runs, and go on after it stops, up to the stop. `atx-applier check --before-upgrade`
#    refuses while messages wait and counts them. The old behaviour, upgrading without the drain
#    (on a copy of the stopped cluster), loses exactly the waiting messages: pg_upgrade leaves
#    logical slots of a 15 cluster behind. Then the procedure: drain, the check passes, pg_upgrade,
#    the applier makes the slot again, callers go on on 18; every confirmed message lands exactly
#    once, keys and dead letters from 15 still count (a key used on 15 suppresses its duplicate on
#    18; the dead letters from 15 retry on 18: the key file came along).
#  18 -> 18: pg_upgrade carries the slot when it has consumed all WAL and refuses it otherwise;
#    the check refuses first, the drained slot is carried and the applier goes on with it.
#
# Runs with the newer server (PG_CONFIG of 18); the older one is ATX_UPGRADE_FROM_PG_CONFIG, else
# Debian's 15. Both run from copies (tests/lib/old_release.sh): nothing is installed into them.
. "$(dirname "$0")/../lib/testlib.sh"
# shellcheck source=../lib/old_release.sh
. "$TESTLIB_DIR/old_release.sh"
use_seed
# shellcheck source=../lib/workload.sh
. "$TESTLIB_DIR/workload.sh"

OLD_PG_CONFIG=${ATX_UPGRADE_FROM_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
NEW_PG_CONFIG=$PG_CONFIG
old_major=$("$OLD_PG_CONFIG" --version 2>/dev/null | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
if [ "$ATX_PG_MAJOR" -lt 17 ]; then
    ok "# skip runs with the newer server: PG_CONFIG=\$(tools/atx pg18) (this is $ATX_PG_MAJOR)"
    done_testing
fi
if [ -z "$old_major" ] || [ "$old_major" -ge "$ATX_PG_MAJOR" ]; then
    not_ok "an older server to upgrade from (ATX_UPGRADE_FROM_PG_CONFIG, else $OLD_PG_CONFIG)"
    done_testing
fi
note "PostgreSQL $old_major ($OLD_PG_CONFIG) -> $ATX_PG_MAJOR ($NEW_PG_CONFIG)"

# --- pg_atx of this tree for both servers, in copies of them -------------------------------------
OLD_EXT_BUILD=$ATX_BUILD_DIR/for-pg$old_major
{ cmake -S "$ATX_ROOT" -B "$OLD_EXT_BUILD" -DPG_CONFIG="$OLD_PG_CONFIG" -DATX_BUILD_APPLIER=OFF \
      -DATX_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
  cmake --build "$OLD_EXT_BUILD" -j "$(nproc)"; } >"$ATX_BUILD_DIR/for-pg$old_major.log" 2>&1
check "pg_atx of this tree built for PostgreSQL $old_major" test $? = 0
TEST_DIR=$(atx_cluster_mkdir pg_upgrade)
PG_CONFIG=$OLD_PG_CONFIG server_copy "$TEST_DIR/pg$old_major" && install_build_into_copy "$OLD_EXT_BUILD"
check "a copy of PostgreSQL $old_major with it" test $? = 0
OLD_BIN=$ATX_PG_BINDIR
server_copy "$TEST_DIR/pg$ATX_PG_MAJOR" && install_build_into_copy "$ATX_BUILD_DIR"
check "a copy of PostgreSQL $ATX_PG_MAJOR with it" test $? = 0
NEW_BIN=$ATX_PG_BINDIR

KEY=$TEST_DIR/key/pg_atx.key   # outside every data directory: pg_upgrade copies none of it
mkdir -p "$TEST_DIR/key"
chmod 0700 "$TEST_DIR/key"
[ "$(id -u)" = 0 ] && chown postgres: "$TEST_DIR/key"
CLUSTERS=()
declare -A BIN_OF
# cluster NAME BINDIR: a cluster in $TEST_DIR/NAME, preloaded, with the key file above.
cluster() {
    local dir=$TEST_DIR/$1
    ATX_PG_BINDIR=$2 atx_cluster_init "$dir" "shared_preload_libraries = 'pg_atx'" "atx.key_file = '$KEY'" || return 1
    CLUSTERS+=("$dir")
    BIN_OF[$dir]=$2
}
start() { ATX_PG_BINDIR=${BIN_OF[$TEST_DIR/$1]} atx_cluster_start "$TEST_DIR/$1"; }
stop() { ATX_PG_BINDIR=${BIN_OF[$TEST_DIR/$1]} atx_cluster_stop "$TEST_DIR/$1" fast; }
use() { # use NAME: psql, the callers and the applier talk to this cluster
    eval "$(atx_cluster_env "$TEST_DIR/$1")"
    APP_CONNINFO="host=$TEST_DIR/$1 port=$(cat "$TEST_DIR/$1/port") user=atx_app"
}
daemon_start() {
    (trap - EXIT; exec "$APPLIER_BIN" --conninfo "$APP_CONNINFO" --dbname postgres --state-dir "$TEST_DIR/state" \
        --http-listen off "$@" >>"$TEST_DIR/applier.log" 2>&1) &
    APPLIER_PID=$!
}
# The drain docs/upgrade.md gives: the applier with --once exits 0 once everything is applied and
# confirmed.
drain() {
    local rc=0
    timeout 180 "$APPLIER_BIN" --conninfo "$APP_CONNINFO" --dbname postgres --state-dir "$TEST_DIR/state" \
        --http-listen off --once >>"$TEST_DIR/applier.log" 2>&1 || rc=$?
    check_eq "drained: the applier with --once exits 0" 0 "$rc"
}
upgrade_check() { "$APPLIER_BIN" check --before-upgrade --conninfo "$APP_CONNINFO" --dbname postgres 2>&1; }
# pg_upgrade FROM TO: as the server's user, from the test directory (its logs go to the new
# cluster's data directory).
pg_upgrade_() {
    local from=$TEST_DIR/$1 to=$TEST_DIR/$2
    atx_as_server bash -c 'cd "$1" && shift && exec "$@"' _ "$TEST_DIR" "${BIN_OF[$to]}/pg_upgrade" \
        -b "${BIN_OF[$from]}" -B "${BIN_OF[$to]}" -d "$from/data" -D "$to/data" \
        -p "$(cat "$from/port")" -P "$(cat "$to/port")" -s "$TEST_DIR" "${@:3}" >"$TEST_DIR/pg_upgrade-$1-$2.log" 2>&1
}
# The target of a pg_upgrade: initdb'd and stopped, with the source's data checksum setting
# (18's initdb turns them on, 15's did not).
target() {
    cluster "$1" "$NEW_BIN" || return 1
    if [ "$(ATX_PG_BINDIR=${BIN_OF[$TEST_DIR/$2]} atx_as_server "${BIN_OF[$TEST_DIR/$2]}/pg_controldata" "$TEST_DIR/$2/data" |
           sed -n 's/^Data page checksum version: *//p')" = 0 ]; then
        atx_as_server "$NEW_BIN/pg_checksums" --disable -D "$TEST_DIR/$1/data" >/dev/null 2>&1
    fi
}
# This environment's Debian 15.20 keeps a version of every column in pg_attribute.attoptions
# (pg_attver=<LSN>, part of its 2026 security release); the 18.3 built from the shared tarball
# predates that and rejects the option when pg_upgrade restores the schema ("unrecognized parameter
# \"pg_attver\"", for any table, pg_atx or not). A new server whose pg_dump knows the versions
# carries them; for one that does not, they are taken out of the old cluster just before it stops
# for the upgrade (docs/upgrade.md). Never needed between majors of the same security level.
strip_attver() {
    strings "$NEW_BIN/pg_dump" | grep -q pg_attver && return 0
    local db
    for db in $(q -c "SELECT datname FROM pg_database WHERE datallowconn"); do
        psql -qAtX -d "$db" -c "UPDATE pg_catalog.pg_attribute SET attoptions =
            NULLIF(ARRAY(SELECT o FROM unnest(attoptions) o WHERE o NOT LIKE 'pg_attver=%'), '{}')
            WHERE attoptions::text LIKE '%pg_attver=%'" >/dev/null
    done
}
# pg_upgrade carries no replication origins (CREATE EXTENSION made the emit origin, and the
# schema is restored without running the script): atx_log refuses until it is made again.
emit_origin_again() {
    check_eq "after pg_upgrade the emit origin is gone" 0 "$(q -c "SELECT count(*) FROM pg_replication_origin WHERE roname = 'pg_atx'")"
    q -c "SELECT atx.ensure_emit_origin()" >/dev/null
}
_pg_upgrade_cleanup() {
    [ "$BASHPID" = "$TESTLIB_MAIN_PID" ] || return 0
    [ -n "$APPLIER_PID" ] && kill -9 "$APPLIER_PID" 2>/dev/null
    local d
    for d in "${CLUSTERS[@]}"; do ATX_PG_BINDIR=${BIN_OF[$d]} atx_cluster_stop "$d" immediate; done
    _testlib_cleanup
}
trap _pg_upgrade_cleanup EXIT

# --- 15: messages applied, then waiting -------------------------------------------------------
if ! cluster old "$OLD_BIN" || ! start old; then
    not_ok "PostgreSQL $old_major cluster"
    done_testing
fi
use old
q <<'SQL' >/dev/null
CREATE EXTENSION pg_atx;
CREATE ROLE atx_app LOGIN REPLICATION;
GRANT atx_applier TO atx_app;
SQL
workload_setup
daemon_start
wait_for_slot || not_ok "the applier made the slot"
callers_start 2 1 400 0.05
# The applier stops while the callers go on: they emit up to the stop of the server.
wait_for 60 bash -c '[ "$(psql -qAtX -c "SELECT count(*) FROM numbers")" -ge 100 ]'
applier_stop
callers_wait || not_ok "the callers finished"
exp_load
pending=$(q -c "SELECT count(*) FROM exp e WHERE certain AND NOT EXISTS (SELECT 1 FROM numbers x WHERE x.n = e.n)
                  AND NOT EXISTS (SELECT 1 FROM atx.dead_letter d WHERE (atx.decode(d.payload)->'params'->0->>'value')::int = e.n)")
note "$pending confirmed numbers wait in the slot"
check "messages wait in the slot" test "$pending" -gt 0

out=$(upgrade_check); rc=$?
note "$(grep -E 'FAIL|WARN|waiting|after pg_upgrade' <<<"$out")"
check_eq "check --before-upgrade refuses while they wait" 2 "$rc"
n=$(sed -n 's/.*FAIL  messages waiting in the slot: \([0-9]*\) messages\{0,1\} in .*/\1/p' <<<"$out")
check "it counts them (${n:-none}; each waiting number is one message, a keyed one two)" \
    test -n "$n" -a "${n:-0}" -ge "$pending" -a "${n:-0}" -le $((2 * pending))
check "it says they would be lost and how to drain" \
    grep -q "does not carry logical slots, so they would be lost; drain before pg_upgrade: .* --once" <<<"$out"
check "it says where the key is for the new cluster" grep -q "the key after pg_upgrade: atx.key_file = '$KEY'" <<<"$out"
strip_attver
stop old

# --- the old behaviour: pg_upgrade without the drain, on a copy -------------------------------
mkdir -p "$TEST_DIR/nodrain-old"
cp -a "$TEST_DIR/old/data" "$TEST_DIR/nodrain-old/data"
cp "$TEST_DIR/old/port" "$TEST_DIR/nodrain-old/port"
CLUSTERS+=("$TEST_DIR/nodrain-old")
BIN_OF[$TEST_DIR/nodrain-old]=$OLD_BIN
target nodrain old
pg_upgrade_ nodrain-old nodrain; rc=$?
check_eq "pg_upgrade $old_major -> $ATX_PG_MAJOR without the drain succeeds (it does not look at the slot)" 0 "$rc"
[ "$rc" = 0 ] || note "$(tail -n 20 "$TEST_DIR/pg_upgrade-nodrain-old-nodrain.log")"
start nodrain
use nodrain
check_eq "the slot was left behind" 0 "$(q -c "SELECT count(*) FROM pg_replication_slots")"
emit_origin_again
daemon_start
wait_for_slot || not_ok "the applier made a new slot"
sleep 3
applier_stop
read -r -a c < <(counts)
check_eq "and the waiting messages are lost: $pending confirmed numbers never land" "$pending" $((c[0] + c[1] - c[3] - c[4]))
stop nodrain

# --- the procedure: drain, check, pg_upgrade, the applier makes the slot again ---------------
start old
use old
drain
out=$(upgrade_check); rc=$?
check_eq "check --before-upgrade passes once drained" 0 "$rc"
check "it says the slot stays behind" grep -q "the slot after pg_upgrade: left behind (PostgreSQL $old_major)" <<<"$out"
strip_attver
stop old
target new old
pg_upgrade_ old new; rc=$?
check_eq "pg_upgrade $old_major -> $ATX_PG_MAJOR" 0 "$rc"
[ "$rc" = 0 ] || note "$(tail -n 20 "$TEST_DIR/pg_upgrade-old-new.log")"
start new || { not_ok "PostgreSQL $ATX_PG_MAJOR starts"; done_testing; }
use new
check_eq "the extension came along" "$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$ATX_BUILD_DIR/sql/pg_atx.control")" \
    "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'")"
emit_origin_again
out=$(psql -qAtX -c "SELECT atx_log('SELECT 1')" 2>&1)
check "atx_log refuses until the applier has made the slot (55000)" grep -q "no pg_atx replication slot exists" <<<"$out"
daemon_start
wait_for_slot || not_ok "the applier made the slot again on $ATX_PG_MAJOR"
callers_start 2 401 600 0.05
callers_wait || not_ok "the callers finished on $ATX_PG_MAJOR"
# A key used on 15 still suppresses its duplicate.
q -c "SELECT atx_log_keyed('key-100005', 'INSERT INTO numbers(n) VALUES (\$1)', -5)" >/dev/null
verify_exact "$old_major -> $ATX_PG_MAJOR" 120


# --- 18 -> 18: the slot is carried once it has consumed all WAL -------------------------------
applier_stop
callers_start 1 601 650 0
callers_wait
out=$(upgrade_check); rc=$?
check_eq "$ATX_PG_MAJOR: check --before-upgrade refuses while messages wait" 2 "$rc"
check "and says pg_upgrade would refuse the slot" grep -q "pg_upgrade refuses a slot that has not consumed all WAL" <<<"$out"
stop new
target again new
pg_upgrade_ new again --check; rc=$?
check "pg_upgrade --check refuses it too (exit $rc)" test "$rc" != 0
check "because of the slot" grep -qi "slot" "$TEST_DIR/pg_upgrade-new-again.log"
start new
drain
out=$(upgrade_check); rc=$?
check_eq "drained: check --before-upgrade passes" 0 "$rc"
check "and says the slot is carried" grep -q "the slot after pg_upgrade: carried by pg_upgrade" <<<"$out"
slot_before=$(q -c "SELECT slot_name FROM pg_replication_slots")
stop new
pg_upgrade_ new again; rc=$?
check_eq "pg_upgrade $ATX_PG_MAJOR -> $ATX_PG_MAJOR" 0 "$rc"
[ "$rc" = 0 ] || note "$(tail -n 20 "$TEST_DIR/pg_upgrade-new-again.log")"
start again
use again
check_eq "the slot came along" "$slot_before" "$(q -c "SELECT slot_name FROM pg_replication_slots WHERE plugin = 'pg_atx'")"
emit_origin_again
daemon_start
callers_start 1 651 700 0
callers_wait
verify_exact "$ATX_PG_MAJOR -> $ATX_PG_MAJOR" 120

# The dead letters written on 15 run once the table exists: the payloads still authenticate
# after two upgrades (the key file came along).
q -c "CREATE TABLE missing_table(n int)" >/dev/null
dead=$(q -c "SELECT count(*) FROM atx.dead_letter")
out=$("$APPLIER_BIN" retry --all --conninfo "$APP_CONNINFO" --dbname postgres 2>&1); rc=$?
check_eq "retry --all runs every dead letter, those of $old_major included" 0 "$rc"
check_eq "each once" "$dead/$dead" "$(q -c "SELECT count(*) || '/' || count(DISTINCT n) FROM missing_table")"
check "dead letters of $old_major were among them" test "$(q -c "SELECT count(*) FROM missing_table WHERE n % 100000 <= 400")" -gt 0
applier_stop
done_testing
