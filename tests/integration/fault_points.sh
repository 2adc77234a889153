#!/usr/bin/env bash
# Fault 2: the applier SIGKILLs itself at each named fault point (ATX_FAULT=<point>:<n>, n = 1
# and n = 5): mid_batch, after_apply_commit, after_state_write, before_confirm. Each case: a
# backlog is emitted with the applier stopped, the faulted applier starts on it while callers go
# on emitting, it must die at that point (exit by SIGKILL, log line), then a plain applier
# restarts and the counts must be exact (cumulative over all cases).
. "$(dirname "$0")/../lib/testlib.sh"

use_seed
use_fault_points
# The shared workload: numbered callers, rollbacks, keys, messages built to fail.
. "$(dirname "$0")/../lib/workload.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
workload_setup
CALLERS=3
ARGS=(--batch-size 20 --status-interval-ms 100)
applier_start "${ARGS[@]}"
wait_for_slot || not_ok "applier created the slot"
applier_stop

case_no=0
for point in mid_batch after_apply_commit after_state_write before_confirm; do
    for n in 1 5; do
        case_no=$((case_no + 1))
        base=$((case_no * 400))
        # Backlog while the applier is stopped: full batches on start.
        callers_start $CALLERS $((base + 1)) $((base + 60)) 0
        callers_wait || not_ok "$point:$n backlog callers"
        ATX_FAULT="$point:$n" applier_start "${ARGS[@]}"
        pid=$APPLIER_PID
        callers_start $CALLERS $((base + 61)) $((base + 160)) 0.2
        died=0
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || { died=1; break; }; sleep 0.1; done
        rc=0
        if [ $died = 1 ]; then { wait "$pid"; } 2>/dev/null; rc=$?; else kill -9 "$pid"; { wait "$pid"; } 2>/dev/null; fi
        APPLIER_PID=""
        check_eq "$point:$n: the applier killed itself (exit 137 = SIGKILL)" 137 "$rc"
        check "$point:$n: log names the fault point and hit" \
            grep -q "event=fault_injected point=$point hit=$n " "$TEST_DIR/applier.log"
        callers_wait || not_ok "$point:$n callers"
        applier_start "${ARGS[@]}"   # no ATX_FAULT
        if verify_exact "$point:$n"; then r=pass; else r=FAIL; fi
        [ "$rc" = 137 ] || r=FAIL
        reliability "applier SIGKILL at fault point $point (hit $n)" \
            "backlog of $((CALLERS * 60)) messages, faulted applier started on it while $CALLERS callers emitted $((CALLERS * 100)) more; died with exit $rc; restarted without ATX_FAULT" \
            "cumulative: $VERIFY_SUMMARY" "$r"
        applier_stop
    done
done
done_testing
