#!/usr/bin/env bash
# Fault 4: connection loss. (a) pg_terminate_backend of the walsender ('atx-applier') and of the
# apply sessions ('atx-applier apply'), alternately, 10 times during a burst. (b) the applier talks
# to the server over TCP through tests/lib/tcp_proxy.py, which drops every connection (RST) and
# stalls (forwards nothing) several times during a burst; one stall outlasts wal_sender_timeout.
# Counts must be exact after each part.
. "$(dirname "$0")/../lib/testlib.sh"

use_seed
# The shared workload: numbered callers, rollbacks, keys, messages built to fail.
. "$(dirname "$0")/../lib/workload.sh"

atx_test_cluster "listen_addresses = '127.0.0.1'" "wal_sender_timeout = '5s'" || { not_ok "cluster start"; done_testing; }
{
    echo "host all all 127.0.0.1/32 trust"
    echo "host replication all 127.0.0.1/32 trust"
} | atx_as_server tee -a "$TEST_DIR/data/pg_hba.conf" >/dev/null
q -c "SELECT pg_reload_conf()" >/dev/null
workload_setup
CALLERS=3
ARGS=(--batch-size 50 --status-interval-ms 500)
applier_start "${ARGS[@]}"
wait_for_slot || not_ok "applier created the slot"

# (a) pg_terminate_backend, alternating walsender / apply session.
terminate() { # terminate APPLICATION_NAME -> number of backends terminated
    q -c "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE '$1'"
}
# The walsender and at least one apply session ('atx-applier apply N') connected.
both_connected() {
    q -c "SELECT count(DISTINCT split_part(application_name, ' ', 2)) FROM pg_stat_activity WHERE (application_name = 'atx-applier' OR application_name LIKE 'atx-applier apply %') $1" | grep -qx 2
}
callers_start $CALLERS 1 600 0.5
TERM_WS=0; TERM_APPLY=0
for k in $(seq 1 10); do
    wait_for 5 both_connected "" ||
        note "terminate $k: applier not connected with its walsender and apply sessions"
    sleep "0.$((RANDOM % 9 + 1))"
    if [ $((k % 2)) = 1 ]; then
        TERM_WS=$((TERM_WS + $(terminate 'atx-applier')))
    else
        TERM_APPLY=$((TERM_APPLY + $(terminate 'atx-applier apply %')))
    fi
done
callers_wait; check "callers finished" test $? = 0
note "terminated: walsender $TERM_WS times, apply sessions $TERM_APPLY times"
check_eq "walsender terminated 5 times" 5 "$TERM_WS"
check "apply sessions terminated 5 times (every session each time: $TERM_APPLY backends)" test "$TERM_APPLY" -ge 5
if verify_exact "pg_terminate_backend"; then r=pass; else r=FAIL; fi
[ "$TERM_WS" = 5 ] && [ "$TERM_APPLY" -ge 5 ] || r=FAIL
reliability "connection loss: pg_terminate_backend (seed $SEED)" \
    "$CALLERS callers x 600 messages; walsender ('atx-applier') terminated $TERM_WS times and the apply sessions ('atx-applier apply', $TERM_APPLY backends) 5 times during the burst" \
    "cumulative: $VERIFY_SUMMARY" "$r"
applier_stop

# (b) Through a TCP proxy that drops and stalls.
PROXY_PORT=$((40000 + RANDOM % 20000))
python3 "$TESTLIB_DIR/tcp_proxy.py" --listen "127.0.0.1:$PROXY_PORT" --target "127.0.0.1:$(cat "$TEST_DIR/port")" \
    --log "$TEST_DIR/proxy.log" &
PROXY_PID=$!
trap 'kill $PROXY_PID 2>/dev/null; _testlib_cleanup' EXIT
wait_for 10 bash -c "grep -qs listening '$TEST_DIR/proxy.log'" || not_ok "proxy started"
conninfo() { echo "host=127.0.0.1 port=$PROXY_PORT user=postgres"; }
applier_start "${ARGS[@]}"
# The walsender and the apply sessions (the control and monitor connections are there too).
wait_for 15 both_connected "AND client_addr IS NOT NULL"
check "applier connected through the proxy (TCP)" test $? = 0
callers_start $CALLERS 1001 1700 0.15
DROPS=0; STALLS=0
for k in $(seq 1 7); do
    sleep "$((RANDOM % 2)).$((RANDOM % 10))"
    case $k in
    2 | 5) kill -USR2 $PROXY_PID; STALLS=$((STALLS + 1)); sleep 3; kill -USR2 $PROXY_PID ;;
    4) kill -USR2 $PROXY_PID; STALLS=$((STALLS + 1)); sleep 8; kill -USR2 $PROXY_PID ;;  # > wal_sender_timeout
    *) kill -USR1 $PROXY_PID; DROPS=$((DROPS + 1)) ;;
    esac
done
callers_wait; check "callers finished" test $? = 0
note "proxy: $DROPS drops, $STALLS stalls (3 s, 8 s, 3 s); $(tail -n 1 "$TEST_DIR/proxy.log")"
check "applier saw connection errors" grep -q "event=connection_error" "$TEST_DIR/applier.log"
if verify_exact "tcp proxy drop/stall" 120; then r=pass; else r=FAIL; fi
reliability "connection loss: TCP proxy drops and stalls (seed $SEED)" \
    "applier over TCP through tests/lib/tcp_proxy.py; $CALLERS callers x 700 messages; all connections reset $DROPS times, forwarding stalled $STALLS times (3 s, 8 s > wal_sender_timeout 5 s, 3 s)" \
    "cumulative: $VERIFY_SUMMARY" "$r"
applier_stop
kill $PROXY_PID; wait $PROXY_PID 2>/dev/null
done_testing
