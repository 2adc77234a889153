# shellcheck shell=bash
# The workload of the fault tests (tests/integration/fault_*.sh), sourced after testlib.sh.
#
# Callers emit numbered messages n = caller*100000 + i through CALL emit(): i % 7 = 0 goes to a
# missing table (emitted with atx.validate off; must be dead-lettered, 42P01), i % 5 = 0 is emitted twice with the same
# idempotency key (the second as -n: must never land), every third transaction rolls back.
# Each caller prints "attempt n" before and "confirmed n" after atx_log returned (NOTICEs are
# flushed to the client at once), so a caller that dies mid-call knows which numbers are certain.
workload_setup() {
    q <<'SQL' >/dev/null
CREATE TABLE numbers(n int);   -- no unique constraint: duplicates must be countable
CREATE PROCEDURE emit(caller int, first int, last int, pause float8 DEFAULT 0.02) LANGUAGE plpgsql AS $$
DECLARE n int;
BEGIN
    FOR i IN first..last LOOP
        n := caller * 100000 + i;
        RAISE NOTICE 'attempt %', n;
        IF i % 7 = 0 THEN
            -- Never validated at the call: it must reach the applier and be dead-lettered.
            PERFORM set_config('atx.validate', 'off', true);
            PERFORM atx_log('INSERT INTO missing_table(n) VALUES ($1)', n);
        ELSIF i % 5 = 0 THEN
            PERFORM atx_log_keyed('key-' || n, 'INSERT INTO numbers(n) VALUES ($1)', n);
            PERFORM atx_log_keyed('key-' || n, 'INSERT INTO numbers(n) VALUES ($1)', -n);
        ELSE
            PERFORM atx_log('INSERT INTO numbers(n) VALUES ($1)', n);
        END IF;
        RAISE NOTICE 'confirmed %', n;
        IF i % 3 = 0 THEN ROLLBACK; ELSE COMMIT; END IF;
        IF i % 25 = 0 THEN PERFORM pg_sleep(pause); END IF;
    END LOOP;
END $$;
CREATE TABLE exp(n int PRIMARY KEY, certain bool NOT NULL);
SQL
}

# caller C FIRST LAST [PAUSE]: runs CALL emit until LAST is confirmed; after a lost connection
# (server crash) it goes on after the last number it attempted. Output in $TEST_DIR/caller$C.log.
caller() {
    local c=$1 next=$2 last=$3 pause=${4:-0.02} a rc tries=0
    while [ "$next" -le "$last" ] && [ $tries -lt 200 ]; do
        tries=$((tries + 1))
        psql -qAtX -c "CALL emit($c, $next, $last, $pause)" >>"$TEST_DIR/caller$c.log" 2>&1
        rc=$?
        [ $rc = 0 ] && return 0
        [ $rc = 2 ] || return 1   # 2: the connection went bad (crash); anything else is a failure
        a=$(grep -o 'attempt [0-9]*' "$TEST_DIR/caller$c.log" | tail -n 1 | cut -d' ' -f2)
        [ -n "$a" ] && next=$((a % 100000 + 1))
        sleep 0.3
    done
    [ "$next" -gt "$last" ]
}

# callers_start N FIRST LAST [PAUSE]: N callers in the background; callers_wait: all succeeded.
CALLER_PIDS=()
callers_start() {
    local c
    for c in $(seq 1 "$1"); do caller "$c" "$2" "$3" "${4:-0.02}" & CALLER_PIDS+=($!); done
}
callers_wait() {
    local p rc=0
    for p in "${CALLER_PIDS[@]}"; do wait "$p" || rc=1; done
    CALLER_PIDS=()
    return $rc
}

# exp_load: table exp from the callers' logs: attempted numbers, certain = confirmed.
exp_load() {
    cat "$TEST_DIR"/caller*.log | sed -n 's/.*NOTICE:  *\(attempt\|confirmed\) \([0-9]*\)$/\2 \1/p' |
        sort -n | awk '{ if ($2 == "confirmed") c[$1] = 1; else a[$1] = 1 }
                       END { for (n in a) print n "\t" (n in c ? "t" : "f") }' >"$TEST_DIR/exp.tsv"
    q -c "TRUNCATE exp" -c "\\copy exp FROM '$TEST_DIR/exp.tsv'" >/dev/null
}

# counts: one line of the exactness counters (see the names in verify_exact).
counts() {
    q -F ' ' <<'SQL'
WITH e AS (SELECT n, certain, n % 100000 % 7 = 0 AS bad FROM exp),
g AS (SELECT n, count(*) AS k FROM numbers GROUP BY n),
d AS (SELECT (atx.decode(payload)->'params'->0->>'value')::int AS n, count(*) AS k
        FROM atx.dead_letter WHERE statement LIKE '%missing_table%' GROUP BY 1)
SELECT (SELECT count(*) FROM e WHERE certain AND NOT bad),
       (SELECT count(*) FROM e WHERE certain AND bad),
       (SELECT count(*) FROM e WHERE NOT certain),
       (SELECT count(*) FROM e JOIN g USING (n) WHERE e.certain AND NOT e.bad AND g.k = 1),
       (SELECT count(*) FROM e JOIN d USING (n) WHERE e.certain AND e.bad AND d.k = 1),
       (SELECT count(*) FROM e LEFT JOIN g USING (n) LEFT JOIN d USING (n)
         WHERE NOT e.certain AND coalesce(g.k, 0) + coalesce(d.k, 0) > 1),
       (SELECT count(*) FROM numbers WHERE n NOT IN (SELECT n FROM e WHERE NOT bad)),
       (SELECT count(*) FROM atx.dead_letter WHERE sqlstate <> '42P01' OR
               (atx.decode(payload)->'params'->0->>'value')::int NOT IN (SELECT n FROM e WHERE bad)),
       (SELECT count(*) FROM e LEFT JOIN g USING (n) LEFT JOIN d USING (n)
         WHERE NOT e.certain AND coalesce(g.k, 0) + coalesce(d.k, 0) = 1)
SQL
}

# wait_drained SECONDS: until every certain number has landed (applied or dead-lettered).
wait_drained() {
    local deadline=$((SECONDS + $1)) c
    while :; do
        read -r -a c < <(counts 2>/dev/null)
        [ "${#c[@]}" = 9 ] && [ "${c[3]}" = "${c[0]}" ] && [ "${c[4]}" = "${c[1]}" ] && return 0
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.5
    done
}

# verify_exact LABEL: after the stream drained, every confirmed good number exactly once in
# numbers, every confirmed bad one exactly once in atx.dead_letter (42P01), unconfirmed ones
# at most once, nothing else (no -n from a duplicate key). Sets VERIFY_SUMMARY.
VERIFY_SUMMARY=""
verify_exact() {
    local label=$1 c
    exp_load
    wait_drained "${2:-90}" || note "$label: not drained in time"
    wait_settled 60 || note "$label: the applier did not settle"   # anything applied twice has been by then
    read -r -a c < <(counts)
    VERIFY_SUMMARY="good ${c[3]}/${c[0]} once, bad ${c[4]}/${c[1]} dead-lettered once, in-flight ${c[2]} (${c[8]} landed, ${c[5]} twice), stray rows ${c[6]}, stray dead letters ${c[7]}"
    note "$label: $VERIFY_SUMMARY"
    check_eq "$label: every confirmed good number applied exactly once" "${c[0]}" "${c[3]}"
    check_eq "$label: every confirmed bad number dead-lettered exactly once" "${c[1]}" "${c[4]}"
    check_eq "$label: no unconfirmed number landed twice" 0 "${c[5]}"
    check_eq "$label: no stray or duplicate-key rows" 0 "${c[6]}"
    check_eq "$label: no unexpected dead letters" 0 "${c[7]}"
    check "$label: workload was not empty" test "${c[0]}" -gt 0 -a "${c[1]}" -gt 0
    [ "${c[0]}" = "${c[3]}" ] && [ "${c[1]}" = "${c[4]}" ] && [ "${c[5]}${c[6]}${c[7]}" = 000 ] &&
        [ "${c[0]}" -gt 0 ] && [ "${c[1]}" -gt 0 ]
}
# reliability FAULT DONE COUNTED RESULT: a row of docs/reliability.md (tools/reliability_report.sh).
reliability() { echo "# reliability: $1 | $2 | $3 | $4"; }
