#!/usr/bin/env bash
# Messages that cannot run inside a transaction block (issue 14): a CALL whose procedure commits
# or rolls back (Oracle batch procedures that COMMIT every N rows; EDB's procedure that ends in
# ROLLBACK), VACUUM, CREATE INDEX CONCURRENTLY. They run as a top-level statement of a session
# of their caller, are never run twice, and one interrupted half way is in doubt (40003).
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster "shared_preload_libraries = 'pg_atx'" || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE batcher LOGIN;
CREATE ROLE nologin_role NOLOGIN;
CREATE TABLE loaded(n int, by_user name, by_session name);
CREATE TABLE big(v int);
INSERT INTO big SELECT g FROM generate_series(1, 20000) g;
GRANT ALL ON loaded, big TO batcher, nologin_role;
GRANT CREATE ON SCHEMA public TO batcher;
ALTER TABLE big OWNER TO batcher;
-- An Oracle-style batch: commits every 10 rows.
CREATE PROCEDURE batch_load(total int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..total LOOP
        INSERT INTO loaded VALUES (i, current_user, session_user);
        IF i % 10 = 0 THEN COMMIT; END IF;
    END LOOP;
END $$;
-- EDB scenario 2b: does its work, then ROLLBACK.
CREATE PROCEDURE undo_all() LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO loaded VALUES (-1, current_user, session_user);
    ROLLBACK;
END $$;
-- Commits some, then fails.
CREATE PROCEDURE half_then_fail() LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO loaded VALUES (-2, current_user, session_user);
    COMMIT;
    RAISE EXCEPTION 'after the commit' USING ERRCODE = 'P0001';
END $$;
-- Commits, then sleeps (to be interrupted).
CREATE PROCEDURE commit_then_sleep() LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO loaded VALUES (-3, current_user, session_user);
    COMMIT;
    PERFORM pg_sleep(30);
    INSERT INTO loaded VALUES (-4, current_user, session_user);
END $$;
-- Holds its login's background worker share; and one that counts its runs (a sequence is not
-- rolled back with the atomic run that learns it needs a top-level one).
CREATE PROCEDURE hold_share(secs float8) LANGUAGE plpgsql AS $$
BEGIN
    COMMIT;
    PERFORM pg_sleep(secs);
END $$;
CREATE SEQUENCE runs;
CREATE PROCEDURE counted() LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('runs');
    COMMIT;
    INSERT INTO loaded VALUES (-6, current_user, session_user);
END $$;
GRANT USAGE ON SEQUENCE runs TO batcher;
-- Tries to leave its caller's identity after a COMMIT.
CREATE PROCEDURE escape() LANGUAGE plpgsql AS $$
BEGIN
    COMMIT;
    RESET SESSION AUTHORIZATION;
    SET ROLE postgres;
    INSERT INTO loaded VALUES (-5, current_user, session_user);
END $$;
GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA public TO batcher, nologin_role;
SQL
applier_start --statement-timeout-ms 20000
wait_for_slot || not_ok "applier created the slot"
B() { PGUSER=batcher q "$@"; }

# 1. A batch procedure that commits every 10 rows, from a caller that rolls back.
id=$(B -c "BEGIN" -c "SELECT atx_log('CALL batch_load(\$1)', 95)" -c "ROLLBACK")
wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM loaded WHERE n > 0') = 95 ]"
check_eq "CALL with COMMIT inside: every row, once" "95|95" "$(q -c "SELECT count(*), count(DISTINCT n) FROM loaded WHERE n > 0")"
check_eq "... run as its caller (current_user and session_user)" "batcher|batcher" \
    "$(q -c "SELECT DISTINCT by_user || '|' || by_session FROM loaded WHERE n > 0")"
check "... through the top-level path" grep -q "event=top_level_run" "$TEST_DIR/applier.log"
check_eq "... recorded as applied" applied "$(q -c "SELECT status FROM atx.applied WHERE message_id = '$id'")"

# 2. A procedure that ends with ROLLBACK: nothing of it stays; the message is applied.
B -c "SELECT atx_log('CALL undo_all()')" >/dev/null
B -c "SELECT atx_log('INSERT INTO loaded VALUES (100, current_user, session_user)')" >/dev/null   # marker after it
wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM loaded WHERE n = 100') = 1 ]"
check_eq "CALL ending in ROLLBACK: its insert is gone" 0 "$(q -c "SELECT count(*) FROM loaded WHERE n = -1")"
check_eq "... and it is no dead letter" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter WHERE statement = 'CALL undo_all()'")"

# 3. VACUUM and CREATE INDEX CONCURRENTLY, from inside a transaction.
B -c "BEGIN" -c "SELECT atx_log('VACUUM (ANALYZE) big')" -c "SELECT atx_log('CREATE INDEX CONCURRENTLY big_v ON big (v)')" -c "COMMIT" >/dev/null
wait_for 30 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM pg_index WHERE indexrelid = 'big_v'::regclass AND indisvalid\" 2>/dev/null) = 1 ]"
check_eq "VACUUM ran" t "$(q -c "SELECT last_vacuum IS NOT NULL AND last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'big'")"
check_eq "CREATE INDEX CONCURRENTLY built a valid index" t "$(q -c "SELECT indisvalid FROM pg_index WHERE indexrelid = 'big_v'::regclass")"

# 4. Commits, then fails: the committed part stays (as for a client's CALL), the message is
#    dead-lettered with its error and never run again.
B -c "SELECT atx_log('CALL half_then_fail()')" >/dev/null
wait_for 20 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE statement = 'CALL half_then_fail()'\") = 1 ]"
check_eq "failure after a COMMIT: dead-lettered with its own error" "P0001|after the commit" \
    "$(q -c "SELECT sqlstate, error FROM atx.dead_letter WHERE statement = 'CALL half_then_fail()'")"
check_eq "... the committed row stays, once" 1 "$(q -c "SELECT count(*) FROM loaded WHERE n = -2")"

# 5. Interrupted half way (its session terminated): in doubt, dead-lettered with 40003, not
#    run again; what it committed stays.
B -c "SELECT atx_log('CALL commit_then_sleep()')" >/dev/null
wait_for 20 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM loaded WHERE n = -3\") = 1 ]"
q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_atx non-atomic message'" >/dev/null
wait_for 20 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE statement = 'CALL commit_then_sleep()'\") = 1 ]"
check_eq "interrupted: dead-lettered as in doubt (40003)" 40003 \
    "$(q -c "SELECT sqlstate FROM atx.dead_letter WHERE statement = 'CALL commit_then_sleep()'")"
wait_settled 30 || note "the applier did not settle"
check_eq "... the part it committed stays, the rest never ran, nothing ran twice" "1|0" \
    "$(q -c "SELECT count(*) FILTER (WHERE n = -3), count(*) FILTER (WHERE n = -4) FROM loaded")"

# 6. The caller's identity holds across its own COMMIT: no way back to another role.
B -c "SELECT atx_log('CALL escape()')" >/dev/null
wait_for 20 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE statement = 'CALL escape()'\") = 1 ]"
check_eq "SET ROLE postgres after a COMMIT: refused (42501)" 42501 \
    "$(q -c "SELECT sqlstate FROM atx.dead_letter WHERE statement = 'CALL escape()'")"
check_eq "... nothing written as another role" 0 "$(q -c "SELECT count(*) FROM loaded WHERE n = -5")"
check_eq "batcher is still no superuser" f "$(q -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'batcher'")"

# 7. atx_exec waits for a top-level run too.
check_eq "atx_exec of a CALL with COMMIT inside" "applied|CALL" \
    "$(B -c "SELECT r->>'status', r->>'command' FROM atx_exec('CALL batch_load(5)') r")"

# 8. A role without LOGIN cannot have a session of its own before PostgreSQL 17: dead-lettered
#    with a reason (on 17 and later it runs).
PGUSER=postgres q -c "SET ROLE nologin_role" -c "SELECT atx_log('CALL batch_load(13)')" >/dev/null   # commits at 10
if [ "$(q -c "SHOW server_version_num")" -lt 170000 ]; then
    wait_for 20 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE caller_role = 'nologin_role'\") = 1 ]"
    check_eq "NOLOGIN caller before PostgreSQL 17: dead-lettered (28000)" 28000 \
        "$(q -c "SELECT sqlstate FROM atx.dead_letter WHERE caller_role = 'nologin_role'")"
else
    wait_for 20 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM loaded WHERE by_user = 'nologin_role'\") = 13 ]"
    check_eq "NOLOGIN caller on PostgreSQL 17+: applied" 13 "$(q -c "SELECT count(*) FROM loaded WHERE by_user = 'nologin_role'")"
fi

# 9. atx_exec of a non-atomic statement that waits for its own caller (CREATE INDEX
#    CONCURRENTLY waits for the caller's snapshot): a deadlock the caller is told about at once;
#    the statement already runs and cannot be cancelled, so it finishes after the caller's end.
out=$(B -v VERBOSITY=verbose -c "BEGIN ISOLATION LEVEL REPEATABLE READ" -c "SELECT count(*) FROM big" \
        -c "SELECT atx_exec('CREATE INDEX CONCURRENTLY big_v_cic ON big(v)')" 2>&1)
check "CIC waiting for its atx_exec caller: 40P01" grep -q "ERROR:  40P01" <<<"$out"
check "... and the caller is told it runs on (not that it is cancelled)" grep -q "cannot be cancelled: it goes on" <<<"$out"
wait_for 30 bash -c "[ \"\$(psql -qAtX -c \"SELECT indisvalid FROM pg_index WHERE indexrelid = 'big_v_cic'::regclass\" 2>/dev/null)\" = t ]"
check_eq "... and the index is built once the caller ended" t \
    "$(q -c "SELECT indisvalid FROM pg_index WHERE indexrelid = 'big_v_cic'::regclass")"

# 10. Applier SIGKILLed while a top-level run goes on: the run finishes, the message is not run
#    again after the restart.
B -c "TRUNCATE loaded" -c "SELECT atx_log('CALL batch_load(40)')" >/dev/null
wait_for 20 eval "[ \"\$(q -c \"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_atx non-atomic message'\")\" -gt 0 ]" ||
    note "the top-level run had not started"
applier_kill
applier_start --statement-timeout-ms 20000
B -c "SELECT atx_log('INSERT INTO loaded VALUES (1000, current_user, session_user)')" >/dev/null
wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM loaded WHERE n = 1000') = 1 ]"
wait_for 30 eval "[ \"\$(q -c \"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_atx non-atomic message'\")\" = 0 ]"
wait_settled 30 || note "the applier did not settle"
check_eq "applier killed during a top-level run: no row twice" 0 \
    "$(q -c "SELECT count(*) FROM (SELECT n FROM loaded WHERE n BETWEEN 1 AND 40 GROUP BY n HAVING count(*) > 1) d")"
note "rows of the interrupted batch: $(q -c "SELECT count(*) FROM loaded WHERE n BETWEEN 1 AND 40"); dead letters: $(q -c "SELECT string_agg(sqlstate, ',') FROM atx.dead_letter WHERE statement = 'CALL batch_load(\$1)'")"

# 11. A top-level run deferred (its login's one background worker is busy) is not run atomically
#    again on each deferral: that run held a shared apply session and emitted the statement's
#    nested messages once more every second (fuzz seed 2614: 60 deferred lanes).
B -c "SELECT atx_log('CALL hold_share(4)')" >/dev/null
wait_for 20 eval "[ \"\$(q -c \"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_atx non-atomic message'\")\" -gt 0 ]" ||
    note "hold_share had not started"
B -c "SELECT atx_log('CALL counted()')" >/dev/null
wait_for 30 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM loaded WHERE n = -6') = 1 ]"
check "the second message waited for the share" grep -q 'event=top_level_run_deferred .*role="\?batcher' "$TEST_DIR/applier.log"
check_eq "... then ran once atomically (to learn it needs a top-level run) and once at the top level" 2 \
    "$(q -c "SELECT last_value FROM runs")"
applier_stop
done_testing
