#!/usr/bin/env bash
# Fault 7: the slot is invalidated (max_slot_wal_keep_size = 1MB; applier stopped; WAL pushed
# past it with big INSERTs, pg_switch_wal() and CHECKPOINT). The applier must exit with status 3
# and a loud log line, every time it is started, and never re-create the slot silently.
. "$(dirname "$0")/../lib/testlib.sh"

use_seed
# The shared workload: numbered callers, rollbacks, keys, messages built to fail.
. "$(dirname "$0")/../lib/workload.sh"

atx_test_cluster "max_slot_wal_keep_size = '1MB'" "min_wal_size = '32MB'" "max_wal_size = '64MB'" ||
    { not_ok "cluster start"; done_testing; }
workload_setup
CALLERS=2
applier_start --batch-size 50
wait_for_slot || not_ok "applier created the slot"
callers_start $CALLERS 1 100 0
callers_wait || not_ok "callers"
verify_exact "before the invalidation"
applier_stop

slot_row() { q -c "SELECT slot_name || ' ' || coalesce(wal_status, '-') FROM pg_replication_slots WHERE slot_name LIKE 'pg_atx_%'"; }
SLOT0=$(slot_row)
note "slot before: $SLOT0"
# Messages emitted now wait in the slot; pushing WAL past max_slot_wal_keep_size loses them.
q -c "SELECT atx_log('INSERT INTO numbers(n) VALUES (\$1)', -100)" >/dev/null
q -c "CREATE TABLE filler(t text)" >/dev/null
for k in 1 2 3 4; do
    q -c "INSERT INTO filler SELECT repeat(md5(i::text), 32) FROM generate_series(1, 8000) i" \
      -c "SELECT pg_switch_wal()" -c "CHECKPOINT" >/dev/null
    [ "$(slot_row | cut -d' ' -f2)" = lost ] && break
done
SLOT1=$(slot_row)
note "slot after pushing WAL ($k rounds): $SLOT1"
check_eq "slot invalidated (wal_status lost)" lost "$(echo "$SLOT1" | cut -d' ' -f2)"

# atx_log refuses to emit into a database whose slot is lost?
emit_err=$(q -c "SELECT atx_log('INSERT INTO numbers(n) VALUES (\$1)', -101)" 2>&1 >/dev/null | head -n 1)
note "atx_log after the invalidation: ${emit_err:-succeeded (message emitted into a lost slot)}"
check "atx_log refuses to emit while the only slot is lost (55000)" bash -c "echo \"\$1\" | grep -q 'slot'" _ "$emit_err"

RCS=()
for attempt in 1 2; do
    t0=$SECONDS
    applier_start --batch-size 50
    pid=$APPLIER_PID
    wait_for 30 bash -c "! kill -0 $pid 2>/dev/null"
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    { wait "$pid"; } 2>/dev/null; rc=$?; APPLIER_PID=""
    RCS+=("$rc")
    check_eq "start $attempt: applier exits with status 3 (slot lost) within $((SECONDS - t0)) s" 3 "$rc"
done
check "loud log line (event=slot_lost, level=error)" grep -q "level=error.*event=slot_lost" "$TEST_DIR/applier.log"
note "$(grep -m1 'event=slot_lost' "$TEST_DIR/applier.log" | cut -c1-400)"
SLOT2=$(slot_row)
check_eq "slot neither dropped nor re-created" "$SLOT1" "$SLOT2"
check_eq "the lost message was not applied" 0 "$(q -c 'SELECT count(*) FROM numbers WHERE n < 0')"
check "no slot_created after the invalidation" bash -c "[ \$(grep -c 'event=slot_created' '$TEST_DIR/applier.log') = 1 ]"
r=pass; { [ "${RCS[*]}" = "3 3" ] && [ "$SLOT1" = "$SLOT2" ] && echo "$SLOT1" | grep -q lost; } || r=FAIL
reliability "slot invalidated (max_slot_wal_keep_size)" \
    "applier stopped, 1 message emitted, ~$((k * 8)) MB of WAL + pg_switch_wal + CHECKPOINT with max_slot_wal_keep_size 1MB; applier started twice" \
    "slot '$SLOT1' after, exit statuses ${RCS[*]}, event=slot_lost logged, slot not re-created, lost message not applied; atx_log afterwards: ${emit_err:-accepted}" "$r"
done_testing
