#!/usr/bin/env bash
# Fault 1: the applier is SIGKILLed at random moments (>= 20 kill/restart cycles, seeded) while
# 4 callers emit numbered messages (rollbacks, idempotency keys, messages built to fail).
# Every confirmed number must land exactly once: applied, or dead-lettered when built to fail.
. "$(dirname "$0")/../lib/testlib.sh"

use_seed
# The shared workload: numbered callers, rollbacks, keys, messages built to fail.
. "$(dirname "$0")/../lib/workload.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
workload_setup
CALLERS=4
PER_CALLER=700
APPLIER_ARGS=(--batch-size 50)
applier_start "${APPLIER_ARGS[@]}"
wait_for_slot || not_ok "applier created the slot"

callers_start $CALLERS 1 $PER_CALLER
KILLS=0
# Kill at random moments (0.1 .. 1.5 s apart) until >= 20 kills and the callers are done.
while :; do
    sleep "$((RANDOM % 2)).$((RANDOM % 10))"
    applier_kill
    KILLS=$((KILLS + 1))
    applier_start "${APPLIER_ARGS[@]}"
    if [ $KILLS -ge 20 ]; then
        alive=0
        for p in "${CALLER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
    fi
done
callers_wait; check "callers finished" test $? = 0
# A few more kills while the backlog drains.
for _ in 1 2 3; do
    sleep "0.$((RANDOM % 9 + 1))"
    applier_kill; KILLS=$((KILLS + 1)); applier_start "${APPLIER_ARGS[@]}"
done
note "applier SIGKILLed $KILLS times"
check "at least 20 kill/restart cycles" test $KILLS -ge 20
verify_exact "random SIGKILL"
res=$([ "$T_FAILED" = 0 ] && echo pass || echo FAIL)
reliability "applier SIGKILL at random moments (seed $SEED)" \
    "$CALLERS callers x $PER_CALLER numbered messages (1/3 rolled back, keyed duplicates, 1/7 to a missing table); applier SIGKILLed and restarted $KILLS times" \
    "$VERIFY_SUMMARY" "$res"
check "no crash-loop errors other than expected (log has no unexpected_error)" bash -c "! grep -q 'event=unexpected_error' '$TEST_DIR/applier.log'"
applier_stop
done_testing
