#!/usr/bin/env bash
# Exactly once under crashes: 8 callers emit 20,000 numbered messages (a third of them from
# transactions that roll back) while the applier is SIGKILLed at random moments and the server
# is crashed once with `pg_ctl stop -m immediate`. Every number must land exactly once.
. "$(dirname "$0")/../lib/testlib.sh"

use_seed
CALLERS=8
PER_CALLER=2500
TOTAL=$((CALLERS * PER_CALLER))

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE TABLE numbers(n int);   -- deliberately no unique constraint: duplicates must be countable
CREATE PROCEDURE emit(caller int, first int, last int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN first..last LOOP
        PERFORM atx_log('INSERT INTO numbers(n) VALUES ($1)', caller * 100000 + i);
        IF i % 3 = 0 THEN ROLLBACK; ELSE COMMIT; END IF;
        IF i % 50 = 0 THEN PERFORM pg_sleep(0.05); END IF;  -- spread the burst over seconds
    END LOOP;
END $$;
SQL
applier_start --batch-size 200
wait_for_slot || not_ok "applier created the slot"

KILLS=0
kill_loop() { # kill_loop SECONDS: SIGKILL and restart the applier at random moments
    local until=$((SECONDS + $1))
    while [ $SECONDS -lt $until ]; do
        sleep "$((RANDOM % 2)).$((RANDOM % 8 + 2))"
        applier_kill
        KILLS=$((KILLS + 1))
        applier_start --batch-size 200
    done
}

emit_phase() { # emit_phase FIRST LAST
    local pids=()
    for c in $(seq 1 $CALLERS); do
        psql -qAtX -v ON_ERROR_STOP=1 -c "CALL emit($c, $1, $2)" >"$TEST_DIR/caller$c.log" 2>&1 &
        pids+=($!)
    done
    local rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    return $rc
}

# Phase 1: half the messages while the applier is SIGKILLed at random.
emit_phase 1 $((PER_CALLER / 2)) &
emitter=$!
kill_loop 8
wait "$emitter"; check "phase 1 callers finished" test $? = 0

# Phase 2: the other half with the applier stopped, so that a backlog builds up ...
applier_stop
emit_phase $((PER_CALLER / 2 + 1)) $PER_CALLER
check "phase 2 callers finished" test $? = 0

# ... then crash the server while the applier drains it: asynchronous apply commits in flight.
applier_start --batch-size 200
sleep "0.$((RANDOM % 5 + 3))"
note "applied when the server crashed: $(q -c 'SELECT count(*) FROM numbers' 2>&1)"
atx_cluster_crash "$TEST_DIR"
sleep 1
atx_cluster_start "$TEST_DIR" || not_ok "server restart"
note "applied after crash recovery: $(q -c 'SELECT count(*) FROM numbers')"

# More random kills while it finishes the backlog.
kill_loop 6
note "applier SIGKILLed $KILLS times"
check "at least 10 applier kills" test "$KILLS" -ge 10

wait_for 120 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM numbers') -ge $TOTAL ]"
sleep 2   # anything applied twice would show up now
read -r total distinct < <(q -F ' ' -c 'SELECT count(*), count(DISTINCT n) FROM numbers')
note "rows $total, distinct $distinct, expected $TOTAL"
check_eq "every number applied (distinct count)" "$TOTAL" "$distinct"
check_eq "nothing applied twice (row count)" "$TOTAL" "$total"
check_eq "dead-letter table empty" 0 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"
applier_stop
done_testing
