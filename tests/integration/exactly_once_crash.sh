#!/usr/bin/env bash
# Exactly once under crashes, with several apply sessions in flight: 8 callers emit 20,000
# numbered messages (a third of them from transactions that roll back) while the applier (4 apply
# sessions) is SIGKILLed at random moments (at least 20 times) and the server is crashed 5 times
# with `pg_ctl stop -m immediate` while the applier drains a backlog. Every number must land
# exactly once.
#
# Every 4th message is a parent: it emits a nested message (atx_log inside the autonomous
# statement) and then waits for a lock the test holds half of the time, so that most parents fail
# with lock_timeout (raised by the server: transient) and are retried, emitting their nested
# message again each time. Each nested number must also land exactly once.
. "$(dirname "$0")/../lib/testlib.sh"

use_seed
CALLERS=8
PER_CALLER=2500
TOTAL=$((CALLERS * PER_CALLER))
PARENTS=$((CALLERS * (PER_CALLER / 4)))
SESSIONS=4

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE TABLE numbers(n int);   -- deliberately no unique constraint: duplicates must be countable
CREATE TABLE nested_numbers(n int);
CREATE TABLE gate();
CREATE FUNCTION parent(n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atx_log('INSERT INTO nested_numbers(n) VALUES ($1)', n);
    LOCK TABLE gate IN ROW SHARE MODE;   -- lock_timeout while the test holds the gate
    INSERT INTO numbers(n) VALUES (n);
END $$;
CREATE PROCEDURE emit(caller int, first int, last int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN first..last LOOP
        IF i % 4 = 0 THEN
            PERFORM atx_log('SELECT parent($1)', caller * 100000 + i);
        ELSE
            PERFORM atx_log('INSERT INTO numbers(n) VALUES ($1)', caller * 100000 + i);
        END IF;
        IF i % 3 = 0 THEN ROLLBACK; ELSE COMMIT; END IF;
        IF i % 50 = 0 THEN PERFORM pg_sleep(0.05); END IF;  -- spread the burst over seconds
    END LOOP;
END $$;
SQL
ARGS=(--batch-size 200 --apply-sessions "$SESSIONS" --lock-timeout-ms 200 --retry-base-ms 50 --retry-cap-ms 400
      --max-attempts 100)
applier_start "${ARGS[@]}"
wait_for_slot || not_ok "applier created the slot"

# The gate: held half of every second (across server crashes) until $TEST_DIR/gate.stop exists.
gate() {
    while [ ! -e "$TEST_DIR/gate.stop" ]; do
        psql -qAtX -c "BEGIN" -c "LOCK TABLE gate IN ACCESS EXCLUSIVE MODE" -c "SELECT pg_sleep(0.5)" \
            -c "COMMIT" >/dev/null 2>&1
        sleep 0.5
    done
}
gate &
GATE_PID=$!

KILLS=0
kill_loop() { # kill_loop SECONDS: SIGKILL and restart the applier at random moments
    local until=$((SECONDS + $1))
    while [ $SECONDS -lt $until ]; do
        sleep "$((RANDOM % 2)).$((RANDOM % 8 + 2))"
        applier_kill
        KILLS=$((KILLS + 1))
        applier_start "${ARGS[@]}"
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
kill_loop 12
wait "$emitter"; check "phase 1 callers finished" test $? = 0

# Phase 2: the other half with the applier stopped, so that a backlog builds up ...
applier_stop
emit_phase $((PER_CALLER / 2 + 1)) $PER_CALLER
check "phase 2 callers finished" test $? = 0

# ... then crash the server 5 times while the applier drains it: apply commits in flight in
# several sessions, nested emits of retried parents half way.
CRASHES=0
applied() { psql -qAtX -c 'SELECT (SELECT count(*) FROM numbers) + (SELECT count(*) FROM nested_numbers)' 2>/dev/null || echo 0; }
for _ in 1 2 3 4 5; do
    [ -n "$APPLIER_PID" ] || applier_start "${ARGS[@]}"
    # Crash while it applies: once it made progress since the last crash, after a random delay.
    before=$(applied)
    wait_for 30 bash -c "[ \$(psql -qAtX -c 'SELECT (SELECT count(*) FROM numbers) + (SELECT count(*) FROM nested_numbers)' 2>/dev/null || echo 0) -gt $before ]"
    sleep "0.$((RANDOM % 3 + 1))"
    note "applied when the server crashed: $(q -c 'SELECT count(*) FROM numbers' 2>&1), nested $(q -c 'SELECT count(*) FROM nested_numbers' 2>&1)"
    atx_cluster_crash "$TEST_DIR"
    CRASHES=$((CRASHES + 1))
    sleep 0.5
    atx_cluster_start "$TEST_DIR" || not_ok "server restart"
    if [ $((RANDOM % 2)) = 0 ]; then applier_kill; KILLS=$((KILLS + 1)); fi
done
note "server crashed $CRASHES times"

# More random kills while it finishes the backlog, until there were at least 20.
kill_loop 6
while [ "$KILLS" -lt 20 ]; do kill_loop 2; done
[ -n "$APPLIER_PID" ] || applier_start "${ARGS[@]}"
note "applier SIGKILLed $KILLS times"
check "at least 20 applier kills ($KILLS)" test "$KILLS" -ge 20
check_eq "5 server crashes" 5 "$CRASHES"

touch "$TEST_DIR/gate.stop"
wait "$GATE_PID"
wait_for 180 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM numbers') -ge $TOTAL ] && [ \$(psql -qAtX -c 'SELECT count(*) FROM nested_numbers') -ge $PARENTS ]"
wait_settled 60 || note "the applier did not settle"   # anything applied twice has been by then
read -r total distinct < <(q -F ' ' -c 'SELECT count(*), count(DISTINCT n) FROM numbers')
read -r ntotal ndistinct < <(q -F ' ' -c 'SELECT count(*), count(DISTINCT n) FROM nested_numbers')
note "rows $total, distinct $distinct, expected $TOTAL; nested rows $ntotal, distinct $ndistinct, expected $PARENTS"
check_eq "every number applied (distinct count)" "$TOTAL" "$distinct"
check_eq "nothing applied twice (row count)" "$TOTAL" "$total"
check_eq "every nested number applied (distinct count)" "$PARENTS" "$ndistinct"
check_eq "no nested message applied twice, though parents were retried" "$PARENTS" "$ntotal"
retries=$(grep 'event=retry ' "$TEST_DIR/applier.log" | grep -c 'sqlstate=55P03')
note "lock_timeout retries logged: $retries"
check "parents were retried after lock_timeout, emitting their nested message again ($retries retries)" test "$retries" -gt 0
check_eq "dead-letter table empty" 0 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"
r=FAIL
[ "$distinct" = "$TOTAL" ] && [ "$total" = "$TOTAL" ] && [ "$ndistinct" = "$PARENTS" ] && [ "$ntotal" = "$PARENTS" ] && r=pass
echo "# reliability: applier SIGKILL and server crash with $SESSIONS apply sessions in flight | $CALLERS callers x $PER_CALLER numbered messages, every 4th emitting a nested message under lock_timeout retries; applier SIGKILLed $KILLS times, server crashed (immediate stop) $CRASHES times | numbers $distinct/$TOTAL distinct, $total rows; nested $ndistinct/$PARENTS distinct, $ntotal rows; $retries retries | $r"
applier_stop
done_testing
