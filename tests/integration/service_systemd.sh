#!/usr/bin/env bash
# systemd integration without a systemd instance: the unit passes `systemd-analyze verify`, CMake
# installs unit and example config, and sd_notify messages (READY=1, STATUS=, WATCHDOG=1,
# STOPPING=1) reach a NOTIFY_SOCKET served by a test datagram socket. Also: SIGHUP reloads the log
# level from the config file (what `systemctl reload` does).
. "$(dirname "$0")/../lib/testlib.sh"

UNIT=$ATX_ROOT/packaging/atx-applier.service
EXAMPLE=$ATX_ROOT/packaging/atx-applier.conf.example

atx_test_cluster || { not_ok "cluster start"; done_testing; }

# 1. The unit file.
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify wants ExecStart to exist: check a copy that points at the binary under test.
    sed "s|^ExecStart=/usr/local/bin/atx-applier|ExecStart=$APPLIER_BIN|" "$UNIT" >"$TEST_DIR/atx-applier.service"
    out=$(systemd-analyze verify "$TEST_DIR/atx-applier.service" 2>&1); rc=$?
    [ -n "$out" ] && note "$out"
    check_eq "systemd-analyze verify passes" 0 "$rc"
    check "no warnings from verify" test -z "$(echo "$out" | grep -v 'Failed to .* user\|No such process' | grep atx-applier)"
else
    ok "# skip systemd-analyze not installed"
    ok "# skip systemd-analyze not installed"
fi
for k in Type=notify WatchdogSec= Restart=on-failure NoNewPrivileges=yes ProtectSystem=strict \
         ReadWritePaths=/var/lib/atx-applier PrivateTmp=yes ProtectHome=yes User=atx-applier \
         StateDirectory=atx-applier "ExecStart=/usr/local/bin/atx-applier --config /etc/atx-applier.conf"; do
    grep -q "^$k" "$UNIT" || not_ok "unit has $k"
done
ok "unit has the required settings"

# 2. CMake installs both (the applier directory's install rules only).
BUILD_APPLIER=$(dirname "$APPLIER_BIN")
if [ -f "$BUILD_APPLIER/cmake_install.cmake" ]; then
    cmake -DCMAKE_INSTALL_PREFIX="$TEST_DIR/inst" -P "$BUILD_APPLIER/cmake_install.cmake" >/dev/null
    check "install: unit in lib/systemd/system" test -f "$TEST_DIR/inst/lib/systemd/system/atx-applier.service"
    check "install: example config in share/doc/atx-applier" test -f "$TEST_DIR/inst/share/doc/atx-applier/atx-applier.conf.example"
    check "install: binary in bin" test -x "$TEST_DIR/inst/bin/atx-applier"
    check "install: operations.md beside the example" test -f "$TEST_DIR/inst/share/doc/atx-applier/operations.md"
else
    ok "# skip no cmake_install.cmake next to $APPLIER_BIN"
    ok "# skip"; ok "# skip"; ok "# skip"
fi

# 3. sd_notify against a test socket. The example config is used as is, with the connection,
# database, state directory and listener overridden on the command line.
python3 - "$TEST_DIR/notify.sock" "$TEST_DIR/notify.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        data = s.recv(4096).decode()
        for line in data.split("\n"):
            out.write(line + "\n")
        if "STOPPING=1" in data and "WATCHDOG" not in data:
            pass
PY
listener=$!
wait_for 5 test -S "$TEST_DIR/notify.sock"
cp "$EXAMPLE" "$TEST_DIR/applier.conf"
(trap - EXIT; NOTIFY_SOCKET=$TEST_DIR/notify.sock WATCHDOG_USEC=1000000 exec "$APPLIER_BIN" \
    --config "$TEST_DIR/applier.conf" --conninfo "$(conninfo)" --dbname postgres \
    --state-dir "$TEST_DIR/state" --http-listen off >>"$TEST_DIR/applier.log" 2>&1) &
APPLIER_PID=$!
wait_for 15 grep -q '^READY=1' "$TEST_DIR/notify.log"
check "READY=1 received" grep -q '^READY=1' "$TEST_DIR/notify.log"
check "STATUS says streaming" grep -q '^STATUS=postgres: streaming' "$TEST_DIR/notify.log"
wait_for 20 eval "[ \$(grep -c '^WATCHDOG=1' '$TEST_DIR/notify.log') -ge 3 ]"
n=$(grep -c '^WATCHDOG=1' "$TEST_DIR/notify.log")
check "WATCHDOG=1 again and again ($n)" test "$n" -ge 3

# 4. SIGHUP reloads log-level from the config file.
q -c "CREATE TABLE t(v int)" >/dev/null
q -c "SELECT atx_log('INSERT INTO t VALUES (1)')" >/dev/null
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM t') = 1 ]"
check "no debug lines at info" bash -c "! grep -q 'level=debug' '$TEST_DIR/applier.log'"
sed -i 's/^log-level = info/log-level = debug/' "$TEST_DIR/applier.conf"
kill -HUP "$APPLIER_PID"
wait_for 5 grep -q 'event=reloaded log_level=debug' "$TEST_DIR/applier.log"
check "SIGHUP: level reloaded" grep -q 'event=reloaded log_level=debug' "$TEST_DIR/applier.log"
q -c "SELECT atx_log('INSERT INTO t VALUES (2)')" >/dev/null
wait_for 10 grep -q 'level=debug .*event=batch_applied' "$TEST_DIR/applier.log"
check "debug lines after the reload" grep -q 'level=debug .*event=batch_applied' "$TEST_DIR/applier.log"
sed -i 's/^log-level = debug/log-level = nonsense/' "$TEST_DIR/applier.conf"
kill -HUP "$APPLIER_PID"
wait_for 5 grep -q 'event=reload_failed' "$TEST_DIR/applier.log"
check "a bad level is reported, the daemon goes on" grep -q 'event=reload_failed' "$TEST_DIR/applier.log"
check "still running" kill -0 "$APPLIER_PID"

applier_stop
check_eq "SIGTERM exit 0" 0 "$?"
wait_for 5 grep -q '^STOPPING=1' "$TEST_DIR/notify.log"
check "STOPPING=1 on shutdown" grep -q '^STOPPING=1' "$TEST_DIR/notify.log"

# 5. The server is down at start: READY=1 still comes after the first attempt (systemd must not
# fail the start; the daemon retries), STATUS says connecting, and the watchdog keeps going.
: >"$TEST_DIR/notify.log"
atx_cluster_stop "$TEST_DIR" fast
(trap - EXIT; NOTIFY_SOCKET=$TEST_DIR/notify.sock WATCHDOG_USEC=1000000 exec "$APPLIER_BIN" \
    --conninfo "$(conninfo)" --dbname postgres --state-dir "$TEST_DIR/state" --http-listen off \
    >>"$TEST_DIR/applier.log" 2>&1) &
APPLIER_PID=$!
wait_for 10 grep -q '^READY=1' "$TEST_DIR/notify.log"
check "READY=1 with the server down" grep -q '^READY=1' "$TEST_DIR/notify.log"
check "STATUS says connecting" grep -q '^STATUS=postgres: connecting' "$TEST_DIR/notify.log"
wait_for 20 eval "[ \$(grep -c '^WATCHDOG=1' '$TEST_DIR/notify.log') -ge 2 ]"
check "watchdog pings while reconnecting" test "$(grep -c '^WATCHDOG=1' "$TEST_DIR/notify.log")" -ge 2
atx_cluster_start "$TEST_DIR"
wait_for 15 grep -q '^STATUS=postgres: streaming' "$TEST_DIR/notify.log"
check "STATUS follows to streaming" grep -q '^STATUS=postgres: streaming' "$TEST_DIR/notify.log"
applier_stop

# 6. Without NOTIFY_SOCKET nothing changes (foreground, containers): covered by every other test.
kill "$listener" 2>/dev/null
wait "$listener" 2>/dev/null
done_testing
