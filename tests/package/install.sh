#!/usr/bin/env bash
# The Debian packages as an operator uses them: `apt-get install ./…deb`, a cluster made the
# Debian way (pg_createcluster, pg_ctlcluster) on a free port, the least-privilege applier role
# (LOGIN REPLICATION, member of atx_applier, never a superuser) reaching the server by peer
# authentication through a pg_ident map, the HMAC key outside the data directory, the audit round
# trip through the packaged daemon started as its unit says with the packaged config, then
# `apt-get purge` and nothing left: files, the system user and group, the unit, its enablement.
#
#   bash tests/package/install.sh DIR     DIR holds the two .deb files (tools/atx package)
#
# It changes the machine (packages, a system user, a cluster under /var/lib/postgresql) and undoes
# it, also after a failure; it is not part of `tools/atx test` (all): run it with
# `tools/atx test package` (CI does, last), or in a throwaway overlay of the root filesystem with
# ATX_SANDBOX=1. Needs root and Debian's postgresql-common. The purge removes pg_atx from the
# server's directories: tools/atx installs the build tree's extension again afterwards.
. "$(dirname "$0")/../lib/testlib.sh"

DEBS=${1:?usage: install.sh DIR-WITH-DEBS}
debs=("$DEBS"/postgresql-*-pg-atx_*.deb)
EXT_DEB=${debs[0]}
debs=("$DEBS"/atx-applier_*.deb)
APP_DEB=${debs[0]}
[ "$(id -u)" = 0 ] || { not_ok "needs root (it installs packages)"; done_testing; }
if [ ! -f "$EXT_DEB" ] || [ ! -f "$APP_DEB" ]; then not_ok "both packages in $DEBS"; done_testing; fi
command -v pg_createcluster >/dev/null || { not_ok "pg_createcluster (postgresql-common) is installed"; done_testing; }
EXT_PKG=$(dpkg-deb -f "$EXT_DEB" Package)
VERSION=$(dpkg-deb -f "$APP_DEB" Version)
MAJOR=${EXT_PKG#postgresql-}
MAJOR=${MAJOR%-pg-atx}
note "$EXT_PKG and atx-applier $VERSION"
PKGLIBDIR=/usr/lib/postgresql/$MAJOR/lib
SHAREDIR=/usr/share/postgresql/$MAJOR/extension
CLUSTER=atx_pkg_$$
CONF=/etc/postgresql/$MAJOR/$CLUSTER
KEYDIR=/etc/postgresql/$MAJOR/$CLUSTER-pg_atx   # outside the data directory and the config one
WORK=$(mktemp -d "${ATX_WORK_DIR:-/tmp}/pg_atx.package.XXXXXX")
DAEMON_PID=""
SYSTEMD=""
[ "$(systemctl is-system-running 2>/dev/null)" = running ] ||
    [ "$(systemctl is-system-running 2>/dev/null)" = degraded ] && SYSTEMD=yes

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
known() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -qv "not-installed"; }
as_pg() { (cd / && runuser -u postgres -- "$@"); }
psql_pg() { as_pg psql -X -p "$PORT" -v ON_ERROR_STOP=1 -qAt "$@"; }
# ran DESCRIPTION COMMAND...: passes when COMMAND succeeds; its output is shown when it fails.
ran() {
    local d=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$d"; else not_ok "$d"; note "$(echo "$out" | tail -n 20)"; fi
}

stop_daemon() {
    if [ -n "$SYSTEMD" ]; then
        systemctl stop atx-applier 2>/dev/null
    elif [ -n "$DAEMON_PID" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null
        wait "$DAEMON_PID" 2>/dev/null
    fi
    DAEMON_PID=""
}

# Whatever happens, the machine is left as it was found.
cleanup() {
    [ "$BASHPID" = "$TESTLIB_MAIN_PID" ] || return 0
    stop_daemon
    pg_lsclusters -h 2>/dev/null | awk '{print $2}' | grep -qx "$CLUSTER" &&
        pg_dropcluster --stop "$MAJOR" "$CLUSTER" >/dev/null 2>&1
    rm -rf "$KEYDIR"
    if known atx-applier || known "$EXT_PKG"; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q atx-applier "$EXT_PKG" >/dev/null 2>&1
    fi
    if [ "$T_FAILED" = 0 ]; then rm -rf "$WORK"; else echo "# kept for inspection: $WORK" >&2; fi
}
trap cleanup EXIT

# Not on a machine that has them already: the test would remove someone's installation.
if known atx-applier || known "$EXT_PKG" || getent passwd atx-applier >/dev/null; then
    not_ok "atx-applier, $EXT_PKG or the atx-applier user is already on this machine: not touching it"
    trap - EXIT
    done_testing
fi

# --- install --------------------------------------------------------------------------------
ran "apt-get install ./$(basename "$EXT_DEB") ./$(basename "$APP_DEB")" \
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$EXT_DEB" "$APP_DEB"
check "$EXT_PKG is installed" installed "$EXT_PKG"
check "atx-applier is installed" installed atx-applier
check_eq "atx-applier --version is the package's" "atx-applier $VERSION" "$(atx-applier --version 2>&1)"
check "the module is in the server's library directory" test -f "$PKGLIBDIR/pg_atx.so"
check_eq "the control file's default_version is the release's" "${VERSION%.*}" \
    "$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$SHAREDIR/pg_atx.control")"
check "the full install script of that version" test -f "$SHAREDIR/pg_atx--${VERSION%.*}.sql"
user=$(getent passwd atx-applier)
check "system user atx-applier (uid below 1000, no login shell, home /var/lib/atx-applier)" \
    bash -c '[[ $1 =~ ^atx-applier:x:([0-9]+):[0-9]+:[^:]*:/var/lib/atx-applier:/usr/sbin/nologin$ ]] && [ "${BASH_REMATCH[1]}" -lt 1000 ]' _ "$user"
check_eq "state directory /var/lib/atx-applier" "atx-applier atx-applier 700" "$(stat -c '%U %G %a' /var/lib/atx-applier 2>&1)"
check_eq "/etc/atx-applier.conf readable by the daemon's group only" "root atx-applier 640" "$(stat -c '%U %G %a' /etc/atx-applier.conf 2>&1)"
UNIT=/lib/systemd/system/atx-applier.service
check "the unit runs the packaged binary with the packaged config" \
    grep -qx "ExecStart=/usr/bin/atx-applier --config /etc/atx-applier.conf" "$UNIT"
check "the unit runs as atx-applier" grep -qx "User=atx-applier" "$UNIT"
check "the unit is installed disabled (the config must be edited first)" \
    test ! -e /etc/systemd/system/multi-user.target.wants/atx-applier.service
check "the alert rules are shipped" test -f /usr/share/atx-applier/prometheus/atx-applier.rules.yml
check "a manual page" test -f /usr/share/man/man8/atx-applier.8.gz

# --- a cluster the Debian way ----------------------------------------------------------------
PORT=""
for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    # Nothing listens on it (bash's own TCP connect), and no socket of another cluster is there.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && [ ! -e "/var/run/postgresql/.s.PGSQL.$p" ]; then
        PORT=$p
        break
    fi
done
ran "pg_createcluster $MAJOR $CLUSTER -p $PORT" \
    pg_createcluster "$MAJOR" "$CLUSTER" -p "$PORT" --start-conf=manual -- --auth-local=peer --auth-host=scram-sha-256
install -d -o postgres -g postgres -m 0700 "$KEYDIR"
{
    echo "listen_addresses = ''"
    echo "wal_level = logical"
    echo "shared_preload_libraries = 'pg_atx'"
    echo "atx.key_file = '$KEYDIR/pg_atx.key'"
    if as_pg "/usr/lib/postgresql/$MAJOR/bin/postgres" -C output_plugin_libraries \
        -c config_file="$CONF/postgresql.conf" >/dev/null 2>&1; then
        echo "output_plugin_libraries = 'pgoutput, test_decoding, pg_atx'"
    fi
} >"$CONF/conf.d/pg_atx.conf"
# The daemon's OS user logs in as atx_app, by peer authentication (operations.md), for sessions
# and for replication.
{
    echo "local   app           atx_app   peer map=atx_applier"
    echo "local   replication   atx_app   peer map=atx_applier"
    cat "$CONF/pg_hba.conf"
} >"$WORK/pg_hba.conf" && cat "$WORK/pg_hba.conf" >"$CONF/pg_hba.conf"
echo "atx_applier   atx-applier   atx_app" >>"$CONF/pg_ident.conf"
ran "pg_ctlcluster $MAJOR $CLUSTER start" pg_ctlcluster "$MAJOR" "$CLUSTER" start

psql_pg -d postgres <<'SQL' >/dev/null
CREATE DATABASE app;
CREATE ROLE atx_app LOGIN REPLICATION;
CREATE ROLE clerk LOGIN;
SQL
psql_pg -d app <<'SQL' >/dev/null
CREATE EXTENSION pg_atx;
GRANT atx_applier TO atx_app;
CREATE TABLE orders(id int PRIMARY KEY);
CREATE TABLE audit(msg text, who name);
GRANT INSERT, SELECT ON orders, audit TO clerk;
SQL
check_eq "CREATE EXTENSION made the key outside the data directory" "postgres 600 32" \
    "$(stat -c '%U %a %s' "$KEYDIR/pg_atx.key" 2>&1)"
datadir=$(psql_pg -d app -c "SHOW data_directory")
check "no key in the data directory" test ! -e "$datadir/pg_atx.key"

# --- the packaged daemon with the packaged config, as its unit runs it ----------------------
sed -i -e "s|^conninfo = .*|conninfo = host=/var/run/postgresql port=$PORT user=atx_app connect_timeout=10|" \
    -e "s|^http-listen = .*|http-listen = 127.0.0.1:0|" /etc/atx-applier.conf
check "the packaged config names database app" grep -qx "dbname = app" /etc/atx-applier.conf
out=$(cd / && runuser -u atx-applier -- atx-applier check --config /etc/atx-applier.conf 2>&1); rc=$?
note "$(echo "$out" | grep -v '^  ok')"
check_eq "atx-applier check passes as the daemon's user" 0 "$rc"
check "check: the role is no superuser" bash -c '! grep -q "least privilege" <<<"$1"' _ "$out"
check "check: the key file is outside the data directory" grep -q "ok    key file: atx.key_file = '$KEYDIR/pg_atx.key' (" <<<"$out"

exec_start=$(sed -n 's/^ExecStart=//p' "$UNIT")
if [ -n "$SYSTEMD" ]; then
    systemctl daemon-reload
    systemctl start atx-applier
    check "systemctl start atx-applier" systemctl is-active --quiet atx-applier
    logs() { journalctl -u atx-applier --no-pager -q; }
else
    # No systemd here: the unit's command as the unit's user.
    note "no systemd: running '$exec_start' as $(sed -n 's/^User=//p' "$UNIT")"
    # shellcheck disable=SC2086 # ExecStart is a command line
    (cd / && exec runuser -u "$(sed -n 's/^User=//p' "$UNIT")" -- $exec_start) >"$WORK/applier.log" 2>&1 &
    DAEMON_PID=$!
    logs() { cat "$WORK/applier.log"; }
fi
streaming() { logs | grep -q 'event=streaming'; }
wait_for 30 streaming
check "the daemon streams database app" streaming
streaming || note "$(logs | tail -n 20)"
check_eq "it connected as atx_app, not a superuser" "atx_app f" \
    "$(psql_pg -d app -c "SELECT DISTINCT a.usename, r.rolsuper FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename
                          WHERE a.application_name LIKE 'atx-applier%'" | tr '|' ' ')"

# The round trip: an audit row written by a non-superuser inside a transaction that rolls back.
psql_pg -d app <<'SQL' >/dev/null
SET ROLE clerk;
BEGIN;
INSERT INTO orders VALUES (1);
SELECT atx_log('INSERT INTO audit(msg, who) VALUES ($1, current_user)', 'order 1 attempted');
ROLLBACK;
SQL
arrived() { [ "$(psql_pg -d app -c "SELECT count(*) FROM audit")" = 1 ]; }
wait_for 30 arrived
check_eq "the audit row arrived once, written as its caller; the order is gone" "order 1 attempted|clerk|0" \
    "$(psql_pg -d app -c "SELECT msg, who, (SELECT count(*) FROM orders) FROM audit")"
answer=$(psql_pg -d app -c "SET ROLE clerk" -c "SELECT r->>'status', r->'result'->0->>'answer' FROM atx_exec('SELECT 42 AS answer') r" 2>&1)
check_eq "atx_exec waits for the packaged daemon" "applied|42" "$answer"
port=$(logs | sed -n 's/.*event=http_listening .* port=\([0-9]*\) .*/\1/p' | tail -n 1)
metrics=$(curl -s "http://127.0.0.1:$port/metrics")
check "its metrics count the applied messages" \
    grep -Eq '^atx_messages_applied_total\{database="app"\} [2-9]' <<<"$metrics"
stop_daemon
# runuser forwards the TERM and may return before the daemon has finished its shutdown.
check "the daemon stopped cleanly" wait_for 30 bash -c '! pgrep -u atx-applier >/dev/null'

# --- purge ----------------------------------------------------------------------------------
ran "pg_dropcluster --stop $MAJOR $CLUSTER" pg_dropcluster --stop "$MAJOR" "$CLUSTER"
rm -rf "$KEYDIR"
ran "apt-get purge atx-applier $EXT_PKG" env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q atx-applier "$EXT_PKG"
check "dpkg knows neither package any more" bash -c '! dpkg-query -W atx-applier "$1" >/dev/null 2>&1' _ "$EXT_PKG"
left=""
for f in /usr/bin/atx-applier /etc/atx-applier.conf /var/lib/atx-applier "$UNIT" /usr/share/atx-applier \
         /usr/share/doc/atx-applier "/usr/share/doc/$EXT_PKG" /usr/share/man/man8/atx-applier.8.gz \
         /etc/systemd/system/multi-user.target.wants/atx-applier.service \
         /var/lib/systemd/deb-systemd-helper-enabled/atx-applier.service.dsh-also \
         /var/lib/systemd/deb-systemd-helper-masked/atx-applier.service \
         "$PKGLIBDIR/pg_atx.so" "$SHAREDIR/pg_atx.control" "$SHAREDIR"/pg_atx--*.sql; do
    [ -e "$f" ] && left+=" $f"
done
check_eq "no file of theirs is left" "" "$left"
check "no user atx-applier" bash -c '! getent passwd atx-applier'
check "no group atx-applier" bash -c '! getent group atx-applier'
check "no process of the daemon" bash -c '! pgrep -f "^/usr/bin/atx-applier"'
if [ -n "$SYSTEMD" ]; then
    check "systemd knows no atx-applier unit" bash -c '! systemctl cat atx-applier >/dev/null 2>&1'
fi
done_testing
