# shellcheck shell=bash
# Patroni clusters on loopback for the HA tests: one etcd member and N Patroni nodes, every port
# chosen free at run time, everything under one throwaway directory, nothing left running.
#
#   . tests/lib/testlib.sh; . tests/lib/patroni.sh
#   ha_init NAME                     HA_DIR (also TEST_DIR: testlib keeps it when a check failed)
#   HA_EXTRA_ADDR[NODE]=IP, HA_EXTRA_NET=CIDR (before ha_nodes_start): NODE's server also listens
#                                    on IP, and CIDR may connect (e.g. from a namespace, netns.sh)
#   ha_budget SECONDS; ha_phase LABEL; ha_phases       timing budget and per-phase durations
#   ha_etcd_start                    one etcd member on 127.0.0.1, free client and peer ports
#   ha_nodes_start N [sync]          N Patroni nodes (node1..nodeN); sync: synchronous_mode true
#                                    (HA_MAX_LAG, HA_LOOP_WAIT: maximum_lag_on_failover, loop_wait)
#   ha_node_start NODE               (re)start one node's Patroni, e.g. after ha_kill_node
#   ha_wait_leader SECONDS [NOT]     until a writable leader (other than NOT) answers; sets HA_LEADER
#   ha_leader / ha_replicas          current names, from Patroni's REST API
#   ha_pg_port NODE / ha_api_port NODE / ha_psql NODE [psql args]
#   ha_conninfo_rw DBNAME            multi-host conninfo over all nodes, target_session_attrs=read-write
#   ha_alter_system_plugins          output_plugin_libraries by ALTER SYSTEM where the server knows it
#   ha_add_logical_slot NAME DB PLUGIN    permanent slot in the DCS config (patronictl edit-config)
#   ha_wait_slot NODE NAME SECONDS   until NODE has the slot (the replica's copy)
#   ha_stall_walsenders NODE / ha_resume_walsenders    SIGSTOP / SIGCONT the physical walsenders
#   ha_kill_postgres NODE            SIGKILL the postmaster and all its children, by pid
#   ha_kill_node NODE                SIGKILL the node's Patroni, then its postgres (a host crash)
#   ha_expire_leader                 delete the leader key in etcd (what its ttl would do later)
#   ha_switchover LEADER CANDIDATE   patronictl switchover --force
#   ha_stop_all                      stop everything (also runs from the EXIT trap)
#
# Servers and Patroni run as the `postgres` OS user when we are root (initdb refuses root);
# Patroni runs PostgreSQL from ATX_PG_BINDIR, as tests/lib/cluster.sh does.

if ! declare -F atx_as_server >/dev/null; then
    # shellcheck source=cluster.sh
    . "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cluster.sh"
fi

HA_PY=/usr/bin/python3   # Debian's python: Patroni and python3-etcd live there
HA_SCOPE=pg_atx_ha
HA_DIR=""
HA_N=0
HA_LEADER=""
HA_ETCD_PID=""
HA_ETCD_CLIENT_PORT=""
HA_ETCD_PEER_PORT=""
HA_SYNC=false
HA_PORTS_TAKEN=" "
HA_STOPPED_PIDS=()
HA_EXTRA_NET=""
declare -A HA_PG_PORT HA_API_PORT HA_PATRONI_PID HA_RUNUSER_PID HA_EXTRA_ADDR

ha_have_tools() {
    command -v patroni >/dev/null && command -v patronictl >/dev/null && command -v etcd >/dev/null &&
        command -v curl >/dev/null && "$HA_PY" -c 'import etcd, psycopg2, yaml' 2>/dev/null
}

# --- timing --------------------------------------------------------------------------------
HA_BUDGET_END=0
HA_PHASE_NAME=""
HA_PHASE_START=0
HA_PHASE_LOG=()
ha_budget() { HA_BUDGET_END=$((SECONDS + $1)); }
ha_budget_left() { echo $((HA_BUDGET_END - SECONDS)); }
# ha_phase LABEL: closes the running phase (records its duration) and opens LABEL ("" to close).
ha_phase() {
    if [ -n "$HA_PHASE_NAME" ]; then
        HA_PHASE_LOG+=("$HA_PHASE_NAME $((SECONDS - HA_PHASE_START))")
        echo "# phase $HA_PHASE_NAME: $((SECONDS - HA_PHASE_START)) s (budget left $(ha_budget_left) s)"
    fi
    HA_PHASE_NAME=$1
    HA_PHASE_START=$SECONDS
}
ha_phases() { local p; for p in "${HA_PHASE_LOG[@]}"; do printf '%s s, ' "$p"; done | sed 's/, $//'; }

# --- ports and processes -------------------------------------------------------------------
# ha_free_port VAR: a port on 127.0.0.1 that nothing holds now and that this run has not handed
# out yet, below the ephemeral range so that outgoing connections do not take it meanwhile.
ha_free_port() {
    local p tries=0
    while [ $tries -lt 200 ]; do
        tries=$((tries + 1))
        p=$((20000 + RANDOM % 12000))
        case $HA_PORTS_TAKEN in *" $p "*) continue ;; esac
        if "$HA_PY" -c 'import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))' "$p" 2>/dev/null; then
            HA_PORTS_TAKEN+="$p "
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    echo "ha_free_port: no free port found" >&2
    return 1
}

# ha_wait SECONDS COMMAND...: polls every 0.2 s until COMMAND succeeds.
ha_wait() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
}

ha_init() {
    HA_DIR=$(atx_cluster_mkdir "ha_${1:-test}")
    # shellcheck disable=SC2034   # testlib's cleanup removes it, or keeps it when a check failed
    TEST_DIR=$HA_DIR
    mkdir -p "$HA_DIR/bin"
}

# --- etcd ----------------------------------------------------------------------------------
ha_etcd_healthy() {
    curl -fsS -m 2 "http://127.0.0.1:$HA_ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

ha_etcd_start() {
    ha_free_port HA_ETCD_CLIENT_PORT || return 1
    ha_free_port HA_ETCD_PEER_PORT || return 1
    local c=http://127.0.0.1:$HA_ETCD_CLIENT_PORT p=http://127.0.0.1:$HA_ETCD_PEER_PORT
    (trap - EXIT; exec etcd --name ha --data-dir "$HA_DIR/etcd" \
        --listen-client-urls "$c" --advertise-client-urls "$c" \
        --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
        --initial-cluster "ha=$p" --initial-cluster-state new --initial-cluster-token "ha-$$" \
        >"$HA_DIR/etcd.log" 2>&1) &
    HA_ETCD_PID=$!
    ha_wait 30 ha_etcd_healthy || { tail -n 20 "$HA_DIR/etcd.log" >&2; return 1; }
}

# --- Patroni nodes -------------------------------------------------------------------------
# ha_node_config NODE: the node's Patroni configuration (the one docs/ha.md shows).
ha_node_config() {
    local node=$1 d=$HA_DIR/$1
    cat <<EOF
# Patroni 3.0 configuration of $node, written by tests/lib/patroni.sh (ports and paths vary per run)
scope: $HA_SCOPE
name: $node
log:
  level: INFO
restapi:
  listen: 127.0.0.1:${HA_API_PORT[$node]}
  connect_address: 127.0.0.1:${HA_API_PORT[$node]}
etcd3:
  hosts: 127.0.0.1:$HA_ETCD_CLIENT_PORT
watchdog:
  mode: off
bootstrap:
  # Written to the DCS once, by the node that initialises the cluster; change it later with
  # patronictl edit-config (the permanent slot is added that way, once the database exists).
  dcs:
    ttl: 20
    # HA_LOOP_WAIT overrides it (the soak: 1, so that a sync standby is named and a new leader
    # followed within a second rather than two).
    loop_wait: ${HA_LOOP_WAIT:-2}
    retry_timeout: 5
    # Patroni's default; HA_MAX_LAG overrides it (ha_patroni.sh does).
    maximum_lag_on_failover: ${HA_MAX_LAG:-1048576}
    synchronous_mode: $HA_SYNC
    # A demote whose postgres never stops (PostgreSQL 15: a fast shutdown during crash recovery
    # waits for the checkpointer forever) is ended with an immediate stop after this long instead
    # of holding the leader lock for good. Patroni applies it in synchronous mode only.
    primary_stop_timeout: 30
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: logical
        hot_standby_feedback: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 20
        max_replication_slots: 20
        wal_retrieve_retry_interval: 1s
        shared_preload_libraries: pg_atx
        # output_plugin_libraries is NOT here: Patroni 3.0 drops parameters its validator does
        # not know. It is set with ALTER SYSTEM on every node (ha_alter_system_plugins).
  initdb:
  - encoding: UTF8
  - locale: C.UTF-8
postgresql:
  listen: 127.0.0.1${HA_EXTRA_ADDR[$node]:+,${HA_EXTRA_ADDR[$node]}}:${HA_PG_PORT[$node]}
  connect_address: 127.0.0.1:${HA_PG_PORT[$node]}
  data_dir: $d/data
  bin_dir: $ATX_PG_BINDIR
  pgpass: $d/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: $d
  pg_hba:
  - local all all trust
  - local replication all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
EOF
    [ -z "$HA_EXTRA_NET" ] || printf '  - host all all %s trust\n  - host replication all %s trust\n' "$HA_EXTRA_NET" "$HA_EXTRA_NET"
}

# ha_nodes_start N [sync]: writes node1..nodeN's configuration and starts them.
ha_nodes_start() {
    local n=$1 i node
    [ "${2:-}" = sync ] && HA_SYNC=true
    HA_N=$n
    for i in $(seq 1 "$n"); do
        node=node$i
        ha_free_port "HA_PG_PORT[$node]" || return 1
        ha_free_port "HA_API_PORT[$node]" || return 1
        mkdir -p "$HA_DIR/$node"
        ha_node_config "$node" >"$HA_DIR/$node.yml"
        [ "$(id -u)" = 0 ] && chown -R postgres: "$HA_DIR/$node" "$HA_DIR/$node.yml"
    done
    for i in $(seq 1 "$n"); do ha_node_start "node$i" || return 1; done
}

# ha_node_start NODE: Patroni as the server user; HA_PATRONI_PID is Patroni itself (runuser
# forks), so that a SIGKILL hits the process that holds the leader key.
ha_node_start() {
    local node=$1 p=""
    if [ "$(id -u)" = 0 ]; then
        (trap - EXIT; cd / && exec runuser -u postgres -- patroni "$HA_DIR/$node.yml") \
            >>"$HA_DIR/$node/patroni.log" 2>&1 &
        HA_RUNUSER_PID[$node]=$!
        # shellcheck disable=SC2016   # evaluated by ha_wait, here
        ha_wait 10 eval 'p=$(pgrep -P "${HA_RUNUSER_PID[$node]}" | head -n 1); [ -n "$p" ]' || return 1
        HA_PATRONI_PID[$node]=$p
    else
        (trap - EXIT; exec patroni "$HA_DIR/$node.yml") >>"$HA_DIR/$node/patroni.log" 2>&1 &
        HA_RUNUSER_PID[$node]=""
        HA_PATRONI_PID[$node]=$!
    fi
}

ha_pg_port() { echo "${HA_PG_PORT[$1]}"; }
ha_api_port() { echo "${HA_API_PORT[$1]}"; }

# ha_psql NODE [psql args]: unaligned, tuples only, as postgres over TCP.
ha_psql() {
    local node=$1
    shift
    psql -qAtX -h 127.0.0.1 -p "${HA_PG_PORT[$node]}" -U postgres "$@"
}

ha_conninfo_rw() {
    local hosts="" ports="" i
    for i in $(seq 1 "$HA_N"); do
        hosts+="${hosts:+,}127.0.0.1"
        ports+="${ports:+,}${HA_PG_PORT[node$i]}"
    done
    echo "host=$hosts port=$ports user=postgres dbname=$1 target_session_attrs=read-write connect_timeout=3"
}

# ha_cluster_json: Patroni's /cluster document from the first node that answers.
ha_cluster_json() {
    local i
    for i in $(seq 1 "$HA_N"); do
        curl -fsS -m 2 "http://127.0.0.1:${HA_API_PORT[node$i]}/cluster" 2>/dev/null && return 0
    done
    return 1
}

# ha_members: "name role state lag" per member (role: leader, sync_standby, replica).
ha_members() {
    local j
    j=$(ha_cluster_json) || return 1
    "$HA_PY" -c 'import json, sys
for m in json.loads(sys.argv[1]).get("members", []):
    print(m["name"], m.get("role", "?"), m.get("state", "?"), m.get("lag", "-"))' "$j"
}
ha_leader() { ha_members | awk '$2 == "leader" { print $1 }'; }
ha_replicas() { ha_members | awk '$2 != "leader" { print $1 }'; }

ha_is_writable() { [ "$(ha_psql "$1" -d postgres -c 'SELECT NOT pg_is_in_recovery()' 2>/dev/null)" = t ]; }

# ha_wait_leader SECONDS [NOT]: a leader other than NOT that accepts writes; sets HA_LEADER.
_ha_leader_ready() {
    HA_LEADER=$(ha_leader)
    [ -n "$HA_LEADER" ] && [ "$HA_LEADER" != "$1" ] && ha_is_writable "$HA_LEADER"
}
ha_wait_leader() { ha_wait "$1" _ha_leader_ready "${2:-}"; }

# ha_wait_streaming NODE SECONDS: NODE is a replica whose walreceiver is streaming.
_ha_streaming() { [ "$(ha_psql "$1" -d postgres -c 'SELECT status FROM pg_stat_wal_receiver' 2>/dev/null)" = streaming ]; }
ha_wait_streaming() { ha_wait "$2" _ha_streaming "$1"; }

# ha_wait_sync NODE SECONDS: Patroni lists NODE as the synchronous standby.
_ha_is_sync() { local m; m=$(ha_members) && grep -q "^$1 sync_standby " <<<"$m"; }
ha_wait_sync() { ha_wait "$2" _ha_is_sync "$1"; }

# ha_alter_system_plugins: output_plugin_libraries on every running node, where the server
# knows the parameter (15.19+); Patroni would drop it from its own parameters.
ha_alter_system_plugins() {
    local i node
    for i in $(seq 1 "$HA_N"); do
        node=node$i
        atx_as_server "$ATX_PG_BINDIR/postgres" -D "$HA_DIR/$node/data" -C output_plugin_libraries \
            >/dev/null 2>&1 || continue
        ha_psql "$node" -d postgres -c "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, pg_atx" \
            -c "SELECT pg_reload_conf()" >/dev/null || return 1
    done
}

ha_patronictl() { patronictl -c "$HA_DIR/node1.yml" "$@"; }

# ha_add_logical_slot NAME DB PLUGIN: a permanent logical slot in the DCS configuration. Patroni
# creates it on the primary (at the current position) and copies it to the replicas.
ha_add_logical_slot() {
    printf 'slots:\n  %s:\n    type: logical\n    database: %s\n    plugin: %s\n' "$1" "$2" "$3" |
        ha_patronictl edit-config --apply - --force -q >"$HA_DIR/edit-config.log" 2>&1
}

ha_has_slot() { [ "$(ha_psql "$1" -d postgres -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$2'" 2>/dev/null)" = 1 ]; }
ha_wait_slot() { ha_wait "$3" ha_has_slot "$1" "$2"; }

# --- faults --------------------------------------------------------------------------------
ha_postmaster_pid() {
    local f=$HA_DIR/$1/data/postmaster.pid
    [ -r "$f" ] && head -n 1 "$f"
}

# ha_walsender_pids NODE: the physical walsenders (to the replicas), not the applier's logical one.
ha_walsender_pids() {
    ha_psql "$1" -d postgres -c "SELECT r.pid FROM pg_stat_replication r
        WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.active_pid = r.pid AND s.slot_type = 'logical')"
}

ha_stall_walsenders() {
    local pids
    mapfile -t pids < <(ha_walsender_pids "$1")
    [ ${#pids[@]} -gt 0 ] || return 1
    kill -STOP "${pids[@]}" && HA_STOPPED_PIDS+=("${pids[@]}")
}

ha_resume_walsenders() {
    local p
    for p in "${HA_STOPPED_PIDS[@]}"; do kill -CONT "$p" 2>/dev/null; done
    HA_STOPPED_PIDS=()
}

# ha_kill_postgres NODE: SIGKILL the postmaster and every child, by pid, as a host crash would.
# The postmaster is stopped first, so that it forks nothing more, and killed last: a backend that
# outlives it by even a few ms sees the postmaster die and goes on for a while (a COMMIT waiting
# for the synchronous standby gives up the wait and the procedure commits on, unheard).
ha_kill_postgres() {
    local pm kids
    pm=$(ha_postmaster_pid "$1") || return 1
    [ -n "$pm" ] && kill -0 "$pm" 2>/dev/null || return 1
    kill -STOP "$pm"
    kids=$(pgrep -P "$pm" | tr '\n' ' ')
    # shellcheck disable=SC2086
    [ -n "$kids" ] && kill -KILL $kids 2>/dev/null
    kill -KILL "$pm"
    ha_wait 10 eval "! kill -0 $pm 2>/dev/null"
    # Forget stalled walsenders that died with it: their pids may be reused.
    local p alive=()
    for p in "${HA_STOPPED_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
    HA_STOPPED_PIDS=("${alive[@]}")
}

ha_kill_patroni() {
    local p=${HA_PATRONI_PID[$1]:-} kids
    [ -n "$p" ] || return 0
    kids=$(pgrep -P "$p" | tr '\n' ' ')   # pg_rewind, pg_basebackup, postgres --single
    # shellcheck disable=SC2086
    kill -KILL "$p" $kids 2>/dev/null
    [ -n "${HA_RUNUSER_PID[$1]:-}" ] && wait "${HA_RUNUSER_PID[$1]}" 2>/dev/null
    HA_PATRONI_PID[$1]=""
    HA_RUNUSER_PID[$1]=""
}

# ha_kill_node NODE: a host crash. Patroni first, so that nothing restarts the server or
# releases the leader key: the other nodes see the key expire after ttl.
ha_kill_node() {
    ha_kill_patroni "$1"
    ha_kill_postgres "$1"
}

# ha_expire_leader: the leader key gone at once, as ttl seconds after a host crash: the replicas
# hold their election at their next loop instead of ttl later.
ha_expire_leader() {
    local key
    key=$(printf '/service/%s/leader' "$HA_SCOPE" | base64 -w0)
    curl -fsS -m 5 -X POST "http://127.0.0.1:$HA_ETCD_CLIENT_PORT/v3/kv/deleterange" -d "{\"key\": \"$key\"}" >/dev/null
}

ha_switchover() {
    ha_patronictl switchover --leader "$1" --candidate "$2" --force >"$HA_DIR/switchover.log" 2>&1
}

# --- cleanup -------------------------------------------------------------------------------
ha_stop_all() {
    local node pm
    ha_resume_walsenders
    for node in "${!HA_PATRONI_PID[@]}"; do ha_kill_patroni "$node"; done
    for node in "${!HA_PG_PORT[@]}"; do
        [ -f "$HA_DIR/$node/data/postmaster.pid" ] || continue
        pm=$(ha_postmaster_pid "$node")
        atx_as_server "$ATX_PG_BINDIR/pg_ctl" -D "$HA_DIR/$node/data" -m immediate -w -t 20 stop >/dev/null 2>&1
        [ -n "$pm" ] && kill -0 "$pm" 2>/dev/null && ha_kill_postgres "$node"
    done
    if [ -n "$HA_ETCD_PID" ]; then
        kill -TERM "$HA_ETCD_PID" 2>/dev/null
        ha_wait 10 eval "! kill -0 $HA_ETCD_PID 2>/dev/null" || kill -KILL "$HA_ETCD_PID" 2>/dev/null
        wait "$HA_ETCD_PID" 2>/dev/null
        HA_ETCD_PID=""
    fi
}

HA_MAIN_PID=$BASHPID
_ha_exit() {
    [ "$BASHPID" = "$HA_MAIN_PID" ] || return 0
    declare -F ha_before_stop >/dev/null && ha_before_stop
    ha_stop_all
    declare -F _testlib_cleanup >/dev/null && _testlib_cleanup
}
trap _ha_exit EXIT
