#!/usr/bin/env bash
# atx_exec end to end: result of a rolled-back caller, READ COMMITTED visibility, the statement's
# own SQLSTATE in the caller, deadlock with the caller (40P01 < 2 s, and the autonomous change
# never happens, as after Oracle's ORA-00060), atx.exec_timeout, statement_timeout and cancel
# (the abandoned message is cancelled and recorded where its role sees it; atx.exec_on_abandon =
# apply applies it later), nesting to 16 levels, no preload; latency next to dblink.
. "$(dirname "$0")/../lib/testlib.sh"
# shellcheck disable=SC2206 # ATX_EXEC_APPLIER_ARGS: more applier options, a word list on purpose
EXEC_APPLIER_ARGS=(${ATX_EXEC_APPLIER_ARGS:-})

atx_test_cluster "shared_preload_libraries = 'pg_atx'" || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE TABLE t(id serial PRIMARY KEY, v text);
CREATE TABLE r(id int PRIMARY KEY, v int);
INSERT INTO r VALUES (42, 0);
CREATE TABLE lat(v int);
-- Runs atx_exec(stmt) and returns 'ok' or the SQLSTATE, the elapsed milliseconds, message and detail.
CREATE FUNCTION try_exec(stmt text, OUT state text, OUT ms int, OUT msg text, OUT detail text)
LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    PERFORM atx_exec(stmt);
    state := 'ok';
    ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
EXCEPTION WHEN OTHERS OR query_canceled THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    state := SQLSTATE;
    ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
END
$$;
SQL
applier_start "${EXEC_APPLIER_ARGS[@]}"
wait_for_slot || not_ok "applier created the slot"

# 1. The acceptance example: the caller rolls back, atx_exec returned the id, the row stays.
out=$(q -c "BEGIN" -c "SELECT atx_exec('INSERT INTO t(v) VALUES (\$1) RETURNING id', 'x') ->'result'->0->>'id'" -c "ROLLBACK")
check_eq "atx_exec returned the new id inside a rolled-back transaction" 1 "$out"
check_eq "the row is there after the caller's rollback" "1|x" "$(q -c "SELECT id, v FROM t")"
res=$(q -c "SELECT atx_exec('INSERT INTO t(v) VALUES (\$1)', 'y') - 'message_id'")
check_eq "outcome of a statement without rows" '{"rows": 1, "result": null, "status": "applied", "command": "INSERT"}' "$res"
check_eq "rows of a SELECT as a jsonb array" '[{"n": 1, "s": "a"}, {"n": 2, "s": "b"}]' \
    "$(q -c "SELECT atx_exec('SELECT n, s FROM (VALUES (1, ''a''), (2, ''b'')) v(n, s)')->'result'")"
check_eq "a result over atx.exec_max_result_bytes is dropped, the statement still counts" "true|1|null" \
    "$(q -c "SELECT r->>'result_truncated', r->>'rows', r->'result' FROM atx_exec('SELECT repeat(''x'', 20000)') r")"

# 2. READ COMMITTED: the caller's next statement sees the autonomous commit, also in PL/pgSQL.
check_eq "next statement of a READ COMMITTED caller sees the row" 1 \
    "$(q -c "BEGIN" -c "SELECT atx_exec('INSERT INTO t(v) VALUES (''rc'')') IS NOT NULL" -c "SELECT count(*) FROM t WHERE v = 'rc'" -c "COMMIT" | tail -1)"
check_eq "visible to the next PL/pgSQL statement" 5 "$(q <<'SQL'
DO $$
DECLARE n int;
BEGIN
    FOR i IN 1..5 LOOP
        PERFORM atx_exec('INSERT INTO t(v) VALUES (''loop'')');
        SELECT count(*) INTO n FROM t WHERE v = 'loop';
        IF n <> i THEN RAISE EXCEPTION 'after % calls % rows', i, n; END IF;
    END LOOP;
    RAISE NOTICE 'fine';
END
$$;
SELECT count(*) FROM t WHERE v = 'loop';
SQL
)"

# 3. A failing statement raises its own SQLSTATE; inside an EXCEPTION block or a savepoint the caller goes on.
check_eq "missing table: 42P01 in the caller" "42P01" "$(q -c "SELECT state FROM try_exec('INSERT INTO nosuch VALUES (1)')")"
check_eq "unique violation: 23505 with the statement's message" \
    '23505|duplicate key value violates unique constraint "t_pkey"' \
    "$(q -c "SELECT state, msg FROM try_exec('INSERT INTO t(id, v) VALUES (1, ''dup'')')")"
check "error detail keeps the original detail and names the message id" bash -c \
    "psql -qAtX -c \"SELECT detail FROM try_exec('INSERT INTO t(id, v) VALUES (1, ''dup'')')\" | tr '\n' ' ' | grep -Eq 'Key \(id\)=\(1\) already exists\. Raised by the autonomous statement of pg_atx message [0-9a-f-]{36}'"
out=$(q -c "BEGIN" -c "INSERT INTO t(v) VALUES ('caller')" -c "SAVEPOINT s" \
        -c "\\set ON_ERROR_STOP 0" -c "SELECT atx_exec('SELECT 1/0')" -c "ROLLBACK TO s" \
        -c "SELECT count(*) FROM t WHERE v = 'caller'" -c "COMMIT" 2>&1)
check "savepoint: error raised with 22012's message" grep -q "division by zero" <<<"$out"
check_eq "savepoint: caller's transaction usable and committed" 1 "$(q -c "SELECT count(*) FROM t WHERE v = 'caller'")"
check_eq "atx_exec_noraise returns a run-time failure as data" "failed|22012" \
    "$(q -c "SELECT r->>'status', r->>'sqlstate' FROM atx_exec_noraise('SELECT 1/\$1', 0) r")"
check_eq "... but what can never run fails at the call, also there (42P01)" "42P01" \
    "$(q -c "SELECT state FROM try_exec('SELECT atx_exec_noraise(''INSERT INTO nosuch VALUES (1)'')')")"

# 4. Deadlock with the caller: caller locked row 42, the autonomous statement updates row 42.
#    The caller gets 40P01 at once and the autonomous change never happens (atx.exec_on_abandon
#    = cancel, the default): it is dead-lettered with 57014, readable by the caller's role.
q -c "CREATE ROLE jobrunner LOGIN" -c "GRANT ALL ON t, r TO jobrunner" -c "GRANT USAGE ON SEQUENCE t_id_seq TO jobrunner" \
  -c "GRANT EXECUTE ON FUNCTION try_exec(text) TO jobrunner" >/dev/null
out=$(PGUSER=jobrunner q -c "BEGIN" -c "UPDATE r SET v = v + 1 WHERE id = 42" \
        -c "SELECT state || '|' || ms FROM try_exec('UPDATE r SET v = v + 10 WHERE id = 42')" -c "COMMIT")
state=${out%%|*}
ms=${out##*|}
note "deadlock detected after ${ms} ms"
check_eq "deadlock raises 40P01 in the caller" 40P01 "$state"
check "... within seconds, not a hang (${ms} ms)" test "${ms:-99999}" -lt 10000
check "the cancelled message is dead-lettered (57014), visible to the caller's role" wait_for 10 bash -c \
    "[ \$(PGUSER=jobrunner psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE sqlstate = '57014' AND statement LIKE 'UPDATE r SET v = v + 10%' AND error LIKE '%deadlock%'\") = 1 ]"
check_eq "the autonomous update never happened; the caller's committed" 1 \
    "$(q -c "SELECT atx_exec('SELECT v FROM r WHERE id = 42')->'result'->0->>'v'")"
out=$(PGUSER=jobrunner q -c "BEGIN" -c "UPDATE r SET v = v + 100 WHERE id = 42" -c "\\set ON_ERROR_STOP 0" \
        -c "SELECT atx_exec('UPDATE r SET v = v + 1000 WHERE id = 42')" -c "ROLLBACK" 2>&1)
check "uncaught deadlock: 40P01 message and what became of the message" bash -c \
    "grep -q 'deadlock detected: atx_exec waits for pg_atx message' <<<\"\$1\" && grep -q 'is cancelled: it will not be applied' <<<\"\$1\"" _ "$out"
check_eq "caller rolled back, nothing applied, the applier goes on" "1|applied" \
    "$(q -c "SELECT (SELECT v FROM r WHERE id = 42), atx_exec('INSERT INTO t(v) VALUES (''after deadlock'')')->>'status'")"
check_eq "another role does not see jobrunner's dead letters" 0 \
    "$(q -c "CREATE ROLE outsider LOGIN" >/dev/null; PGUSER=outsider psql -qAtX -c 'SELECT count(*) FROM atx.dead_letter')"
# atx.exec_on_abandon = apply: the old behaviour, applied once the caller's locks are gone.
check_eq "exec_on_abandon = apply: 40P01 as well" "40P01" \
    "$(q -c "BEGIN" -c "SET LOCAL atx.exec_on_abandon = apply" -c "INSERT INTO t(id, v) VALUES (1000, 'caller')" \
        -c "SELECT state FROM try_exec('INSERT INTO t(id, v) VALUES (1000, ''autonomous'')')" -c "ROLLBACK")"
check "... and applied after the caller rolled back" wait_for 10 bash -c \
    "[ \$(psql -qAtX -c \"SELECT v FROM t WHERE id = 1000\") = autonomous ]"

# 5. atx.exec_timeout: raises after the configured time; the message is cancelled (not applied).
out=$(q -c "SET atx.exec_timeout = 500" -c "SELECT state || '|' || ms || '|' || msg || '|' || detail FROM try_exec('INSERT INTO t(v) SELECT ''slow'' FROM pg_sleep(1.5)')")
IFS='|' read -r state ms msg detail <<<"$out"
note "timeout raised after ${ms} ms: $msg"
check_eq "timeout: 55P03 (catchable like lock_timeout)" 55P03 "$state"
check "timeout not before its 500 ms, and within seconds (${ms} ms)" test "$ms" -ge 500 -a "$ms" -lt 10000
check "timeout message names the message id" grep -Eq "waiting for pg_atx message [0-9a-f-]{36}" <<<"$msg"
check "timeout detail says it is cancelled" grep -q "is cancelled: it will not be applied" <<<"$detail"
check "the timed-out message is dead-lettered, not applied" wait_for 10 bash -c \
    "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE statement LIKE '%''slow''%' AND sqlstate = '57014'\") = 1 ]"
check_eq "... no row" 0 "$(q -c "SELECT count(*) FROM t WHERE v = 'slow'")"
out=$(q -c "SET atx.exec_timeout = 300" -c "SET atx.exec_on_abandon = apply" -c "SELECT detail FROM try_exec('INSERT INTO t(v) SELECT ''slow apply'' FROM pg_sleep(1)')")
check "exec_on_abandon = apply: the detail says it will be applied" grep -q "will still be applied" <<<"$out"
check "... and it is applied later" wait_for 10 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM t WHERE v = 'slow apply'\") = 1 ]"

# 6. statement_timeout and cancel end the wait and say what becomes of the message.
out=$(q -c "SET statement_timeout = 300" -c "SELECT state || '|' || detail FROM try_exec('INSERT INTO t(v) SELECT ''st'' FROM pg_sleep(1)')")
check "statement_timeout: 57014 and the message is cancelled" grep -Eq "^57014\|pg_atx message [0-9a-f-]{36} is cancelled" <<<"$out"
PGAPPNAME=exec_cancel psql -qAtX -c "SELECT atx_exec('INSERT INTO t(v) SELECT ''cancelled'' FROM pg_sleep(2)')" >"$TEST_DIR/cancel.out" 2>&1 &
cpid=$!
wait_for 5 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'exec_cancel' AND wait_event = 'Extension'\") = 1 ]"
t0=$(date +%s%N)
q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'exec_cancel'" >/dev/null
wait "$cpid"
ms=$((($(date +%s%N) - t0) / 1000000))
note "the cancel ended the wait after ${ms} ms (the statement sleeps 2 s)"
check "cancel: the user's error, and the message is cancelled" bash -c \
    "grep -q 'canceling statement due to user request' '$TEST_DIR/cancel.out' && grep -q 'is cancelled' '$TEST_DIR/cancel.out'"
check "cancelled and statement_timeout messages dead-lettered, not applied" wait_for 10 bash -c \
    "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE sqlstate = '57014' AND (statement LIKE '%''cancelled''%' OR statement LIKE '%''st''%')\") = 2 ]"
check_eq "... no rows" 0 "$(q -c "SELECT count(*) FROM t WHERE v IN ('cancelled', 'st')")"

# 7. Nesting: an applied statement may call atx_exec; another apply session serves it, down to
#    16 levels (EDB allows 16). Deeper fails at the call, at once (54001).
check_eq "atx_exec inside an applied statement" 1 \
    "$(q -c "SELECT atx_exec('SELECT atx_exec(''SELECT 1 AS one'')->''result''->0->>''one'' AS inner')->'result'->0->>'inner'")"
q <<'SQL' >/dev/null
CREATE TABLE depth_log(depth int);
-- Calls itself through atx_exec until depth n, logging the depth of each applied level as
-- current_message() sees it (the client's own call is not a message: -1).
CREATE FUNCTION nest(n int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE d int := coalesce((atx.current_message()).depth, -1);
BEGIN
    IF d >= 0 THEN INSERT INTO depth_log VALUES (d); END IF;
    IF d >= n THEN RETURN d; END IF;
    RETURN (atx_exec('SELECT nest($1) AS d', n)->'result'->0->>'d')::int;
END $$;
SQL
t0=$SECONDS
check_eq "16 levels of nested atx_exec, each served" 16 "$(q -c "SELECT nest(16)")"
note "16 levels took $((SECONDS - t0)) s"
check_eq "... each level once" "0-16|17" "$(q -c "SELECT min(depth) || '-' || max(depth), count(*) FROM depth_log")"
out=$(q -c "SELECT state || '|' || ms || '|' || msg FROM try_exec('SELECT nest(17)')")
check "17 levels: 54001 (too deep)" grep -Eq "^(54001)\|" <<<"$out"
check_eq "atx_log inside an atx_exec statement is fine" 1 \
    "$(q -c "SELECT atx_exec('SELECT atx_log(''INSERT INTO t(v) VALUES (''''nested log'''')'')')->>'rows'")"
check "... and applied" wait_for 10 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM t WHERE v = 'nested log'\") = 1 ]"

# 7b. Concurrent waiters: each gets its own outcome (4 sessions x 50 calls, results checked).
pids=()
for c in 1 2 3 4; do
    q -c "DO \$\$
DECLARE r jsonb;
BEGIN
    FOR i IN 1..50 LOOP
        r := atx_exec('INSERT INTO t(v) VALUES (\$1) RETURNING v', 'conc-$c-' || i);
        IF r->'result'->0->>'v' <> 'conc-$c-' || i THEN RAISE EXCEPTION 'got % for conc-$c-%', r, i; END IF;
    END LOOP;
END \$\$" >"$TEST_DIR/conc$c.out" 2>&1 &
    pids+=($!)
done
conc_ok=0
for p in "${pids[@]}"; do wait "$p" && conc_ok=$((conc_ok + 1)); done
check_eq "4 concurrent sessions x 50 atx_exec: every result is the caller's own" 4 "$conc_ok"
check_eq "... 200 rows" 200 "$(q -c "SELECT count(*) FROM t WHERE v LIKE 'conc-%'")"

# 8. Applier stopped: atx_exec waits for atx.exec_timeout and says nobody applies; the message is
#    cancelled, or with exec_on_abandon = apply applied when the applier is back.
applier_stop
out=$(q -c "SET atx.exec_timeout = 300" -c "SELECT state FROM try_exec('INSERT INTO t(v) VALUES (''offline'')')")
check_eq "no applier: timeout" 55P03 "$out"
out=$(q -c "SET atx.exec_timeout = 300" -c "SET atx.exec_on_abandon = apply" -c "SELECT state FROM try_exec('INSERT INTO t(v) VALUES (''offline apply'')')")
check_eq "no applier, exec_on_abandon = apply: timeout" 55P03 "$out"
applier_start "${EXEC_APPLIER_ARGS[@]}"
check "offline message in apply mode applied once the applier is back" wait_for 20 bash -c \
    "[ \$(psql -qAtX -c \"SELECT count(*) FROM t WHERE v = 'offline apply'\") = 1 ]"
check_eq "... the cancelled one was not" 0 "$(q -c "SELECT count(*) FROM t WHERE v = 'offline'")"

# 8b. A message that ran past the applier's statement limit is dead-lettered; the waiter gets
# that failure.
applier_stop
applier_start --statement-timeout-ms 300
out=$(q -c "SELECT r->>'status', r->>'sqlstate', r->>'error' FROM atx_exec_noraise('SELECT pg_sleep(2)') r")
check "over the apply timeout: failed with 57014" grep -q "^failed|57014|canceling statement due to the pg_atx apply timeout" <<<"$out"
check_eq "... and it is the dead letter" 1 "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE statement = 'SELECT pg_sleep(2)'")"
applier_stop
applier_start "${EXEC_APPLIER_ARGS[@]}"

# 9. Latency: median of 200 atx_exec calls; dblink_exec next to it (new connection per call, as the
# usual autonomous-transaction emulation does, and one kept connection).
q -c "CREATE EXTENSION dblink" >/dev/null
connstr="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$PGDATABASE"
lat=$(q <<SQL
CREATE TEMP TABLE samples(kind text, ms float8);
DO \$\$
DECLARE t0 timestamptz;
BEGIN
    PERFORM atx_exec('INSERT INTO lat VALUES (0)');  -- warm up
    FOR i IN 1..200 LOOP
        t0 := clock_timestamp();
        PERFORM atx_exec('INSERT INTO lat VALUES (\$1)', i);
        INSERT INTO samples VALUES ('atx_exec', extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
    FOR i IN 1..200 LOOP
        t0 := clock_timestamp();
        PERFORM atx_log('INSERT INTO lat VALUES (\$1)', i);
        INSERT INTO samples VALUES ('atx_log (emit and flush only)', extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
    FOR i IN 1..200 LOOP
        t0 := clock_timestamp();
        PERFORM dblink_exec('$connstr', format('INSERT INTO lat VALUES (%s)', i));
        INSERT INTO samples VALUES ('dblink_exec (connect per call)', extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
    PERFORM dblink_connect('lat', '$connstr');
    FOR i IN 1..200 LOOP
        t0 := clock_timestamp();
        PERFORM dblink_exec('lat', format('INSERT INTO lat VALUES (%s)', i));
        INSERT INTO samples VALUES ('dblink_exec (kept connection)', extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
    PERFORM dblink_disconnect('lat');
END
\$\$;
SELECT kind || ': median ' || round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2)
       || ' ms, p90 ' || round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 2) || ' ms'
  FROM samples GROUP BY kind ORDER BY kind;
SQL
)
while IFS= read -r line; do note "latency $line"; done <<<"$lat"
check "all latency calls applied" wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM lat') = 801 ]"

# 10. Without shared_preload_libraries: a clear refusal (55000), atx_log unaffected.
applier_stop
echo "shared_preload_libraries = ''" >>"$TEST_DIR/data/postgresql.conf"
atx_cluster_stop "$TEST_DIR" fast
atx_cluster_start "$TEST_DIR" || not_ok "restart without preload"
out=$(q -c "SELECT state || '|' || msg FROM try_exec('SELECT 1')")
check_eq "not preloaded: 55000" "55000|atx_exec requires pg_atx in shared_preload_libraries" "$out"
check "not preloaded: atx_log still works" q -c "SELECT atx_log('SELECT 1')"

done_testing
