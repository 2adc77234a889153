#!/usr/bin/env bash
# Runs every worked migration in docs/examples/ against a cluster with atx-applier. Each example
# waits for the applier and asserts its own outcome (a failed ASSERT stops psql with an error);
# this script checks that each finished with its "ok" line, plus what only a second session can
# see: the pg_background-style job status while the batch is still running.
. "$(dirname "$0")/../lib/testlib.sh"

EXAMPLES=$ATX_ROOT/docs/examples
atx_test_cluster || { not_ok "cluster start"; done_testing; }
applier_start
wait_for_slot || not_ok "applier created the slot"

run_example() {
    psql -qAtX -v ON_ERROR_STOP=1 -f "$EXAMPLES/$1.sql" 2>>"$TEST_DIR/examples.err"
}

# (a) Oracle / EDB PRAGMA AUTONOMOUS_TRANSACTION.
out=$(run_example oracle_pragma_autonomous)
check_eq "oracle_pragma_autonomous.sql runs and its assertions hold" "oracle_pragma_autonomous: ok" "$(tail -n 1 <<<"$out")"
check_eq "procedure log survives the caller's ROLLBACK" 1 \
    "$(q -c "SELECT count(*) FROM ex_oracle.app_log WHERE action = 'order placed'")"
check_eq "autonomous block: its own rollback undid only its work" "6|1|reservation refused" \
    "$(q -c "SELECT (SELECT qty FROM ex_oracle.stock), (SELECT count(*) FROM ex_oracle.reservation), (SELECT action FROM ex_oracle.app_log WHERE detail = 'widget')")"
check_eq "failing autonomous statement dead-lettered, not raised in the caller" "23502|4,5" \
    "$(q -c "SELECT (SELECT string_agg(sqlstate, ',') FROM ex_oracle.dead_letters), (SELECT string_agg(id::text, ',' ORDER BY id) FROM ex_oracle.orders)")"

# (b) pg_background job status: watched from a second session while the batch runs.
run_example pg_background_job_status >"$TEST_DIR/job.out" &
batch=$!
seen=""
deadline=$((SECONDS + 20))
while kill -0 "$batch" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
    s=$(psql -qAtX -c "SELECT state || ' ' || step FROM ex_jobs.job_status WHERE job = 'nightly'" 2>/dev/null)
    # Only what was seen while the batch's transaction was certainly still open.
    if [ -n "$s" ] && kill -0 "$batch" 2>/dev/null && [ "$(psql -qAtX -c "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL ex_jobs.run_batch%' AND state = 'active'")" = 1 ]; then
        seen="$seen $s"
    fi
    sleep 0.2
done
wait "$batch"
rc=$?
note "status seen by another session during the batch:$(tr ' ' '\n' <<<"$seen" | grep -E '^[0-9]+$' | sort -un | tr '\n' ' ')"
check_eq "pg_background_job_status.sql runs and its assertions hold" "0 pg_background_job_status: ok" "$rc $(tail -n 1 "$TEST_DIR/job.out")"
check "another session saw 'running' with progress during the batch" grep -Eq 'running [1-9]' <<<"$seen"
check_eq "final status after the batch rolled back" "rolled back|6|0" \
    "$(q -c "SELECT state, step, (SELECT count(*) FROM ex_jobs.batch_output) FROM ex_jobs.job_status")"

# (c) dblink _atx wrapper.
out=$(run_example dblink_atx_wrapper)
check_eq "dblink_atx_wrapper.sql runs and its assertions hold" "dblink_atx_wrapper: ok" "$(tail -n 1 <<<"$out")"
check_eq "error logged though every payment rolled back" "1|0" \
    "$(q -c "SELECT (SELECT count(*) FROM ex_dblink.error_log), (SELECT count(*) FROM ex_dblink.payments)")"

# Every example is idempotent: a second run is green too.
for e in oracle_pragma_autonomous dblink_atx_wrapper; do
    out=$(run_example $e)
    check_eq "$e.sql runs again" "$e: ok" "$(tail -n 1 <<<"$out")"
done

[ "$T_FAILED" = 0 ] || { note "stderr of the examples:"; sed 's/^/#   /' "$TEST_DIR/examples.err"; }
applier_stop
done_testing
