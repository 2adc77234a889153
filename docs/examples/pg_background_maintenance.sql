-- CREATE INDEX CONCURRENTLY and VACUUM from inside a transaction, rewritten with atx_log.
--
-- Original: pg_background's own pitch and ora2pg's author's ("this ability to execute autonomous
-- transactions in background allows you to bypass some PostgreSQL limitations like running
-- CREATE INDEX CONCURRENTLY in a transaction"):
--
--   BEGIN;
--   ... work ...
--   SELECT pg_background_detach(pg_background_launch('CREATE INDEX CONCURRENTLY ...'));
--   SELECT pg_background_detach(pg_background_launch('VACUUM (ANALYZE) ...'));
--   COMMIT;
--
-- Both statements refuse to run inside a transaction block (25001) or a function.
--
-- How it maps: atx_log('CREATE INDEX CONCURRENTLY ...'), atx_log('VACUUM ...'). Such a message
-- runs non-atomically: as a top-level statement of a background worker connected as the caller
-- (before PostgreSQL 17 the caller's role needs LOGIN), with the caller's settings. Unlike
-- pg_background_detach, the statement cannot be lost once atx_log returned, and it runs also
-- when the caller rolls back.
--
-- Delivery: a non-atomic statement may have committed part of its work when it is interrupted
-- (a crash, a terminated worker), so it is never run twice: it is recorded as started before it
-- runs, and one found started later is dead-lettered as in doubt (40003) for an operator.
--
-- Use atx_log here, not atx_exec: CREATE INDEX CONCURRENTLY waits for every transaction that is
-- older than its snapshot, the waiting caller's included, so a waiting caller would wait for
-- itself (until atx.exec_timeout).
--
-- Needs atx-applier running for the database.
-- Run: psql -v ON_ERROR_STOP=1 -f docs/examples/pg_background_maintenance.sql
-- Checked by tests/integration/examples.sh. See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_maint CASCADE;
CREATE SCHEMA ex_maint;

CREATE TABLE ex_maint.events (id bigint PRIMARY KEY, kind text NOT NULL, payload text);
INSERT INTO ex_maint.events SELECT g, 'kind ' || g % 10, md5(g::text) FROM generate_series(1, 20000) g;

-- A transaction that loads data, then asks for an index and a vacuum, then rolls back its own
-- work: the index and the vacuum are not part of it.
BEGIN;
DELETE FROM ex_maint.events WHERE id % 2 = 0;
SELECT atx_log('CREATE INDEX CONCURRENTLY events_kind ON ex_maint.events (kind)') IS NOT NULL AS index_asked;
SELECT atx_log('VACUUM (ANALYZE) ex_maint.events') IS NOT NULL AS vacuum_asked;
ROLLBACK;

-- Wait up to 30 s. The loop commits on every round: CREATE INDEX CONCURRENTLY waits for every
-- older transaction to end, this waiting one included.
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('ex_maint.events_kind')
                                                   AND indisvalid)
              AND EXISTS (SELECT 1 FROM pg_stat_user_tables WHERE relid = 'ex_maint.events'::regclass
                                                              AND last_vacuum IS NOT NULL
                                                              AND last_analyze IS NOT NULL);
        COMMIT;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
DO $$
BEGIN
    PERFORM pg_stat_clear_snapshot();
    ASSERT (SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('ex_maint.events_kind')),
           'CREATE INDEX CONCURRENTLY built a valid index';
    ASSERT (SELECT last_vacuum IS NOT NULL AND last_analyze IS NOT NULL
              FROM pg_stat_user_tables WHERE relid = 'ex_maint.events'::regclass), 'VACUUM (ANALYZE) ran';
    ASSERT (SELECT count(*) FROM ex_maint.events) = 20000, 'the caller''s DELETE was rolled back';
END
$$;
SELECT 'pg_background_maintenance: ok' AS result;
