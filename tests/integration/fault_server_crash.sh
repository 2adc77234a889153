#!/usr/bin/env bash
# Fault 3: the server crashes (pg_ctl stop -m immediate) 5 times during a burst of 4 callers.
# Callers' connections die mid-call: a number is certain only once atx_log returned ("confirmed"
# NOTICE); the one in flight may or may not have been emitted. Every confirmed number must land
# exactly once, an unconfirmed one at most once. Then: BEGIN; atx_log; ROLLBACK; crash at once
# (applier stopped, and applier running): the statement is applied after the restart.
. "$(dirname "$0")/../lib/testlib.sh"

use_seed
# The shared workload: numbered callers, rollbacks, keys, messages built to fail.
. "$(dirname "$0")/../lib/workload.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
workload_setup
q -c "CREATE TABLE marker(tag text)" >/dev/null
CALLERS=4
ARGS=(--batch-size 50)
applier_start "${ARGS[@]}"
wait_for_slot || not_ok "applier created the slot"

callers_start $CALLERS 1 1500 0.2
CRASHES=0
for k in 1 2 3 4 5; do
    sleep "$((RANDOM % 2 + 1)).$((RANDOM % 10))"
    note "crash $k: rows before $(q -c 'SELECT count(*) FROM numbers' 2>&1)"
    atx_cluster_crash "$TEST_DIR" && CRASHES=$((CRASHES + 1))
    sleep "0.$((RANDOM % 8 + 1))"
    atx_cluster_start "$TEST_DIR" || not_ok "server restart $k"
done
callers_wait; check "callers finished (each resumed after the crashes)" test $? = 0
check_eq "5 server crashes" 5 "$CRASHES"
check "callers saw their connections die" bash -c "cat '$TEST_DIR'/caller*.log | grep -qiE 'terminat|server closed|connection'"
if verify_exact "server crash x5"; then r=pass; else r=FAIL; fi
reliability "server crash (immediate stop) during a burst (seed $SEED)" \
    "$CALLERS callers x 1500 numbered messages, server crashed and restarted $CRASHES times mid-burst; callers resumed after their last attempted number; applier kept running" \
    "$VERIFY_SUMMARY" "$r"

# Rolled-back caller, then an immediate crash: the message is already durable.
applier_stop
q -c "BEGIN" -c "SELECT atx_log('INSERT INTO marker VALUES (\$1)', 'stopped'::text)" -c "ROLLBACK" >/dev/null
atx_cluster_crash "$TEST_DIR"
atx_cluster_start "$TEST_DIR" || not_ok "server restart"
applier_start "${ARGS[@]}"
q -c "BEGIN" -c "SELECT atx_log('INSERT INTO marker VALUES (\$1)', 'running'::text)" -c "ROLLBACK" >/dev/null
atx_cluster_crash "$TEST_DIR"
atx_cluster_start "$TEST_DIR" || not_ok "server restart"
wait_for 60 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM marker') -ge 2 ]"
wait_settled 30 || note "the applier did not settle"
m=$(q -c "SELECT string_agg(tag, ',' ORDER BY tag) FROM marker")
check_eq "rolled back + immediate crash: applied once after restart (applier stopped / running)" "running,stopped" "$m"
reliability "rollback then immediate server crash" \
    "BEGIN; atx_log(...); ROLLBACK; pg_ctl stop -m immediate at once; restart (once with the applier stopped, once running)" \
    "marker rows: $m" "$([ "$m" = running,stopped ] && echo pass || echo FAIL)"
applier_stop
done_testing
