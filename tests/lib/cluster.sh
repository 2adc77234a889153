# shellcheck shell=bash
# Throwaway PostgreSQL clusters for tests, benchmarks and `tools/atx up`.
#
# Source this file, then:
#   atx_cluster_init DIR [conf-line ...]   initdb into DIR/data, socket in DIR, trust auth
#   atx_cluster_start DIR / atx_cluster_stop DIR [fast|immediate] / atx_cluster_crash DIR
#   eval "$(atx_cluster_env DIR)"          exports PGHOST PGPORT PGUSER PGDATABASE
#   atx_cluster_cleanup_on_exit DIR        stop (immediate) and remove DIR when the shell exits
#
# initdb refuses root, so as root the server runs as the `postgres` OS user (created by the
# postgresql-15 package) and DIR is made owned by it, wherever the clone lives.
#
# The server binaries are those of the pg_config that pg_server.sh chooses (PG_CONFIG, else the
# first server pg_config on PATH, else Debian's 15): ATX_PG_BINDIR.

# shellcheck source=pg_server.sh
. "$(dirname "${BASH_SOURCE[0]}")/pg_server.sh"

atx_server_user() {
    if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi
}

# Runs a command as the server's OS user.
atx_as_server() {
    if [ "$(id -u)" = 0 ]; then
        # From /, so that a working directory the server user cannot enter causes no noise.
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# A directory for a cluster, under /tmp so the server user can always reach it.
atx_cluster_mkdir() {
    local d
    d=$(mktemp -d "${TMPDIR:-/tmp}/pg_atx.${1:-test}.XXXXXX")
    chmod 0755 "$d"
    [ "$(id -u)" = 0 ] && chown postgres: "$d"
    echo "$d"
}

atx_cluster_init() {
    local dir=$1
    shift
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    atx_as_server "$ATX_PG_BINDIR/initdb" -D "$dir/data" -U postgres --auth=trust -N -E UTF8 \
        --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        return 1
    }
    local port=$((20000 + RANDOM % 20000))
    {
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "port = $port"
        echo "wal_level = logical"
        echo "max_replication_slots = 20"
        echo "max_wal_senders = 20"
        echo "fsync = on"
        echo "log_line_prefix = '%m [%p] %q%u@%d '"
        # Only servers that know the parameter (15.19+) may have it set; older ones refuse to start.
        if atx_as_server "$ATX_PG_BINDIR/postgres" -D "$dir/data" -C output_plugin_libraries >/dev/null 2>&1; then
            echo "output_plugin_libraries = 'pgoutput, test_decoding, pg_atx'"
        fi
        for line in "$@"; do echo "$line"; done
    } >>"$dir/data/postgresql.conf"
    echo "$port" >"$dir/port"
}

# ATX_CORE_FILES=1: servers may write core files (pg_ctl -c) into their data directory.
atx_cluster_start() {
    local dir=$1
    atx_as_server "$ATX_PG_BINDIR/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 ${ATX_CORE_FILES:+-c} start >/dev/null || {
        tail -n 30 "$dir/server.log" >&2
        return 1
    }
}

atx_cluster_stop() {
    local dir=$1 mode=${2:-fast}
    [ -f "$dir/data/postmaster.pid" ] || return 0
    atx_as_server "$ATX_PG_BINDIR/pg_ctl" -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null 2>&1
}

atx_cluster_crash() {
    atx_cluster_stop "$1" immediate
}

atx_cluster_env() {
    local dir=$1
    echo "export PGHOST='$dir' PGPORT='$(cat "$dir/port")' PGUSER=postgres PGDATABASE=postgres"
}

atx_cluster_conninfo() {
    local dir=$1
    echo "host=$dir port=$(cat "$dir/port") user=postgres"
}

# Stop and delete the cluster when the calling shell exits, whatever the reason.
atx_cluster_cleanup_on_exit() {
    local dir=$1
    # shellcheck disable=SC2064
    trap "atx_cluster_stop '$dir' immediate; rm -rf '$dir'" EXIT
}
