# shellcheck shell=bash
# Helpers for integration tests: TAP-style results, a cluster per test file, the applier.
#
#   . "$(dirname "$0")/../lib/testlib.sh"
#   atx_test_cluster             # fresh cluster with pg_atx installed in database postgres
#   applier_start [args]; applier_stop; applier_kill
#   use_fault_points             # this test arms ATX_FAULT: run atx-applier-faults from now on
#   ok "description" / not_ok "description" / check "description" test-command...
#   wait_for SECONDS CMD... / wait_for_lock SECONDS TABLE / wait_settled SECONDS: waits on a
#   condition, never a sleep that hopes it holds by then
#   done_testing                 # exits non-zero if anything failed
set -uo pipefail

TESTLIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ATX_ROOT=$(cd "$TESTLIB_DIR/../.." && pwd)
# shellcheck source=cluster.sh
. "$TESTLIB_DIR/cluster.sh"
# tools/atx builds each major into build/pg<major> (and passes ATX_BUILD_DIR to tests).
ATX_BUILD_DIR=${ATX_BUILD_DIR:-$ATX_ROOT/build/pg$ATX_PG_MAJOR}
APPLIER_BIN=${APPLIER_BIN:-$ATX_BUILD_DIR/applier/atx-applier}
# The same daemon with the test-only fault points (ATX_FAULT); built beside it, never installed.
APPLIER_FAULTS_BIN=${APPLIER_FAULTS_BIN:-$(dirname "$APPLIER_BIN")/atx-applier-faults}

T_NUM=0
T_FAILED=0
ok() { T_NUM=$((T_NUM + 1)); echo "ok $T_NUM - $*"; }
not_ok() { T_NUM=$((T_NUM + 1)); T_FAILED=$((T_FAILED + 1)); echo "not ok $T_NUM - $*"; }
# check DESCRIPTION COMMAND...: passes when COMMAND exits 0.
check() {
    local d=$1; shift
    if "$@"; then ok "$d"; else not_ok "$d"; fi
}
# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() {
    if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1 (expected '$2', got '$3')"; fi
}
note() { echo "# $*"; }
# use_seed: seeds $RANDOM from ATX_SEED (or a fresh value) and prints it, so that a failing run
# can be repeated exactly. Sets SEED.
use_seed() {
    SEED=${ATX_SEED:-$RANDOM}
    RANDOM=$SEED
    note "seed $SEED (rerun with ATX_SEED=$SEED)"
}
done_testing() {
    echo "1..$T_NUM"
    [ "$T_FAILED" = 0 ]
    exit $?
}

TEST_DIR=""
APPLIER_PID=""

TESTLIB_MAIN_PID=$BASHPID
_testlib_cleanup() {
    # A forked child that is signalled before it execs still carries this trap: only the test's
    # own shell may stop and delete the cluster.
    [ "$BASHPID" = "$TESTLIB_MAIN_PID" ] || return 0
    [ -n "$APPLIER_PID" ] && kill -9 "$APPLIER_PID" 2>/dev/null
    if [ -n "$TEST_DIR" ]; then
        atx_cluster_stop "$TEST_DIR" immediate
        if [ "$T_FAILED" = 0 ] && [ -z "${ATX_KEEP:-}" ]; then
            rm -rf "$TEST_DIR"
        else
            echo "# kept for inspection: $TEST_DIR" >&2
        fi
    fi
}
trap _testlib_cleanup EXIT

# psql against the test cluster: q SQL -> unaligned, tuples only.
q() { psql -qAtX -v ON_ERROR_STOP=1 "$@"; }

# Starts a fresh cluster with pg_atx preloaded (atx-applier needs its apply registry; a later
# "shared_preload_libraries = ..." argument overrides it) and installs it in database postgres.
# ATX_TEST_NAME names its directory (default: the test file's name).
atx_test_cluster() {
    TEST_DIR=$(atx_cluster_mkdir "${ATX_TEST_NAME:-$(basename "$0" .sh)}")
    atx_cluster_init "$TEST_DIR" "shared_preload_libraries = 'pg_atx'" "$@" || return 1
    atx_cluster_start "$TEST_DIR" || return 1
    eval "$(atx_cluster_env "$TEST_DIR")"
    q -c "CREATE EXTENSION pg_atx" >/dev/null
}

conninfo() { atx_cluster_conninfo "$TEST_DIR"; }

# has_fault_points BINARY: the binary was built with the fault points (the installed one is not).
has_fault_points() { grep -q 'event=fault_injected' "$1" 2>/dev/null; }

use_fault_points() {
    if ! has_fault_points "$APPLIER_FAULTS_BIN"; then
        not_ok "fault points: $APPLIER_FAULTS_BIN is missing or has none (configure with -DATX_FAULT_INJECTION=ON)"
        done_testing
    fi
    APPLIER_BIN=$APPLIER_FAULTS_BIN
}

# The metrics listener picks a free port (the default one may be taken by another applier);
# a test's own --http-listen comes later and wins. APPLIER_WRAP: a command that execs its arguments
# (e.g. "ip netns exec NAME", tests/lib/netns.sh), so that APPLIER_PID is still the applier's.
applier_start() {
    # An armed fault in a binary without fault points would silently test nothing.
    if [ -n "${ATX_FAULT:-}" ] && ! has_fault_points "$APPLIER_BIN"; then
        not_ok "ATX_FAULT=$ATX_FAULT set, but $APPLIER_BIN has no fault points (call use_fault_points)"
        done_testing
    fi
    # shellcheck disable=SC2086   # APPLIER_WRAP is words on purpose
    (trap - EXIT; exec ${APPLIER_WRAP:-} "$APPLIER_BIN" --conninfo "$(conninfo)" --dbname "${PGDATABASE}" \
        --state-dir "$TEST_DIR/state" --log-level "${APPLIER_LOG_LEVEL:-info}" --http-listen 127.0.0.1:0 "$@" \
        >>"$TEST_DIR/applier.log" 2>&1) &
    APPLIER_PID=$!
}

applier_stop() {
    [ -n "$APPLIER_PID" ] || return 0
    kill -TERM "$APPLIER_PID" 2>/dev/null
    local rc=0
    wait "$APPLIER_PID" || rc=$?
    APPLIER_PID=""
    return $rc
}

applier_kill() {
    [ -n "$APPLIER_PID" ] || return 0
    kill -9 "$APPLIER_PID" 2>/dev/null
    wait "$APPLIER_PID" 2>/dev/null
    APPLIER_PID=""
}

# wait_for SECONDS COMMAND...: polls every 0.1 s until COMMAND succeeds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.1
    done
}

# wait_for_lock SECONDS TABLE [MODE]: until some backend holds MODE (default AccessExclusiveLock)
# on TABLE of the current database: a lock holder started in the background has its lock.
wait_for_lock() { wait_for "$1" _lock_held "$2" "${3:-AccessExclusiveLock}"; }
_lock_held() {
    [ "$(q -c "SELECT count(*) > 0 FROM pg_locks WHERE relation = '$1'::regclass AND mode = '$2' AND granted" 2>/dev/null)" = t ]
}

# wait_settled SECONDS [SQL_FN]: until the applier is done with everything the WAL holds now: the
# slot of the current database confirmed past the WAL written so far (every message before it
# handled durably, never sent again) and no apply session inside a transaction. Whatever was
# going to be applied twice has been by then. SQL_FN runs psql (default q).
wait_settled() {
    local fn=${2:-q} lsn
    lsn=$($fn -c "SELECT pg_current_wal_insert_lsn()") || return 1
    wait_for "$1" _settled "$fn" "$lsn"
}
_settled() {
    [ "$($1 -c "SELECT (SELECT confirmed_flush_lsn >= '$2' FROM pg_replication_slots WHERE slot_name = atx.slot_name())
                       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity
                                        WHERE application_name LIKE 'atx-applier apply%' AND xact_start IS NOT NULL)" 2>/dev/null)" = t ]
}

# Waits until atx-applier created the slot of the current database and streams it. Streams: the
# backend holding it is a walsender (while the slot is being created, the creating backend holds
# it, and atx_log still refuses: the slot is not persistent yet).
wait_for_slot() {
    wait_for 30 bash -c "psql -qAtX -c \"SELECT 1 FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = atx.slot_name() AND a.backend_type = 'walsender'\" | grep -q 1"
}

# standby_start DIR: a streaming physical standby of the test cluster in DIR (made by
# atx_cluster_mkdir), started, with its own socket directory (no TCP: listen_addresses = ''
# comes with the base backup). Ends the test when that fails.
standby_start() {
    local dir=$1
    atx_as_server "$ATX_PG_BINDIR/pg_basebackup" -h "$TEST_DIR" -p "$(cat "$TEST_DIR/port")" -U postgres \
        -D "$dir/data" -R -X stream >/dev/null 2>"$TEST_DIR/basebackup.err" ||
        { not_ok "pg_basebackup ($(head -n 2 "$TEST_DIR/basebackup.err"))"; done_testing; }
    cp "$TEST_DIR/port" "$dir/port"
    echo "unix_socket_directories = '$dir'" >>"$dir/data/postgresql.conf"
    atx_cluster_start "$dir" || { not_ok "standby start"; done_testing; }
}
