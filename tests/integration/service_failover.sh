#!/usr/bin/env bash
# Hot standby: two appliers (separate RocksDB directories) on one database. The second waits
# (the slot and the apply origin are exclusive: 55006) and takes over within a few seconds when
# the first is SIGKILLed during a burst; then the roles swap once more. Every number lands once.
. "$(dirname "$0")/../lib/testlib.sh"

CALLERS=3
PER_CALLER=1500
TOTAL=$((CALLERS * PER_CALLER))

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE TABLE numbers(n int);   -- no unique constraint: duplicates must be countable
CREATE PROCEDURE emit(caller int, first int, last int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN first..last LOOP
        PERFORM atx_log('INSERT INTO numbers(n) VALUES ($1)', caller * 100000 + i);
        IF i % 4 = 0 THEN ROLLBACK; ELSE COMMIT; END IF;
        IF i % 100 = 0 THEN PERFORM pg_sleep(0.1); END IF;   -- a burst spread over seconds
    END LOOP;
END $$;
SQL

declare -A PID
start() { # start NAME: an applier with its own state directory and log
    (trap - EXIT; exec "$APPLIER_BIN" --conninfo "$(conninfo)" --dbname postgres \
        --state-dir "$TEST_DIR/state_$1" --http-listen off --batch-size 100 \
        >>"$TEST_DIR/applier_$1.log" 2>&1) &
    PID[$1]=$!
}
# shellcheck disable=SC2154 # p is the trap's own loop variable
trap 'for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null; done; _testlib_cleanup' EXIT

start a
wait_for_slot || not_ok "applier a created the slot"
wait_for 10 grep -q event=streaming "$TEST_DIR/applier_a.log"
start b
wait_for 10 grep -q event=standby "$TEST_DIR/applier_b.log"
check "b waits as a standby" grep -q 'event=standby' "$TEST_DIR/applier_b.log"
# b tries the slot again every second; each try is an error in the server's log. Two more tries.
tries=$(grep -c 'is active for PID' "$TEST_DIR/server.log")
wait_for 20 eval "[ \$(grep -c 'is active for PID' '$TEST_DIR/server.log') -ge $((tries + 2)) ]" ||
    not_ok "b tried the slot again"
check_eq "b logs the standby state once, not an error storm" 0 \
    "$(grep -c 'level=error' "$TEST_DIR/applier_b.log")"

emitters=()
for c in $(seq 1 $CALLERS); do
    q -c "CALL emit($c, 1, $PER_CALLER)" >/dev/null &
    emitters+=($!)
done

# Kill a mid-burst; b must take over.
wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM numbers') -gt 500 ]"
t0=$(date +%s%N)
kill -9 "${PID[a]}"; wait "${PID[a]}" 2>/dev/null
wait_for 15 grep -q event=takeover "$TEST_DIR/applier_b.log"
ms=$((($(date +%s%N) - t0) / 1000000))
note "b took over ${ms} ms after a was killed"
check "b took over" grep -q event=takeover "$TEST_DIR/applier_b.log"
check "within 5 s (${ms} ms)" test "$ms" -lt 5000

# a comes back as the standby; kill b while the burst goes on; a takes over again.
start a
wait_for 10 bash -c "grep -c event=standby '$TEST_DIR/applier_a.log' | grep -q '^[1-9]'"
check "restarted a waits as a standby" grep -q 'event=standby' "$TEST_DIR/applier_a.log"
before=$(q -c 'SELECT count(*) FROM numbers')
# shellcheck disable=SC2017 # 90 % of three quarters, each step rounded down as written
if [ "$before" -lt $((TOTAL * 3 / 4 * 9 / 10)) ]; then
    kill -9 "${PID[b]}"; wait "${PID[b]}" 2>/dev/null
    wait_for 15 grep -q event=takeover "$TEST_DIR/applier_a.log"
    check "a took over from b" grep -q event=takeover "$TEST_DIR/applier_a.log"
else
    note "burst nearly over ($before rows); killing b anyway"
    kill -9 "${PID[b]}"; wait "${PID[b]}" 2>/dev/null
    wait_for 15 grep -q event=takeover "$TEST_DIR/applier_a.log"
    check "a took over from b" grep -q event=takeover "$TEST_DIR/applier_a.log"
fi

wait "${emitters[@]}"
EXPECTED=$TOTAL   # atx_log survives the callers' ROLLBACKs
wait_for 60 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM numbers') -ge $EXPECTED ]"
wait_settled 30 || note "the applier did not settle"
check_eq "every number exactly once (count)" "$EXPECTED" "$(q -c 'SELECT count(*) FROM numbers')"
check_eq "every number exactly once (distinct)" "$EXPECTED" "$(q -c 'SELECT count(DISTINCT n) FROM numbers')"
check_eq "no dead letters" 0 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"

kill -TERM "${PID[a]}"; wait "${PID[a]}"; rc=$?
check_eq "a exits 0 on SIGTERM" 0 "$rc"
PID=()
done_testing
