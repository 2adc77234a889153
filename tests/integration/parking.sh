#!/usr/bin/env bash
# Parking (docs/applier.md, invariant 2 of docs/security.md: the slot always moves). Messages
# stuck behind a long-running statement of their own lane are copied into the server, so that
# the slot, and the WAL it keeps, moves past them before they run; they run later from that
# copy, each exactly once, after their WAL is gone and across an applier SIGKILL; an other
# role's messages are not held up; with --park-after-ms 0 the slot waits for them. A message that
# runs longer than --park-after-ms is parked while it runs.
. "$(dirname "$0")/../lib/testlib.sh"

N=12
atx_test_cluster "wal_keep_size = 0" "min_wal_size = 32MB" "max_wal_size = 64MB" || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE slow LOGIN;
CREATE ROLE other LOGIN;
CREATE TABLE done(who text, n int, at timestamptz DEFAULT clock_timestamp());
GRANT INSERT ON done TO slow, other;
-- 1.5 s per message: one lane of 12 takes 18 s to run, one after another.
CREATE FUNCTION slow_step(n int) RETURNS void LANGUAGE sql
    AS $$ SELECT pg_sleep(1.5); INSERT INTO done(who, n) VALUES ('slow', n) $$;
GRANT EXECUTE ON FUNCTION slow_step(int) TO slow;
SQL
slot_lsn() { q -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = atx.slot_name()"; }
at_or_past() { [ "$(q -c "SELECT '$(slot_lsn)'::pg_lsn >= '$1'::pg_lsn")" = t ]; }
not_past() { ! at_or_past "$1"; }
count() { q -c "SELECT count(*) FROM done WHERE who = '$1'"; }

# 1. Parking off: the slot waits for the lane.
applier_start --park-after-ms 0 --prune-interval-ms 500
wait_for_slot || not_ok "applier created the slot"
PGUSER=slow q -c "SELECT count(atx_log('SELECT slow_step(\$1)', g)) FROM generate_series(1, 3) g" >/dev/null
end=$(q -c "SELECT pg_current_wal_lsn()")
wait_for 30 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM done WHERE who = 'slow'\") -ge 1 ]"
check "--park-after-ms 0: while the lane runs, the slot stays behind it" not_past "$end"
wait_for 30 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM done WHERE who = 'slow'\") -ge 3 ]"
check_eq "--park-after-ms 0: nothing parked" 0 "$(grep -c 'event=parked' "$TEST_DIR/applier.log")"
applier_stop
q -c "TRUNCATE done" >/dev/null

# 2. Parking after 1 s: 12 messages in one lane.
applier_start --park-after-ms 1000 --prune-interval-ms 500
wait_for_slot || not_ok "applier streams again"
PGUSER=slow q -c "SELECT count(atx_log('SELECT slow_step(\$1)', g)) FROM generate_series(1, $N) g" >/dev/null
end=$(q -c "SELECT pg_current_wal_lsn()")
wait_for 30 at_or_past "$end"
ran=$(count slow)
note "the slot passed the lane's $N messages when $ran had run"
check "the slot moved past the stuck lane before it ran ($ran of $N had run)" test "$ran" -lt $((N - 2))
parked=$(q -c "SELECT count(*) FROM atx.applied WHERE status = 'parked' AND payload IS NOT NULL")
check "they wait as parked records ($parked)" test "$parked" -ge $((N - ran - 2))

# Their WAL goes: the slot no longer keeps it.
oldest=$(q -c "SELECT min(lsn) FROM atx.applied WHERE payload IS NOT NULL")
gone() {
    q -c "SELECT pg_switch_wal(); CHECKPOINT" >/dev/null
    [ "$(q -c "SELECT count(*) FROM pg_ls_waldir() WHERE name = pg_walfile_name('$oldest')")" = 0 ]
}
check "the WAL segment of the oldest parked message is removed" wait_for 30 gone

# Another role is not held up meanwhile.
PGUSER=other q -c "SELECT atx_log('INSERT INTO done(who, n) VALUES (''other'', 1)')" >/dev/null
check "another role's message is applied while the lane runs" wait_for 10 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM done WHERE who = 'other'\") = 1 ]"
check "... before the lane is done ($(count slow) of $N)" test "$(count slow)" -lt "$N"

# SIGKILL the applier in the middle; its successor runs the rest from their copies.
wait_for 30 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM done WHERE who = 'slow'\") -ge 4 ]"
applier_kill
note "applier killed after $(count slow) of $N"
applier_start --park-after-ms 1000 --prune-interval-ms 500
wait_for 90 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM done WHERE who = 'slow'\") -ge $N ]"
check "the successor loaded the parked messages" grep -q 'event=parked_loaded' "$TEST_DIR/applier.log"
wait_for 10 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.applied WHERE payload IS NOT NULL\") = 0 ]"
check_eq "every message ran exactly once, in order" "$N $N t" \
    "$(q -F ' ' -c "SELECT count(*), count(DISTINCT n), bool_and(ordered) FROM (SELECT n, n > coalesce(lag(n) OVER (ORDER BY at), 0) AS ordered FROM done WHERE who = 'slow') x")"
check_eq "no parked copy is left" 0 "$(q -c "SELECT count(*) FROM atx.applied WHERE payload IS NOT NULL")"
check_eq "nothing dead-lettered" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter")"
check "the messages were parked" grep -q 'event=parked ' "$TEST_DIR/applier.log"

# 3. A message that runs longer than --park-after-ms is parked while it runs: the slot passes it
# before it ends; its apply takes the parked record over; once, also when the applier is killed
# while it runs. A non-atomic one keeps its 'started' record and gets the copy.
q <<'SQL' >/dev/null
CREATE PROCEDURE slow_na(n int) LANGUAGE plpgsql AS $$
BEGIN COMMIT; PERFORM pg_sleep(5); INSERT INTO done(who, n) VALUES ('long', n); END $$;
GRANT EXECUTE ON PROCEDURE slow_na(int) TO slow;
SQL
record() { q -c "SELECT status || ' ' || (payload IS NOT NULL) FROM atx.applied WHERE message_id = '$1'"; }
# Applied, its copy gone: 'applied false', or no record at all once the prune (every 500 ms here)
# has passed it, which it does for handled records only (a parked copy is kept).
applied_no_copy() { case "$(record "$1")" in "applied false" | "") return 0 ;; *) return 1 ;; esac; }
long_once() { [ "$(q -c "SELECT count(*) FROM done WHERE who = 'long' AND n = $1")" = 1 ]; }
id=$(PGUSER=slow q -c "SELECT atx_log('SELECT pg_sleep(6); INSERT INTO done(who, n) VALUES (''long'', 1)')")
end=$(q -c "SELECT pg_current_wal_lsn()")
check "a message that runs 6 s: the slot passes it while it runs" wait_for 5 at_or_past "$end"
check_eq "... before it ended" 0 "$(q -c "SELECT count(*) FROM done WHERE who = 'long'")"
check_eq "... as a parked record with its copy" "parked true" "$(record "$id")"
check "it is applied once" wait_for 15 long_once 1
check "... its record taken over (applied, no copy; or pruned, as handled): $(record "$id")" applied_no_copy "$id"

id=$(PGUSER=slow q -c "SELECT atx_log('SELECT pg_sleep(6); INSERT INTO done(who, n) VALUES (''long'', 2)')")
check "another one is parked while it runs" wait_for 5 bash -c "[ \"\$(psql -qAtX -c \"SELECT status FROM atx.applied WHERE message_id = '$id'\")\" = parked ]"
applier_kill
applier_start --park-after-ms 1000 --prune-interval-ms 500
check "the applier killed while it ran: its record ends applied, without a copy left to run" wait_for 30 applied_no_copy "$id"
check "... and it was applied once" long_once 2

id=$(PGUSER=slow q -c "SELECT atx_log('CALL slow_na(3)')")
end=$(q -c "SELECT pg_current_wal_lsn()")
check "a non-atomic message that runs 5 s: the slot passes it while it runs" wait_for 5 at_or_past "$end"
check_eq "... its record started, with its copy" "started true" "$(record "$id")"
check "it is applied once" wait_for 15 long_once 3
check "... its record says so" wait_for 10 applied_no_copy "$id"
check_eq "nothing dead-lettered" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter")"
applier_stop
done_testing
