#!/usr/bin/env bash
# atx-applier end to end: rolled-back callers, every parameter type, idempotency keys,
# dead letters among good messages, and a transient failure that is retried.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE TABLE audit(id serial, msg text, who name, at timestamptz DEFAULT clock_timestamp());
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE typed(i int, b bigint, n numeric, t text, by bytea, ts timestamptz, j jsonb,
                   a int[], d posint, e mood, nul text);
CREATE TABLE keyed(v int);
CREATE TABLE seq(v int);
CREATE TABLE locked(v int);
SQL
applier_start --statement-timeout-ms 5000 --lock-timeout-ms 500 --retry-base-ms 200 --max-attempts 20
wait_for_slot || not_ok "applier created the slot"

# 1. A rolled-back caller's statement is applied (the time it took is a note: bounds are the
#    benchmark's, tools/atx bench).
t0=$(date +%s%N)
q -c "BEGIN" -c "SELECT atx_log('INSERT INTO audit(msg, who) VALUES (\$1, current_user)', 'rolled back'::text)" -c "ROLLBACK" >/dev/null
wait_for 10 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM audit WHERE msg = 'rolled back'\") = 1 ]"
ms=$((($(date +%s%N) - t0) / 1000000))
note "round trip took ${ms} ms"
check_eq "rolled-back caller's row applied once" 1 "$(q -c "SELECT count(*) FROM audit WHERE msg = 'rolled back'")"

# 2. Every parameter type survives emit -> WAL -> applier -> bind.
q <<'SQL' >/dev/null
BEGIN;
SELECT atx_log('INSERT INTO typed VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)',
    42, 9007199254740993::bigint, 3.14159265358979323846264338327950288::numeric,
    E'h\u00e9llo ''single'' "double" \\ back \u2713'::text, '\x00ff0000'::bytea,
    '2026-11-21 10:00:00.123456+02'::timestamptz, '{"a": [1, 2, {"b": null}]}'::jsonb,
    ARRAY[1, NULL, 3], 7::posint, 'happy'::mood, NULL::text);
ROLLBACK;
SQL
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM typed') = 1 ]"
check_eq "all parameter types round-trip" t "$(q <<'SQL'
SELECT i = 42 AND b = 9007199254740993 AND n = 3.14159265358979323846264338327950288
   AND t = E'h\u00e9llo ''single'' "double" \\ back \u2713' AND by = '\x00ff0000'::bytea
   AND ts = '2026-11-21 10:00:00.123456+02'::timestamptz AND j = '{"a": [1, 2, {"b": null}]}'::jsonb
   AND a = ARRAY[1, NULL, 3] AND d = 7 AND e = 'happy'
   AND nul IS NULL
FROM typed
SQL
)"

# 3. An idempotency key applies once; the second message is a duplicate.
q -c "SELECT atx_log_keyed('order-42', 'INSERT INTO keyed VALUES (\$1)', 1)" >/dev/null
q -c "SELECT atx_log_keyed('order-42', 'INSERT INTO keyed VALUES (\$1)', 2)" >/dev/null
q -c "SELECT atx_log('INSERT INTO seq VALUES (0)')" >/dev/null   # a marker after both
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM seq') = 1 ]"
check_eq "same key applied once (first value kept)" "1" "$(q -c "SELECT string_agg(v::text, ',') FROM keyed")"
check_eq "key recorded in atx.idempotency_key" 1 "$(q -c "SELECT count(*) FROM atx.idempotency_key WHERE key = 'order-42'")"
check "second message logged as a duplicate" grep -q "duplicate" "$TEST_DIR/applier.log"

# 4. A statement that can never run fails at the call (atx.validate); with validation off it is
#    dead-lettered, and its neighbours are applied.
out=$(psql -qAtX -v VERBOSITY=verbose -c "SELECT atx_log('INSERT INTO no_such_table VALUES (1)')" 2>&1)
check "validated at the call: 42P01 in the caller" bash -c "echo '$out' | grep -q 42P01"
q <<'SQL' >/dev/null
SELECT atx_log('INSERT INTO seq VALUES (1)');
SET atx.validate = off;
SELECT atx_log('INSERT INTO no_such_table VALUES (1)');
RESET atx.validate;
SELECT atx_log('INSERT INTO seq VALUES (2)');
SQL
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM seq') = 3 ]"
check_eq "good messages around a bad one applied" "0,1,2" "$(q -c "SELECT string_agg(v::text, ',' ORDER BY v) FROM seq")"
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM atx.dead_letter') = 1 ]"
check_eq "bad message dead-lettered with its SQLSTATE" "42P01|INSERT INTO no_such_table VALUES (1)" \
    "$(q -c 'SELECT sqlstate, statement FROM atx.dead_letter')"

# 5. A transient failure (a lock held past the lock timeout) is retried, then applied.
psql -qAtX -c "BEGIN" -c "LOCK TABLE locked IN ACCESS EXCLUSIVE MODE" -c "SELECT pg_sleep(3)" -c "COMMIT" >/dev/null &
locker=$!
wait_for_lock 10 locked || not_ok "the lock holder has its lock"
q -c "SELECT atx_log('INSERT INTO locked VALUES (1)')" >/dev/null
wait "$locker"
wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM locked') = 1 ]"
check_eq "locked statement applied once after the lock went away" 1 "$(q -c 'SELECT count(*) FROM locked')"
check "the wait was retried (55P03 in the log)" grep -q "event=retry.*55P03" "$TEST_DIR/applier.log"
check_eq "no new dead letter" 1 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"

# 6. SIGTERM: clean exit, quickly.
t0=$SECONDS
applier_stop
rc=$?
check_eq "SIGTERM exits 0" 0 "$rc"
check "SIGTERM exit within 5 s" test $((SECONDS - t0)) -le 5

done_testing
