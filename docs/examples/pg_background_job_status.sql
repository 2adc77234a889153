-- pg_background style job status, rewritten with atx_log (and atx_exec for a waiting update).
--
-- A long batch reports its progress in a status row that other sessions can read while the
-- batch runs, and the last status stays when the batch finally rolls back.
-- Part 2: a batch that waits for its status update (atx_exec) while it holds the status row's
-- lock itself: a deadlock with its own autonomous change. Oracle raises ORA-00060 there and the
-- autonomous change never happens; pg_background hangs. atx_exec raises 40P01 in the caller
-- within about 100 ms and, by default (atx.exec_on_abandon = cancel), cancels the change.
--
-- Part 2 needs shared_preload_libraries = 'pg_atx' (atx_exec).
--
-- Run with psql against a database with pg_atx installed and atx-applier running:
--   psql -v ON_ERROR_STOP=1 -f docs/examples/pg_background_job_status.sql
-- While it runs (about 3 s), watch from another session:
--   SELECT * FROM ex_jobs.job_status;
-- Checked by tests/integration/examples.sh (which does exactly that). See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_jobs CASCADE;
CREATE SCHEMA ex_jobs;

CREATE TABLE ex_jobs.job_status (
    job text PRIMARY KEY,
    state text NOT NULL,
    step int NOT NULL,
    of_steps int NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by name NOT NULL
);
CREATE TABLE ex_jobs.batch_output (job text, step int, payload text);

-------------------------------------------------------------------------------
-- pg_background original (one background worker per status update; with detach the update may
-- be lost, waiting for the result costs a worker start each time):
--
--   CREATE FUNCTION set_status(p_job text, p_state text, p_step int, p_of int) RETURNS void
--   LANGUAGE plpgsql AS $$
--   BEGIN
--       PERFORM * FROM pg_background_result(pg_background_launch(format(
--           'INSERT INTO job_status (job, state, step, of_steps, updated_at, updated_by)
--            VALUES (%L, %L, %s, %s, now(), current_user)
--            ON CONFLICT (job) DO UPDATE SET state = EXCLUDED.state, step = EXCLUDED.step,
--                of_steps = EXCLUDED.of_steps, updated_at = EXCLUDED.updated_at,
--                updated_by = EXCLUDED.updated_by',
--           p_job, p_state, p_step, p_of))) AS (result text);
--   END $$;
--
-- With pg_atx: the same upsert is the statement of a message, values as bound parameters
-- (no format()/quoting). atx_log returns as soon as the message is flushed (about 0.1 ms plus
-- one WAL flush, no worker start), and the message is applied exactly once even if the batch
-- rolls back or the server crashes right after the call. It is not applied *before* the call
-- returns: other sessions see the status a few milliseconds later, when atx-applier has run it.
--
-- updated_at is the emit time of the message and the upsert keeps the newest one: the messages of
-- one session are applied in the order it wrote them (those of other sessions may be applied in
-- parallel), and the guard makes that explicit and harmless to rely on.
-------------------------------------------------------------------------------
CREATE PROCEDURE ex_jobs.set_status(p_job text, p_state text, p_step int, p_of int)
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM atx_log(
        'INSERT INTO ex_jobs.job_status AS s (job, state, step, of_steps, updated_at, updated_by)'
        ' VALUES ($1, $2, $3, $4, (atx.current_message()).emitted_at, current_user)'
        ' ON CONFLICT (job) DO UPDATE SET state = EXCLUDED.state, step = EXCLUDED.step,'
        '     of_steps = EXCLUDED.of_steps, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by'
        ' WHERE s.updated_at <= EXCLUDED.updated_at',
        p_job, p_state, p_step, p_of);
END
$$;

-- The batch: some work per step, a status after each step.
CREATE PROCEDURE ex_jobs.run_batch(p_job text, p_steps int)
LANGUAGE plpgsql
AS $$
BEGIN
    CALL ex_jobs.set_status(p_job, 'running', 0, p_steps);
    FOR i IN 1..p_steps LOOP
        INSERT INTO ex_jobs.batch_output SELECT p_job, i, md5(g::text) FROM generate_series(1, 1000) g;
        PERFORM pg_sleep(0.5);                       -- the long part
        CALL ex_jobs.set_status(p_job, 'running', i, p_steps);
    END LOOP;
END
$$;

-- The batch runs in one transaction that finally rolls back (say, its last check failed).
-- During it, other sessions see 'running' with the step reached; afterwards 'rolled back'.
BEGIN;
CALL ex_jobs.run_batch('nightly', 6);
CALL ex_jobs.set_status('nightly', 'rolled back', 6, 6);
ROLLBACK;

-------------------------------------------------------------------------------
-- Checks (wait for atx-applier, then assert).
-------------------------------------------------------------------------------
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM ex_jobs.job_status WHERE job = 'nightly' AND state = 'rolled back');
        PERFORM pg_sleep(0.1);
    END LOOP;
    ASSERT (SELECT state || ' ' || step || '/' || of_steps FROM ex_jobs.job_status WHERE job = 'nightly')
           = 'rolled back 6/6', 'final status kept after the ROLLBACK';
    ASSERT (SELECT updated_by FROM ex_jobs.job_status WHERE job = 'nightly') = current_user, 'written as the caller';
    ASSERT (SELECT count(*) FROM ex_jobs.batch_output) = 0, 'the batch''s own work is rolled back';
END
$$;

-------------------------------------------------------------------------------
-- 2. A deadlock with the caller's own lock.
--
-- This batch reads its status row FOR UPDATE (to check for a stop request) and later reports
-- 'done' through atx_exec, waiting for the update: the applier waits for the batch's row lock,
-- the batch waits for the applier. atx_exec notices (it watches the apply sessions' lock waits),
-- raises 40P01 in the batch, and cancels the update: it is never applied, not even after the
-- batch has ended, and its dead letter (SQLSTATE 57014) says why, readable by the batch's role.
-- atx.exec_on_abandon = apply keeps the older behaviour: the update is applied once the batch's
-- locks are gone.
-------------------------------------------------------------------------------
CREATE PROCEDURE ex_jobs.finish_waiting(p_job text, p_state text)
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM atx_exec('UPDATE ex_jobs.job_status SET state = $2, updated_at = (atx.current_message()).emitted_at'
                     ' WHERE job = $1', p_job, p_state);
END
$$;
INSERT INTO ex_jobs.job_status VALUES ('locked', 'running', 1, 2, clock_timestamp(), current_user),
                                      ('locked, apply later', 'running', 1, 2, clock_timestamp(), current_user);
SET atx.exec_timeout = '10s';

BEGIN;
SELECT state FROM ex_jobs.job_status WHERE job = 'locked' FOR UPDATE;
DO $$
BEGIN
    CALL ex_jobs.finish_waiting('locked', 'done');
    RAISE EXCEPTION 'no deadlock reported';
EXCEPTION WHEN deadlock_detected THEN
    RAISE NOTICE 'the batch got 40P01: %', SQLERRM;
END
$$;
ROLLBACK;

BEGIN;
SET LOCAL atx.exec_on_abandon = apply;
SELECT state FROM ex_jobs.job_status WHERE job = 'locked, apply later' FOR UPDATE;
DO $$
BEGIN
    CALL ex_jobs.finish_waiting('locked, apply later', 'done');
    RAISE EXCEPTION 'no deadlock reported';
EXCEPTION WHEN deadlock_detected THEN
    RAISE NOTICE 'the batch got 40P01: %', SQLERRM;
END
$$;
ROLLBACK;

-- The dead letters of this part (each role reads its own; this run's are newer than its rows).
CREATE VIEW ex_jobs.part2_dead_letters AS
SELECT d.* FROM atx.dead_letter d
 WHERE d.statement LIKE 'UPDATE ex_jobs.job_status%'
   AND d.emitted_at >= (SELECT min(updated_at) FROM ex_jobs.job_status WHERE job LIKE 'locked%');

DO $$
BEGIN
    FOR i IN 1..100 LOOP   -- wait up to 10 s for the applied-later update and the dead letter
        EXIT WHEN EXISTS (SELECT 1 FROM ex_jobs.job_status WHERE job = 'locked, apply later' AND state = 'done')
              AND EXISTS (SELECT 1 FROM ex_jobs.part2_dead_letters);
        PERFORM pg_sleep(0.1);
    END LOOP;
    ASSERT (SELECT state FROM ex_jobs.job_status WHERE job = 'locked') = 'running',
           'exec_on_abandon = cancel: the update is never applied';
    ASSERT (SELECT string_agg(sqlstate || ' ' || error, '; ') FROM ex_jobs.part2_dead_letters)
           LIKE '57014 cancelled: %deadlock with its caller%', 'one dead letter, saying why';
    ASSERT (SELECT state FROM ex_jobs.job_status WHERE job = 'locked, apply later') = 'done',
           'exec_on_abandon = apply: applied after the batch ended';
END
$$;
-------------------------------------------------------------------------------
-- 3. Second form: the status upsert as a routine of its own, made autonomous with one statement.
--
-- The upsert pg_background ran in a worker is the body of a procedure, values as its arguments;
-- atx.make_autonomous makes every call of it a transaction of its own that the caller waits
-- for: other sessions see each status as soon as the call returned, the last one stays after
-- the batch's ROLLBACK, and a deadlock with the batch's own lock is 40P01 at once.
-------------------------------------------------------------------------------
CREATE PROCEDURE ex_jobs.set_status_now(p_job text, p_state text, p_step int, p_of int)
LANGUAGE sql
AS $$
    INSERT INTO ex_jobs.job_status (job, state, step, of_steps, updated_at, updated_by)
    VALUES (p_job, p_state, p_step, p_of, clock_timestamp(), current_user)
    ON CONFLICT (job) DO UPDATE SET state = EXCLUDED.state, step = EXCLUDED.step,
        of_steps = EXCLUDED.of_steps, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by;
$$;
SELECT atx.make_autonomous('ex_jobs.set_status_now(text, text, int, int)');

BEGIN;
CALL ex_jobs.set_status_now('weekly', 'running', 0, 2);
INSERT INTO ex_jobs.batch_output SELECT 'weekly', 1, md5(g::text) FROM generate_series(1, 1000) g;
CALL ex_jobs.set_status_now('weekly', 'running', 1, 2);
-- The status is committed when the call returns: this transaction (READ COMMITTED) sees it.
DO $$
BEGIN
    ASSERT (SELECT state || ' ' || step FROM ex_jobs.job_status WHERE job = 'weekly') = 'running 1',
           'make_autonomous: the status is there as soon as the call returned';
END
$$;
CALL ex_jobs.set_status_now('weekly', 'rolled back', 2, 2);
ROLLBACK;

-- The batch holds its status row's lock and waits for its autonomous update: 40P01 at once,
-- and the update is never applied.
INSERT INTO ex_jobs.job_status VALUES ('weekly, locked', 'running', 1, 2, clock_timestamp(), current_user);
BEGIN;
SELECT state FROM ex_jobs.job_status WHERE job = 'weekly, locked' FOR UPDATE;
DO $$
BEGIN
    CALL ex_jobs.set_status_now('weekly, locked', 'done', 2, 2);
    RAISE EXCEPTION 'no deadlock reported';
EXCEPTION WHEN deadlock_detected THEN
    RAISE NOTICE 'the batch got 40P01: %', SQLERRM;
END
$$;
ROLLBACK;

DO $$
BEGIN
    PERFORM pg_sleep(0.5);   -- a cancelled update would have been applied by now
    ASSERT (SELECT state || ' ' || step || '/' || of_steps FROM ex_jobs.job_status WHERE job = 'weekly')
           = 'rolled back 2/2', 'make_autonomous: the final status stays after the ROLLBACK';
    ASSERT (SELECT count(*) FROM ex_jobs.batch_output WHERE job = 'weekly') = 0,
           'make_autonomous: the batch''s own work is rolled back';
    ASSERT (SELECT state FROM ex_jobs.job_status WHERE job = 'weekly, locked') = 'running',
           'make_autonomous: the update that deadlocked with its caller is never applied';
END
$$;
SELECT 'pg_background_job_status with make_autonomous: ok' AS result;
SELECT 'pg_background_job_status: ok' AS result;
