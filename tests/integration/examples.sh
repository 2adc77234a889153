#!/usr/bin/env bash
# Runs every worked migration in docs/examples/ against a cluster with atx-applier (pg_atx
# preloaded, for atx_exec). Each example waits for the applier and asserts its own outcome (a
# failed ASSERT stops psql with an error); this script checks that each finished with its "ok"
# line(s), plus what only another session can see: the pg_background-style job status while the
# batch is still running, a tenant's view of the audit log, the dead-letter notification.
. "$(dirname "$0")/../lib/testlib.sh"

EXAMPLES=$ATX_ROOT/docs/examples
atx_test_cluster "shared_preload_libraries = 'pg_atx'" || { not_ok "cluster start"; done_testing; }
applier_start
wait_for_slot || not_ok "applier created the slot"

# run_example NAME: its stdout; its stderr goes to $TEST_DIR/NAME.err.
run_example() {
    psql -qAtX -v ON_ERROR_STOP=1 -f "$EXAMPLES/$1.sql" 2>"$TEST_DIR/$1.err"
}
# has_line TEXT OUTPUT: OUTPUT has a line that is exactly TEXT.
has_line() { grep -qxF -- "$1" <<<"$2"; }
# last_error NAME: the example's last ERROR line (for the report of a failure).
last_error() { grep -h 'ERROR:' "$TEST_DIR/$1.err" 2>/dev/null | tail -n 1 | sed 's/^psql:[^ ]* //'; }
# (a) Oracle / EDB PRAGMA AUTONOMOUS_TRANSACTION.
out=$(run_example oracle_pragma_autonomous)
check_eq "oracle_pragma_autonomous.sql runs and its assertions hold" "oracle_pragma_autonomous: ok" "$(tail -n 1 <<<"$out")"
check_eq "procedure log survives the caller's ROLLBACK" 1 \
    "$(q -c "SELECT count(*) FROM ex_oracle.app_log WHERE action = 'order placed'")"
check_eq "autonomous block: its own rollback undid only its work" "6|1|reservation refused" \
    "$(q -c "SELECT (SELECT qty FROM ex_oracle.stock), (SELECT count(*) FROM ex_oracle.reservation), (SELECT action FROM ex_oracle.app_log WHERE detail = 'widget')")"
check_eq "failing autonomous statement dead-lettered, not raised in the caller" "23502|4,5" \
    "$(q -c "SELECT (SELECT string_agg(sqlstate, ',') FROM ex_oracle.dead_letters), (SELECT string_agg(id::text, ',' ORDER BY id) FROM ex_oracle.orders)")"
check "Oracle's bodies (COMMIT, ROLLBACK) + make_autonomous: procedure, row trigger, self-rolling-back block" \
    has_line "oracle_pragma_autonomous with make_autonomous: ok" "$out"

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
    "$(q -c "SELECT state, step, (SELECT count(*) FROM ex_jobs.batch_output) FROM ex_jobs.job_status WHERE job = 'nightly'")"
check_eq "deadlock with the caller: update cancelled (default), or applied later (exec_on_abandon = apply)" \
    "locked=running|locked, apply later=done" \
    "$(q -c "SELECT string_agg(job || '=' || state, '|' ORDER BY job) FROM ex_jobs.job_status WHERE job LIKE 'locked%'")"
check "job-status upsert + make_autonomous: seen at once, kept after ROLLBACK, 40P01 with the batch's lock" \
    grep -qxF "pg_background_job_status with make_autonomous: ok" "$TEST_DIR/job.out"

# (c) dblink _atx wrapper.
out=$(run_example dblink_atx_wrapper)
check_eq "dblink_atx_wrapper.sql runs and its assertions hold" "dblink_atx_wrapper: ok" "$(tail -n 1 <<<"$out")"
check_eq "error logged though every payment rolled back" "1|0" \
    "$(q -c "SELECT (SELECT count(*) FROM ex_dblink.error_log), (SELECT count(*) FROM ex_dblink.payments)")"
check "the error-logging procedure's body + make_autonomous" has_line "dblink_atx_wrapper with make_autonomous: ok" "$out"

# (d) EDB scenarios 1a-2c, nesting, settings.
out=$(run_example edb_autonomous_dept)
while IFS='|' read -r line what; do
    check "EDB $what" has_line "$line: ok" "$out"
done <<'EOF'
1a|1a (no autonomous transaction, final COMMIT): dept as EDB documents
1b|1b (final ROLLBACK): dept as EDB documents
1c refused|1c: the ROLLBACK inside the DO block is refused with 2D000
1c|1c (ROLLBACK in the block): dept as EDB documents
2a, inside the caller before its ROLLBACK|2a: the caller sees the autonomous block's rows at once
2a|2a (autonomous block with COMMIT, caller rolls back): dept as EDB documents
2b|2b (procedure ending in ROLLBACK inside the autonomous block): dept as EDB documents
settings|the caller's settings are in the autonomous block, its SETs do not come back
nesting|16 nested atx_exec levels served, the 17th refused with 54001
EOF
while IFS='|' read -r line what; do
    check "EDB with make_autonomous: $what" has_line "$line: ok" "$out"
done <<'EOF'
2a with make_autonomous, inside the caller before its ROLLBACK|2a: the caller sees the autonomous procedure's rows at once
2a with make_autonomous|2a: the block's body as an autonomous procedure (COMMIT inside), caller rolls back
2b with make_autonomous|2b: an ordinary procedure ending in ROLLBACK inside it
2c with make_autonomous|2c: insert_dept_70's own body (ROLLBACK) made autonomous, nested
nesting with make_autonomous|an autonomous function 16 levels deep, the 17th refused
EOF
check_eq "EDB 2c (nested autonomous procedure ending in ROLLBACK): dept as EDB documents" \
    "2c: ok" "$(grep -xF '2c: ok' <<<"$out" || last_error edb_autonomous_dept)"
check_eq "edb_autonomous_dept.sql runs to its end" "edb_autonomous_dept: ok" "$(tail -n 1 <<<"$out")"

# (e) EDB autonomous trigger.
out=$(run_example edb_autonomous_trigger)
check_eq "edb_autonomous_trigger.sql runs and its assertions hold" "edb_autonomous_trigger: ok" "$(tail -n 1 <<<"$out")"
check_eq "trigger: no employee, two audit rows" "0|2" \
    "$(q -c "SELECT (SELECT count(*) FROM ex_edb_trigger.emp), (SELECT count(*) FROM ex_edb_trigger.empauditlog)")"
check "trigger: EDB's INSERT as an autonomous procedure the trigger calls" \
    has_line "edb_autonomous_trigger with make_autonomous: ok" "$out"

# (f) EDB object type method.
out=$(run_example edb_object_method)
check_eq "edb_object_method.sql runs and its assertions hold" "edb_object_method: ok" "$(tail -n 1 <<<"$out")"
check_eq "object method: 60 stays, 50 rolled back" "10,20,30,40,60" \
    "$(q -c "SELECT string_agg(deptno::text, ',' ORDER BY deptno) FROM ex_edb_method.dept")"
check "object method: EDB's body (COMMIT inside) + make_autonomous" has_line "edb_object_method with make_autonomous: ok" "$out"

# (g) ora2pg log_action.
out=$(run_example ora2pg_log_action)
check_eq "ora2pg_log_action.sql runs and its assertions hold" "ora2pg_log_action: ok" "$(tail -n 1 <<<"$out")"
for s in "log_action without a result" "log_action with a result" "log_action launched now, read later" \
    "log_action with make_autonomous"; do
    check "ora2pg: $s" has_line "$s: ok" "$out"
done

# (h) pg_durable audit with row-level security on app.tenant.
out=$(run_example pg_durable_tenant_audit)
check_eq "pg_durable_tenant_audit.sql runs and its assertions hold" "pg_durable_tenant_audit: ok" "$(tail -n 1 <<<"$out")"
check_eq "another session of tenant acme sees acme's audit row only" "acme|invoice created" \
    "$(q -c "SET ROLE ex_tenant_app" -c "SET app.tenant = 'acme'" -c "SELECT tenant, action FROM ex_tenant.audit_log")"

# (i) Own dead letters and LISTEN atx_dead_letter.
out=$(run_example own_dead_letters)
check_eq "own_dead_letters.sql runs and its assertions hold" "own_dead_letters: ok" "$(tail -n 1 <<<"$out")"
clerk_id=$(sed -n 's/^clerk message: //p' <<<"$out")
check "LISTEN atx_dead_letter: the notification came" \
    grep -qF "Asynchronous notification \"atx_dead_letter\" received" <<<"$out"
check "LISTEN atx_dead_letter: ... with nothing of the message (no payload), clerk message ${clerk_id:-none}" \
    bash -c "! grep -q 'atx_dead_letter\" with payload' <<<\"\$1\"" _ "$out"

# (j) CREATE INDEX CONCURRENTLY and VACUUM from inside a transaction.
out=$(run_example pg_background_maintenance)
check_eq "pg_background_maintenance.sql runs and its assertions hold" "pg_background_maintenance: ok" "$(tail -n 1 <<<"$out")"
check_eq "the index is valid, seen from another session" t \
    "$(q -c "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ex_maint.events_kind'::regclass")"

# Every example is idempotent: a second run is green too.
for e in oracle_pragma_autonomous dblink_atx_wrapper edb_autonomous_trigger edb_object_method ora2pg_log_action \
    pg_durable_tenant_audit own_dead_letters pg_background_maintenance; do
    out=$(run_example $e)
    check_eq "$e.sql runs again" "$e: ok" "$(tail -n 1 <<<"$out")"
done
out=$(run_example edb_autonomous_dept)
check_eq "edb_autonomous_dept.sql runs again" "edb_autonomous_dept: ok" "$(tail -n 1 <<<"$out")"

if [ "$T_FAILED" != 0 ]; then
    for f in "$TEST_DIR"/*.err; do
        [ -s "$f" ] || continue
        note "stderr of $(basename "$f" .err):"
        grep -v 'NOTICE:\|drop cascades\|^DETAIL:  drop' "$f" | sed 's/^/#   /'
    done
fi
applier_stop
done_testing
