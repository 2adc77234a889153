#!/usr/bin/env bash
# Isolation between callers in the apply path (issue 11): what one role's messages do must not
# hold up, break or crash another role's.
#
#  1. mallory's message waits 30 s on a lock her own open transaction holds, while alice emits
#     1,000 messages a second and calls atx_exec 20 times a second: every one of alice's messages
#     is applied while mallory's lock is still held, none waits seconds;
#  2. mallory's messages raise 40001, 40P01, 55P03 and 57P01 themselves and one sleeps for an
#     hour, under the same load: the same for alice; mallory's end dead-lettered (the raised ones
#     at once, the sleeper after --statement-timeout-ms);
#  3. the apply backend running mallory's message is SIGKILLed again and again: the message is
#     dead-lettered (08006) after --max-backend-losses losses while it ran alone, the server is
#     not crash-looped, alice's messages are applied;
#  4. a SELECT returning 1 GB that nobody waits for: the apply backend's peak RSS grows by less
#     than 100 MB.
# Head-of-line blocking costs the blocked message's wait (30 s) or the statement timeout (8 s),
# so the checks hold alice to a bound in seconds that noise on a busy machine cannot reach
# (ATX_ISOLATION_BOUND_S, 4 s); the latencies themselves are printed as notes, and measured
# against a quiet run in tools/atx bench (step isolation). Latencies are measured by the
# server's clocks: emitted at clock_timestamp() (a parameter), applied at clock_timestamp() in
# the INSERT.
. "$(dirname "$0")/../lib/testlib.sh"

RATE=${ATX_ISOLATION_RATE:-1000}
BOUND_S=${ATX_ISOLATION_BOUND_S:-4}
LOAD_SECONDS=30
TIMEOUT_MS=8000
atx_test_cluster "max_connections = 100" "shared_preload_libraries = 'pg_atx'" || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE alice LOGIN;
CREATE ROLE mallory LOGIN;
CREATE TABLE lat(phase text, t0 timestamptz, t1 timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON lat TO alice;
CREATE TABLE held(v text);
GRANT ALL ON held TO mallory;
CREATE TABLE phase(name text);
INSERT INTO phase VALUES ('warmup');
GRANT SELECT ON phase TO alice;
SQL
# mallory's own lock is held 45 s: only --max-retry-seconds (60) bounds her retries, not a count
applier_start --statement-timeout-ms $TIMEOUT_MS --max-backend-losses 2 --max-attempts 1000
wait_for_slot || not_ok "applier created the slot"
M() { PGUSER=mallory q "$@"; }
A() { PGUSER=alice q "$@"; }

# Alice's load: pgbench at RATE a second (end to end in table lat), and atx_exec calls at 20 a
# second (latency logged by pgbench).
cat >"$TEST_DIR/emit.sql" <<'SQL'
SELECT atx_log('INSERT INTO lat(phase, t0) VALUES ($1, $2)', (SELECT name FROM phase), clock_timestamp());
SQL
cat >"$TEST_DIR/exec.sql" <<'SQL'
SELECT atx_exec('SELECT 1');
SQL
PGBENCH="$ATX_PG_BINDIR/pgbench"
LOAD_PIDS=()
load_start() { # load_start TAG: alice's load for LOAD_SECONDS
    q -c "UPDATE phase SET name = '$1'" >/dev/null
    PGUSER=alice "$PGBENCH" -n -f "$TEST_DIR/emit.sql" -c 8 -j 2 -R "$RATE" -T "$LOAD_SECONDS" \
        >"$TEST_DIR/emit-$1.log" 2>&1 &
    LOAD_PIDS=($!)
    (cd "$TEST_DIR" && PGUSER=alice "$PGBENCH" -n -f exec.sql -c 2 -j 1 -R 20 -T "$LOAD_SECONDS" -l \
        --log-prefix="exec-$1" >"$TEST_DIR/exec-$1.log" 2>&1) &
    LOAD_PIDS+=($!)
}
load_wait() { local p; for p in "${LOAD_PIDS[@]}"; do wait "$p"; done; LOAD_PIDS=(); }
# Alice's figures in a phase: end-to-end p99 and max (ms), count; read from the server's clocks.
e2e() {
    q -F ' ' -c "SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM t1 - t0) * 1000)::numeric, 1),
                        round(max(extract(epoch FROM t1 - t0)) * 1000)::bigint, count(*)
                   FROM lat WHERE phase = '$1'"
}
# atx_exec calls of a phase: p99 and max (ms), count (pgbench -l: the third field is the
# latency in us).
exec_stats() {
    cat "$TEST_DIR"/exec-"$1".[0-9]* 2>/dev/null | awk '{ print $3 / 1000 }' | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "none none 0"; else { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.1f %.0f %d\n", v[i], v[NR], NR } }'
}
# transactions pgbench says it processed in a phase
processed() { sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$TEST_DIR/$1.log"; }
report() { # report PHASE: checks alice's messages and atx_exec calls in PHASE
    local p99 max n ep99 emax en sent
    sent=$(processed "emit-$1")
    wait_for 60 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM lat WHERE phase = '$1'\") -ge ${sent:-1} ]"
    read -r p99 max n <<<"$(e2e "$1")"
    read -r ep99 emax en <<<"$(exec_stats "$1")"
    note "$1: alice $n messages, end-to-end p99 $p99 ms, max $max ms; atx_exec $en calls, p99 $ep99 ms, max $emax ms"
    check "$1: alice's load ran (pgbench processed ${sent:-none})" test "${sent:-0}" -gt 0
    check_eq "$1: every message alice sent was applied, once" "${sent:-none}" "$n"
    check "$1: none of alice's messages waited ${BOUND_S} s (max $max ms)" test "${max:-999999}" -lt $((BOUND_S * 1000))
    check "$1: alice's atx_exec calls answered, none waited ${BOUND_S} s ($en calls, max $emax ms)" \
        awk "BEGIN { exit !(${en:-0} > 0 && ${emax:-1e9} < $BOUND_S * 1000) }"
    check_eq "$1: none of alice's messages dead-lettered" 0 \
        "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE caller_role = 'alice'")"
}

# Warm up (connections, plans), then a phase without any offender as the reference.
LOAD_SECONDS=5 load_start warmup; load_wait
load_start quiet; load_wait
report quiet

# 1. A lock mallory's own transaction holds for 30 s.
M -c "BEGIN" -c "LOCK TABLE held IN ACCESS EXCLUSIVE MODE" \
  -c "SELECT atx_log('INSERT INTO held VALUES (\$1)', 'waited for my own lock'::text)" \
  -c "SELECT pg_sleep($LOAD_SECONDS + 15)" -c "COMMIT" >/dev/null &
holder=$!
wait_for 30 bash -c "[ -n \"\$(psql -qAtX -c \"SELECT 1 FROM pg_locks WHERE relation = 'held'::regclass AND mode = 'AccessExclusiveLock' AND granted\")\" ]"
load_start blocked; load_wait
sent=$(processed emit-blocked)
wait_for 60 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM lat WHERE phase = 'blocked'\") -ge ${sent:-1} ]"
check "blocked: all of alice's messages applied while mallory still held her lock" \
    test -n "$(q -c "SELECT 1 FROM pg_locks WHERE relation = 'held'::regclass AND mode = 'AccessExclusiveLock' AND granted")"
check_eq "blocked: mallory's message still waiting then" 0 "$(q -c 'SELECT count(*) FROM held')"
wait "$holder"
report blocked
wait_for 30 bash -c "[ \"\$(psql -qAtX -c 'SELECT count(*) FROM held')\" = 1 ]"
check_eq "blocked: mallory's message applied once her transaction ended" 1 "$(q -c 'SELECT count(*) FROM held')"

# 2. Self-raised "transient" SQLSTATEs and a sleeper.
load_start offenders
t0=$SECONDS
for code in 40001 40P01 55P03 57P01; do
    M -c "SELECT atx_log(\$q\$DO \$\$ BEGIN RAISE EXCEPTION 'raised $code' USING ERRCODE = '$code'; END \$\$\$q\$)" >/dev/null
done
M -c "SELECT atx_log('SELECT pg_sleep(3600) /* sleeper */')" >/dev/null
load_wait
report offenders
dl() { q -c "SELECT sqlstate || ' attempts=' || attempts FROM atx.dead_letter WHERE caller_role = 'mallory' AND statement LIKE '%$1%'"; }
wait_for $((TIMEOUT_MS / 1000 + 30)) bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE caller_role = 'mallory'\") -ge 5 ]"
note "offenders dead-lettered within $((SECONDS - t0)) s: $(q -c "SELECT string_agg(sqlstate || ' x' || attempts, ', ' ORDER BY id) FROM atx.dead_letter WHERE caller_role = 'mallory'")"
for code in 40001 40P01 55P03 57P01; do
    check_eq "self-raised $code: dead-lettered at once, not retried" "$code attempts=1" "$(dl "raised $code")"
done
check_eq "pg_sleep(3600): dead-lettered after the statement timeout (57014)" "57014 attempts=1" "$(dl sleeper)"

# 3. The apply backend of mallory's message SIGKILLed, again and again.
crashes0=$(grep -c 'terminated by signal' "$TEST_DIR/server.log")
M -c "SELECT atx_log('SELECT pg_sleep(20) /* poison */')" >/dev/null
KILLS=0
for _ in $(seq 1 8); do
    pid=""
    wait_for 30 bash -c "psql -qAtX -c \"SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'atx-applier apply %' AND wait_event = 'PgSleep'\" 2>/dev/null | grep -q 1" &&
        pid=$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'atx-applier apply %' AND wait_event = 'PgSleep'" 2>/dev/null | head -1)
    [ -n "$pid" ] || break
    ready0=$(grep -c 'ready to accept connections' "$TEST_DIR/server.log")
    kill -9 "$pid" && KILLS=$((KILLS + 1))
    # the postmaster reinitialises after a backend's SIGKILL: wait until it is ready again
    wait_for 60 bash -c "[ \$(grep -c 'ready to accept connections' '$TEST_DIR/server.log') -gt $ready0 ]"
    [ -n "$(q -c "SELECT 1 FROM atx.dead_letter WHERE statement LIKE '%poison%'" 2>/dev/null)" ] && break
done
wait_for 30 bash -c "[ -n \"\$(psql -qAtX -c \"SELECT 1 FROM atx.dead_letter WHERE statement LIKE '%poison%'\" 2>/dev/null)\" ]"
got=$(dl poison)
note "poison: apply backend SIGKILLed $KILLS times; dead letter '$got'"
check_eq "poison: dead-lettered with 08006" "08006 attempts=1" "$got"
check "poison: after at most --max-backend-losses + 1 kills ($KILLS)" test "$KILLS" -le 3
q -c "UPDATE phase SET name = 'after-poison'" >/dev/null
A -c "SELECT count(atx_log('INSERT INTO lat(phase, t0) VALUES (\$1, \$2)', 'after-poison'::text, clock_timestamp())) FROM generate_series(1, 200)" >/dev/null
wait_for 30 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM lat WHERE phase = 'after-poison'\") = 200 ]"
check_eq "poison: alice's messages applied afterwards" 200 "$(q -c "SELECT count(*) FROM lat WHERE phase = 'after-poison'")"
crashes=$(($(grep -c 'terminated by signal' "$TEST_DIR/server.log") - crashes0))
check_eq "poison: the server restarted once per kill, never by itself (no crash loop)" "$KILLS" "$crashes"

# 4. 1 GB of result rows that nobody waits for. The message notes the backend it ran in (mallory's
# messages may get a fresh one: sessions are pinned to a role), and that backend's peak RSS is
# held to the largest of the apply backends before it plus 100 MB.
hwm() { sed -n 's/^VmHWM:\s*\([0-9]*\).*/\1/p' "/proc/$1/status" 2>/dev/null; }
base=0
for p in $(q -c "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'atx-applier apply %'"); do
    b=$(hwm "$p"); [ -n "$b" ] && [ "$b" -gt "$base" ] && base=$b
done
q -c "CREATE TABLE where_ran(pid int); GRANT INSERT ON where_ran TO mallory" >/dev/null
M -c "SELECT atx_log('WITH me AS (INSERT INTO where_ran SELECT pg_backend_pid() RETURNING 1)
                            SELECT repeat(''x'', 1024 * 1024) FROM me, generate_series(1, 1024) /* gigabyte */')" >/dev/null
wait_for 120 bash -c "[ -n \"\$(psql -qAtX -c \"SELECT 1 FROM where_ran\")\" ]"
ran=$(q -c "SELECT pid FROM where_ran")
after=$(hwm "$ran")
got=$(dl gigabyte)
note "1 GB unread result: ${got:-applied} in backend $ran; its peak RSS ${after:-gone} kB, largest apply backend's before $base kB"
check_eq "1 GB unread result: applied, once" "1 " "$(q -c "SELECT count(*) FROM where_ran") ${got}"
check "1 GB unread result: its apply backend's peak RSS < the others' + 100 MB (${after:-gone} kB vs $base kB)" \
    test -n "$after" -a "${after:-0}" -lt $((base + 102400))

applier_stop
done_testing
