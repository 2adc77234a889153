#!/usr/bin/env bash
# /metrics, /healthz and /readyz of atx-applier: counters match what a workload did
# (applied = emitted - dead-lettered), a forged message counts as rejected, /readyz fails while
# the server is down and recovers when it is back.
. "$(dirname "$0")/../lib/testlib.sh"

GOOD=300
BAD=4

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q -c "CREATE TABLE t(v int)" >/dev/null
applier_start --http-listen 127.0.0.1:0 --monitor-interval-ms 300 --ready-max-lag-seconds 30 --batch-size 50
wait_for_slot || not_ok "applier created the slot"

port_of_log() { sed -n 's/.*event=http_listening .* port=\([0-9]*\).*/\1/p' "$TEST_DIR/applier.log" | tail -1; }
wait_for 10 bash -c "grep -q event=http_listening '$TEST_DIR/applier.log'"
PORT=$(port_of_log)
check "the listener logged its port ($PORT)" test -n "$PORT"
URL=http://127.0.0.1:$PORT

code() { curl -s -o /dev/null -w '%{http_code}' "$URL$1"; }
metric() { # metric NAME [LABELS-REGEX]: value of the first matching sample
    curl -s "$URL/metrics" | grep -E "^$1(\{[^}]*${2:-}[^}]*\})? " | head -1 | awk '{print $2}'
}

wait_for 15 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' $URL/readyz)\" = 200 ]"
check_eq "/readyz 200 once streaming" 200 "$(code /readyz)"
check_eq "/healthz 200" 200 "$(code /healthz)"
check "/metrics is Prometheus text" bash -c "curl -s $URL/metrics | grep -q '^# TYPE atx_messages_applied_total counter'"

# Workload: GOOD good messages from 3 callers, BAD failing ones, one forged payload (origin pg_atx,
# prefix pg_atx, garbage bytes: the applier cannot decode it, apply_message reports 22P03).
callers=()
for c in 1 2 3; do
    q -c "SELECT count(atx_log('INSERT INTO t VALUES (\$1)', g)) FROM generate_series($(((c - 1) * GOOD / 3 + 1)), $((c * GOOD / 3))) g" >/dev/null &
    callers+=($!)
done
for i in $(seq 1 $BAD); do q -c "SET atx.validate = off" -c "SELECT atx_log('INSERT INTO no_such_table VALUES ($i)')" >/dev/null; done
q -c "SELECT pg_replication_origin_session_setup('pg_atx')" \
  -c "SELECT pg_logical_emit_message(false, 'pg_atx', '\\xdeadbeef'::bytea)" >/dev/null
# Scrape while the workload runs: counters never go down.
prev=0; mono=ok
for _ in 1 2 3 4 5; do
    v=$(metric atx_messages_received_total)
    [ "${v:-0}" -ge "$prev" ] || mono=bad
    prev=${v:-0}
    sleep 0.1
done
wait "${callers[@]}"
check_eq "counters monotonic during the workload" ok "$mono"
EMITTED=$((GOOD + BAD + 1))
wait_for 30 bash -c "[ \$(( \$(curl -s $URL/metrics | awk '/^atx_messages_applied_total/{a=\$2} /^atx_messages_dead_lettered_total/{d=\$2} END{print a+d}') )) -ge $EMITTED ]"

applied=$(metric atx_messages_applied_total)
dead=$(metric atx_messages_dead_lettered_total)
check_eq "received = emitted" "$EMITTED" "$(metric atx_messages_received_total)"
check_eq "applied = emitted - dead_lettered" "$((EMITTED - dead))" "$applied"
check_eq "dead_lettered = failing + forged" "$((BAD + 1))" "$dead"
check_eq "rows in the table = applied" "$applied" "$(q -c 'SELECT count(*) FROM t')"
check_eq "rejected counts the forged payload" 1 "$(metric atx_messages_rejected_total)"
check_eq "no retries, no duplicates" "0 0" "$(metric atx_messages_retried_total) $(metric atx_messages_duplicate_total)"
check "apply latency histogram observed transactions" test "$(metric atx_apply_duration_seconds_count)" -gt 0
check_eq "histogram +Inf bucket = count" "$(metric atx_apply_duration_seconds_count)" \
    "$(metric atx_apply_duration_seconds_bucket 'le="\+Inf"')"
wait_for 5 bash -c "curl -s $URL/metrics | grep -q '^atx_dead_letters{database=\"postgres\"} $((BAD + 1))\$'"
check_eq "dead_letters gauge = rows in atx.dead_letter" "$((BAD + 1))" "$(metric atx_dead_letters)"
check_eq "slot wal_status gauge" 1 "$(metric atx_slot_wal_status 'wal_status="reserved"')"
wait_for 5 bash -c "[ \"\$(curl -s $URL/metrics | awk '/^atx_lag_bytes/{print \$2}')\" = 0 ]"
check_eq "lag bytes back to 0 when idle" 0 "$(metric atx_lag_bytes)"
lag=$(metric atx_lag_seconds)
check "lag seconds small when caught up ($lag)" awk -v l="$lag" 'BEGIN{exit !(l >= 0 && l < 20)}'
check "state store size reported" test "$(metric atx_state_store_bytes)" -gt 0
check_eq "database state streaming" 1 "$(metric atx_database_state 'state="streaming"')"

# Server down: /readyz 503 with a reason, /healthz still 200; back up: ready again.
atx_cluster_stop "$TEST_DIR" fast
wait_for 10 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' $URL/readyz)\" = 503 ]"
check_eq "/readyz 503 after the server stopped" 503 "$(code /readyz)"
note "readyz: $(curl -s "$URL/readyz")"
check "/readyz says why" bash -c "curl -s $URL/readyz | grep -q 'database postgres is connecting'"
check_eq "/healthz stays 200 (the process is fine)" 200 "$(code /healthz)"
wait_for 5 bash -c "curl -s $URL/metrics | grep -q '^atx_server_up{database=\"postgres\"} 0'"
check "server_up gauge 0" bash -c "curl -s $URL/metrics | grep -q '^atx_server_up{database=\"postgres\"} 0'"
atx_cluster_start "$TEST_DIR"
wait_for 20 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' $URL/readyz)\" = 200 ]"
check_eq "/readyz 200 again after the server is back" 200 "$(code /readyz)"
check "reconnects counted" test "$(metric atx_reconnects_total)" -ge 1

applier_stop
check_eq "SIGTERM exits 0" 0 "$?"
check "listener closed" bash -c "! curl -s -m 2 $URL/healthz"

# Retention of the state store, wired from the options to the metrics: at most 50 records kept
# (a fresh state directory, swept every second), 200 messages applied.
: >"$TEST_DIR/applier.log"
(trap - EXIT; exec "$APPLIER_BIN" --conninfo "$(conninfo)" --dbname postgres --state-dir "$TEST_DIR/state-retention" \
    --http-listen 127.0.0.1:0 --state-retention-records 50 --state-retention-interval-ms 1000 \
    >>"$TEST_DIR/applier.log" 2>&1) &
APPLIER_PID=$!
wait_for 10 grep -q event=http_listening "$TEST_DIR/applier.log"
URL=http://127.0.0.1:$(port_of_log)
check "retention settings logged" grep -q "event=state_retention records=0 max_age_days=7 max_records_per_database=50 interval_ms=1000" "$TEST_DIR/applier.log"
before=$(q -c "SELECT count(*) FROM t")
q -c "SELECT count(atx_log('INSERT INTO t VALUES (\$1)', g)) FROM generate_series(1, 200) g" >/dev/null
wait_for 30 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM t') -ge $((before + 200)) ]"
check_eq "200 more rows" "$((before + 200))" "$(q -c 'SELECT count(*) FROM t')"
wait_for 10 bash -c "[ \$(curl -s $URL/metrics | awk '/^atx_state_store_swept_total/{print \$2}') -ge 150 ]"
check "the sweep deleted the oldest 150 or more ($(metric atx_state_store_swept_total))" test "$(metric atx_state_store_swept_total)" -ge 150
check "at most 50 records kept ($(metric atx_state_store_records))" test "$(metric atx_state_store_records)" -le 50
applier_stop
check_eq "SIGTERM exits 0" 0 "$?"

# --http-listen off: no listener.
applier_start --http-listen off
wait_for 10 bash -c "grep -c event=streaming '$TEST_DIR/applier.log' | grep -q 3"
check "no listener with --http-listen off" bash -c "[ \$(grep -c event=http_listening '$TEST_DIR/applier.log') = 1 ]"
applier_stop

# The listener binds exclusively. A second applier given the address the first one listens on must
# not share it (with SO_REUSEPORT both would listen and the kernel would spread scrapes between
# them): exit 1 with a clear message. Its own state directory: RocksDB's lock is not what stops it.
applier_start --http-listen 127.0.0.1:0
wait_for 10 bash -c "[ \$(grep -c event=http_listening '$TEST_DIR/applier.log') = 2 ]"
PORT=$(port_of_log)
rc=0
timeout 10 "$APPLIER_BIN" --conninfo "$(conninfo)" --dbname postgres --state-dir "$TEST_DIR/state2" \
    --http-listen "127.0.0.1:$PORT" >"$TEST_DIR/second.log" 2>&1 || rc=$?
check_eq "a second applier on the address the first listens on exits 1" 1 "$rc"
check "and says it cannot bind" grep -q "cannot bind the HTTP listener to 127.0.0.1:$PORT" "$TEST_DIR/second.log"
check_eq "the first one still answers" 200 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz")"
applier_stop

# A port held by another program: the same.
python3 -c 'import socket,time,sys; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(20)' >"$TEST_DIR/busy" &
busy=$!
wait_for 5 test -s "$TEST_DIR/busy"
rc=0
timeout 10 "$APPLIER_BIN" --conninfo "$(conninfo)" --dbname postgres --state-dir "$TEST_DIR/state" \
    --http-listen "127.0.0.1:$(cat "$TEST_DIR/busy")" >"$TEST_DIR/busy.log" 2>&1 || rc=$?
kill "$busy" 2>/dev/null
check_eq "a port in use is a startup error (exit 1)" 1 "$rc"
check "and says so" grep -q "cannot bind the HTTP listener" "$TEST_DIR/busy.log"

# The *default* address (127.0.0.1:9478). These run in a network namespace of their own (the
# cluster is reached over its Unix socket), so that nothing else on this host, such as the
# applier of a developer's `tools/atx up`, decides the outcome: there 9478 is free until the
# holder below takes it. Without namespaces (a container that forbids them) they run here; the
# holder then finds 9478 free or held by someone else, and both mean busy for the applier.
if [ "$(id -u)" = 0 ]; then NETNS=(unshare --net); else NETNS=(unshare --map-root-user --net); fi
if ! "${NETNS[@]}" true 2>/dev/null; then
    note "no network namespace available: the default-address tests use this host's 127.0.0.1:9478"
    NETNS=()
fi
# default_start [SECONDS]: the applier without --http-listen, in the namespace, optionally with a
# process holding 127.0.0.1:9478 first, for SECONDS. APPLIER_PID is the applier (or the holder,
# which passes SIGTERM on and exits with the applier's status).
default_start() {
    local hold=${1:-0}
    : >"$TEST_DIR/applier.log"
    (trap - EXIT; exec ${NETNS[@]+"${NETNS[@]}"} python3 -c '
import signal, socket, subprocess, sys, threading
hold = float(sys.argv[1])
if hold > 0:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 9478)); s.listen()
        print("# holder: listening on 127.0.0.1:9478 for %g s" % hold, flush=True)
        def release():
            s.close()
            print("# holder: released 127.0.0.1:9478", flush=True)
        threading.Timer(hold, release).start()
    except OSError as e:
        print("# holder: 127.0.0.1:9478 already taken (%s)" % e, flush=True)
p = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: p.terminate())
sys.exit(p.wait())' "$hold" "$APPLIER_BIN" --conninfo "$(conninfo)" --dbname postgres \
        --state-dir "$TEST_DIR/state" >>"$TEST_DIR/applier.log" 2>&1) &
    APPLIER_PID=$!
}
if [ ${#NETNS[@]} -gt 0 ]; then
    default_start
    wait_for 10 grep -q event=streaming "$TEST_DIR/applier.log"
    check "default address free: listens on 127.0.0.1:9478" \
        grep -q "event=http_listening address=127.0.0.1:9478 port=9478 url=http://127.0.0.1:9478/metrics" "$TEST_DIR/applier.log"
    applier_stop
fi
# Held for 4 s: the applier streams meanwhile, says once that it waits for the address, and
# listens as soon as it is free (tries after 1, 2, 4, 8 s ...).
default_start 4
wait_for 10 grep -q event=streaming "$TEST_DIR/applier.log"
note "$(grep '# holder' "$TEST_DIR/applier.log" | head -n 1)"
check "default address busy: still streams" grep -q event=streaming "$TEST_DIR/applier.log"
check "and logs event=http_bind_waiting" grep -q event=http_bind_waiting "$TEST_DIR/applier.log"
check "and no listener yet" bash -c "! grep -q event=http_listening '$TEST_DIR/applier.log'"
if [ ${#NETNS[@]} -gt 0 ]; then
    wait_for 20 grep -q event=http_listening "$TEST_DIR/applier.log"
    check "once the holder is gone it listens on 127.0.0.1:9478" \
        grep -q "event=http_listening address=127.0.0.1:9478 port=9478" "$TEST_DIR/applier.log"
    check_eq "having said it waits only once" 1 "$(grep -c event=http_bind_waiting "$TEST_DIR/applier.log")"
fi
applier_stop
check_eq "SIGTERM exits 0" 0 "$?"

done_testing
