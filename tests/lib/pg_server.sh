# shellcheck shell=bash
# Which PostgreSQL server pg_atx is built for, installed into and tested against.
#
# Sourced by cluster.sh. The choice: PG_CONFIG if set; else ATX_PG_BINDIR/pg_config if that is set;
# else the first pg_config on PATH when it belongs to a server; else Debian's 15. Debian's
# /usr/bin/pg_config (libpq-dev) is not a server's when no postgresql-server-dev-NN is installed,
# hence the check. Exports:
#   PG_CONFIG      that pg_config (absolute path)
#   ATX_PG_BINDIR  its --bindir: initdb, pg_ctl, postgres, pg_basebackup ...
#   ATX_PG_MAJOR   its major version (15, 18); empty while the server is not installed yet
# and puts ATX_PG_BINDIR first on PATH, so that psql, pg_recvlogical and pgbench in tests match the
# server. atx_pg_select may be called again (tools/atx does, after installing packages).

ATX_PG_FALLBACK=/usr/lib/postgresql/15/bin/pg_config

# atx_pg_has_server PG_CONFIG: whether it names a server installation (pgxs and a postgres binary).
atx_pg_has_server() {
    local pgxs bindir
    pgxs=$("$1" --pgxs 2>/dev/null) && [ -f "$pgxs" ] || return 1
    bindir=$("$1" --bindir 2>/dev/null) && [ -x "$bindir/postgres" ]
}

# atx_pg_select [PG_CONFIG]: chooses the server (an empty argument chooses automatically).
atx_pg_select() {
    local want=${1:-} c
    if [ -z "$want" ] && [ -n "${ATX_PG_BINDIR:-}" ] && [ -x "$ATX_PG_BINDIR/pg_config" ]; then
        want=$ATX_PG_BINDIR/pg_config
    fi
    if [ -n "$want" ]; then
        c=$(command -v "$want" 2>/dev/null) || c=$want
    else
        c=$(command -v pg_config 2>/dev/null) || c=""
        if [ -z "$c" ] || ! atx_pg_has_server "$c"; then
            c=$ATX_PG_FALLBACK
        elif [ -x "$("$c" --bindir)/pg_config" ]; then
            # Debian's /usr/bin/pg_config forwards to the newest postgresql-server-dev-NN: name that
            # one, so that installing another major later does not change a configured build.
            c=$("$c" --bindir)/pg_config
        fi
    fi
    case $c in /*) ;; *) c=$PWD/$c ;; esac
    PG_CONFIG=$c
    if [ -x "$c" ] && atx_pg_has_server "$c"; then
        ATX_PG_BINDIR=$("$c" --bindir)
        ATX_PG_MAJOR=$("$c" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
    else
        ATX_PG_BINDIR=${ATX_PG_BINDIR:-$(dirname "$c")}
        ATX_PG_MAJOR=""
    fi
    case ":$PATH:" in
    ":$ATX_PG_BINDIR:"*) ;;
    *) PATH=$ATX_PG_BINDIR:$PATH ;;
    esac
    export PG_CONFIG ATX_PG_BINDIR ATX_PG_MAJOR PATH
}

atx_pg_select "${PG_CONFIG:-}"
