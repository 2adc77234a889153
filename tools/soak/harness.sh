#!/usr/bin/env bash
# The soak's hands: a shell that sources the test harness (tests/lib/testlib.sh, patroni.sh,
# netns.sh) and runs one command per line from tools/soak/soak.py, so that the soak starts, breaks
# and mends its servers, Patroni and the applier with the very functions the integration tests
# use, and everything it started is stopped when it exits (its EXIT traps), also when soak.py dies
# (end of input).
#
# Protocol: each input line is shell words (quoted by the caller); the command's replies
# (`reply key=value`, one a line) come back on standard output, then "@@rc <status>". Everything else the
# command prints goes to SOAK_LOG.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../tests/lib/testlib.sh
. "$HERE/../../tests/lib/testlib.sh"
# shellcheck source=../../tests/lib/patroni.sh
. "$HERE/../../tests/lib/patroni.sh"
# shellcheck source=../../tests/lib/netns.sh
. "$HERE/../../tests/lib/netns.sh"

SOAK_LOG=${SOAK_LOG:-/dev/null}
REPLY_FILE=$(mktemp)
MODE=""
DB=soak
STATE_MOUNTED=""
APPLIER_ARGS=()
reply() { echo "$*" >>"$REPLY_FILE"; }
# sq SQL...: psql as postgres in the soak's database on the primary, wherever it is now. (Not by
# PGHOST/PGPORT: Patroni and the servers it starts would inherit them.)
sq() {
    if [ "$MODE" = pair ]; then
        psql "$(ha_conninfo_rw "$DB")" -qAtX -v ON_ERROR_STOP=1 "$@"
    else
        q -d "$DB" "$@"
    fi
}

# patroni.sh's EXIT trap runs this, stops its servers (none for a single one), then testlib's
# cleanup stops the single server and removes the directory (kept after a failure, soak_keep).
ha_before_stop() {
    [ -n "$APPLIER_PID" ] && applier_kill
    ha_resume_walsenders
    netns_destroy
    [ -n "$STATE_MOUNTED" ] && umount -l "$TEST_DIR/state" 2>/dev/null
    STATE_MOUNTED=""
    rm -f "$REPLY_FILE"
}

# --- setup ---------------------------------------------------------------------------------
# soak_init single|pair [NODES]: servers (a single one, or NODES Patroni nodes, default 2),
# extension, roles, the applier's state on a tmpfs, the network namespace; replies what soak.py
# needs to connect and which faults this machine allows.
soak_init() {
    MODE=$1
    local why n=1
    [ "$MODE" = pair ] && n=${2:-2}
    if why=$(netns_usable) && netns_create "$n"; then
        reply "netns=${NETNS_NAME}"
        APPLIER_WRAP="ip netns exec $NETNS_NAME"
    else
        netns_destroy
        reply "netns="
        reply "netns_why=${why:-could not create a network namespace}"
    fi
    if [ "$MODE" = single ]; then
        soak_init_single || return 1
    else
        soak_init_pair "$n" || return 1
    fi
    sq -c "CREATE ROLE atx_app LOGIN REPLICATION" -c "GRANT atx_applier TO atx_app" >/dev/null || return 1
    mkdir -p "$TEST_DIR/state"
    if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=128m tmpfs "$TEST_DIR/state"; then
        STATE_MOUNTED=1
        reply "state_tmpfs=1"
    else
        reply "state_tmpfs="
    fi
    reply "dir=$TEST_DIR"
    reply "db=$DB"
}

soak_init_single() {
    local listen=()
    [ -n "$NETNS_NAME" ] && listen=("listen_addresses = '${NETNS_HOST_IP[1]}'")
    ATX_TEST_NAME=soak atx_test_cluster "${listen[@]}" "max_connections = 200" || return 1
    if [ -n "$NETNS_NAME" ]; then
        printf 'host all all %s/24 trust\nhost replication all %s/24 trust\n' "${NETNS_HOST_IP[1]%.*}.0" \
            "${NETNS_HOST_IP[1]%.*}.0" | atx_as_server tee -a "$TEST_DIR/data/pg_hba.conf" >/dev/null
        q -c "SELECT pg_reload_conf()" >/dev/null
    fi
    q -c "CREATE DATABASE $DB" >/dev/null || return 1
    q -d "$DB" -c "CREATE EXTENSION pg_atx" >/dev/null || return 1
    reply "dsn=host=$TEST_DIR port=$(cat "$TEST_DIR/port") user=postgres dbname=$DB"
    reply "nodes="
}

# soak_init_pair N: etcd and N Patroni nodes (synchronous_mode), the database with pg_atx, the key
# on every node, the permanent slot on every node (docs/ha.md's order).
soak_init_pair() {
    local n=$1 i node primary slot nodes="" replicas
    ha_have_tools || { echo "patroni, etcd-server or python3-etcd missing" >&2; return 1; }
    ha_init soak
    if [ -n "$NETNS_NAME" ]; then
        for i in $(seq 1 "$n"); do HA_EXTRA_ADDR[node$i]=${NETNS_HOST_IP[$i]}; done
        HA_EXTRA_NET=${NETNS_HOST_IP[1]%.*}.0/24
    fi
    ha_etcd_start || return 1
    # Patroni's loop every second, not every 2: a new leader names its synchronous standby, and a
    # replica follows a new leader, about a loop after they could; the Patroni lane waits for both.
    HA_LOOP_WAIT=1 ha_nodes_start "$n" sync || return 1
    ha_wait_leader 90 || { echo "no leader within 90 s" >&2; return 1; }
    primary=$HA_LEADER
    replicas=$(ha_replicas)
    for node in $replicas; do
        ha_wait_streaming "$node" 90 || { echo "$node does not stream" >&2; return 1; }
    done
    ha_wait 60 eval 'ha_members | grep -q " sync_standby "' || { echo "no sync standby" >&2; return 1; }
    ha_alter_system_plugins || return 1
    ha_psql "$primary" -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null || return 1
    ha_psql "$primary" -d "$DB" -v ON_ERROR_STOP=1 -c "CREATE EXTENSION pg_atx" -c "CREATE EXTENSION pg_walinspect" \
        >/dev/null || return 1
    # Every node that may be promoted needs the key (docs/ha.md, step 3).
    for node in $replicas; do
        install -m 0600 "$HA_DIR/$primary/data/pg_atx.key" "$HA_DIR/$node/data/pg_atx.key" || return 1
        [ "$(id -u)" = 0 ] && chown postgres: "$HA_DIR/$node/data/pg_atx.key"
    done
    slot=pg_atx_$(ha_psql "$primary" -d "$DB" -c "SELECT oid FROM pg_database WHERE datname = current_database()")
    ha_add_logical_slot "$slot" "$DB" pg_atx || { cat "$HA_DIR/edit-config.log" >&2; return 1; }
    ha_wait_slot "$primary" "$slot" 60 || { echo "slot $slot not on $primary" >&2; return 1; }
    for node in $replicas; do
        # shellcheck disable=SC2015 # the message when either wait failed
        ha_wait_slot "$node" "$slot" 90 && ha_wait_streaming "$node" 90 || { echo "slot $slot not on $node" >&2; return 1; }
    done
    ha_wait 60 eval 'ha_members | grep -q " sync_standby "' || { echo "no sync standby after the slot copies" >&2; return 1; }
    reply "dsn=$(ha_conninfo_rw "$DB")"
    for i in $(seq 1 "$n"); do nodes+="${nodes:+ }node$i:${HA_PG_PORT[node$i]}:${HA_API_PORT[node$i]}"; done
    reply "nodes=$nodes"
    reply "slot=$slot"
}

# The applier's conninfo: over the namespace's veth pairs when there is one, else as the tests do.
conninfo() {
    local c="user=atx_app dbname=$DB" i hosts="" ports=""
    if [ "$MODE" = pair ]; then
        for i in $(seq 1 "$HA_N"); do
            hosts+="${hosts:+,}${NETNS_HOST_IP[$i]:-127.0.0.1}"
            ports+="${ports:+,}${HA_PG_PORT[node$i]}"
        done
        echo "$c host=$hosts port=$ports target_session_attrs=read-write connect_timeout=3"
    elif [ -n "$NETNS_NAME" ]; then
        echo "$c host=${NETNS_HOST_IP[1]} port=$(cat "$TEST_DIR/port") connect_timeout=3"
    else
        echo "$c host=$TEST_DIR port=$(cat "$TEST_DIR/port")"
    fi
}

# --- the applier -----------------------------------------------------------------------------
soak_applier_args() { APPLIER_ARGS=("$@"); }
soak_use_fault_points() { use_fault_points; reply "bin=$APPLIER_BIN"; }
soak_applier_start() {
    PGDATABASE=$DB applier_start "${APPLIER_ARGS[@]}"
    reply "pid=$APPLIER_PID"
}
soak_applier_kill() { applier_kill; }
soak_applier_stop() { applier_stop; reply "rc=$?"; }
# soak_applier_reap: whether the applier exited by itself (replies its status) or still runs.
soak_applier_reap() {
    if [ -z "$APPLIER_PID" ]; then reply "state=none"; return 0; fi
    if kill -0 "$APPLIER_PID" 2>/dev/null; then reply "state=running"; reply "pid=$APPLIER_PID"; return 0; fi
    local rc=0
    wait "$APPLIER_PID" 2>/dev/null || rc=$?
    APPLIER_PID=""
    reply "state=exited"
    reply "rc=$rc"
    reply "why=$(tail -n 30 "$TEST_DIR/applier.log" | grep -o 'event=startup_failed.*' | tail -n 1 | cut -c1-300)"
}

# --- faults ----------------------------------------------------------------------------------
leader_dir() {
    if [ "$MODE" = single ]; then echo "$TEST_DIR"; else echo "$HA_DIR/$(ha_leader)"; fi
}

# soak_crash: the primary stopped with -m immediate. A single server is started again by
# soak_server_start; Patroni restarts its own.
soak_crash() {
    local d
    d=$(leader_dir) && [ -f "$d/data/postmaster.pid" ] || return 1
    ha_resume_walsenders   # a stopped walsender would hold the shutdown 5 s
    atx_as_server "$ATX_PG_BINDIR/pg_ctl" -D "$d/data" -m immediate -w -t 30 stop >/dev/null
}
soak_server_start() { [ "$MODE" = single ] && atx_cluster_start "$TEST_DIR"; }

# soak_stall logical|physical: SIGSTOP the applier's walsender, or the primary's walsenders to its
# replicas; soak_resume: SIGCONT whatever is stopped.
soak_stall() {
    if [ "$1" = physical ]; then
        ha_stall_walsenders "$(ha_leader)"
        return
    fi
    local pid
    pid=$(sq -c "SELECT active_pid FROM pg_replication_slots WHERE slot_type = 'logical' AND database = '$DB' AND active")
    [ -n "$pid" ] && kill -STOP "$pid" && HA_STOPPED_PIDS+=("$pid") && reply "pid=$pid"
}
soak_resume() { ha_resume_walsenders; }

# soak_failover: a host crash of the primary (Patroni and postgres SIGKILLed); its leader key
# expired at once rather than ttl later. soak_node_start NODE brings it back (pg_rewind).
soak_failover() {
    local l
    l=$(ha_leader)
    [ -n "$l" ] || return 1
    ha_kill_node "$l" || return 1
    ha_expire_leader
    reply "node=$l"
}
soak_node_start() { ha_node_start "$1"; }
# soak_reinit NODE: a replica rebuilt from the primary (patronictl reinit; Patroni does it in the
# background).
soak_reinit() { ha_patronictl reinit "$HA_SCOPE" "$1" --force; }

# soak_switchover: patronictl switchover to the synchronous standby (synchronous_mode allows no
# other), in the background (it takes seconds).
soak_switchover() {
    local l r
    l=$(ha_leader) && r=$(ha_members | awk '$2 == "sync_standby" { print $1; exit }')
    [ -n "$l" ] && [ -n "$r" ] || return 1
    (trap - EXIT; ha_switchover "$l" "$r" || cat "$HA_DIR/switchover.log") &
    reply "from=$l"
    reply "to=$r"
}

soak_partition() { netns_cut "$1"; }
soak_heal() { netns_mend "$1"; }

# soak_fill / soak_unfill: the applier's state directory (a tmpfs) full, then space again.
soak_fill() {
    [ -n "$STATE_MOUNTED" ] || return 1
    dd if=/dev/zero of="$TEST_DIR/state/filler" bs=1M 2>/dev/null
    reply "free_kb=$(df -k "$TEST_DIR/state" | awk 'NR == 2 { print $4 }')"
}
soak_unfill() { rm -f "$TEST_DIR/state/filler"; }

soak_members() { reply "members=$(ha_members | tr '\n' ';')"; }
soak_keep() { ATX_KEEP=1; }

exec 3>&1 >>"$SOAK_LOG" 2>&1
while IFS= read -r line; do
    eval "set -- $line"
    : >"$REPLY_FILE"
    "$@" 3>&-
    rc=$?
    cat "$REPLY_FILE" >&3
    echo "@@rc $rc" >&3
done
