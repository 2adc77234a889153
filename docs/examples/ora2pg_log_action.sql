-- ora2pg's log_action, rewritten with pg_atx: without a result (atx_log) and with one (atx_exec).
--
-- Original: Gilles Darold's (ora2pg's author) "Autonomous transaction support in PostgreSQL"
-- (Dalibo blog, 2016). The Oracle procedure
--
--   CREATE PROCEDURE log_action (username VARCHAR2, event_date DATE, msg VARCHAR2) IS
--      PRAGMA AUTONOMOUS_TRANSACTION;
--   BEGIN
--      INSERT INTO table_tracking VALUES (log_seq.nextval, username, event_date, msg);
--      COMMIT;
--   END log_action;
--
-- is exported by ora2pg (17.5 and later) as log_action_atx (the body) plus a wrapper that runs it
-- in a pg_background worker and waits for it:
--
--   CREATE OR REPLACE FUNCTION log_action (username text, event_date timestamp, msg text)
--   RETURNS VOID AS $body$
--   DECLARE
--       v_query text;
--   BEGIN
--       v_query := 'SELECT true FROM log_action_atx ( ' || quote_nullable(username) ||
--                  ',' || quote_nullable(event_date) || ',' || quote_nullable(msg) || ' )';
--       PERFORM * FROM pg_background_result(pg_background_launch(v_query)) AS p (ret boolean);
--   END;
--   $body$ LANGUAGE plpgsql SECURITY DEFINER;
--
-- (up to 17.4 the same wrapper over dblink: see dblink_atx_wrapper.sql). The article then makes
-- log_action return a text naming the new id, and reads it with
--   SELECT * FROM pg_background_result(pg_background_launch('SELECT log_action(...)')) AS p (ret text);
--
-- How it maps:
--   1. No result needed: log_action_atx stays; the wrapper does atx_log('SELECT log_action_atx($1,
--      $2, $3)', ...): no quoting, no worker start, durable when the call returns, applied a few
--      milliseconds later (the bounded wait loop below waits for it).
--   2. With a result: atx_exec(...) waits like pg_background_result and returns the statement's
--      rows as jsonb: the function's text, the inserted row (RETURNING *) or just its id.
--   3. pg_background_launch now, pg_background_result later: atx_log returns the message id at
--      once; the autonomous statement stores it ((atx.current_message()).id) and the caller reads
--      its row by that id whenever it needs it.
--   SECURITY DEFINER is dropped: the statement runs as the caller's current_user anyway.
--
-- Differs from pg_background: a failing log_action_atx raises in the caller with atx_exec (as
-- pg_background_result does), but not with atx_log, whose failures are dead-lettered where the
-- caller's role reads them (own_dead_letters.sql); a mistake that can never work (a wrong name, a
-- type, a missing privilege) is refused at the call either way.
--
-- Needs shared_preload_libraries = 'pg_atx' (atx_exec) and atx-applier running for the database.
-- Run: psql -v ON_ERROR_STOP=1 -f docs/examples/ora2pg_log_action.sql
-- Checked by tests/integration/examples.sh. See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_ora2pg CASCADE;
CREATE SCHEMA ex_ora2pg;
SET search_path = ex_ora2pg, public;
SET atx.exec_timeout = '10s';   -- the bounded wait for atx-applier of every atx_exec

-- The article's table and sequence; msg_id is added for variant 3.
CREATE TABLE table_tracking (id integer, username text, event_date timestamp, msg text, msg_id uuid);
CREATE SEQUENCE log_seq START 1;

-- A check on values psql kept (\gset): returns '<what>: ok' or raises.
CREATE FUNCTION check_that(holds boolean, what text, seen text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
    IF holds IS NOT TRUE THEN
        RAISE EXCEPTION 'check failed: %', what USING DETAIL = coalesce('seen: ' || seen, '');
    END IF;
    RETURN what || ': ok';
END
$$;

-- The body, as ora2pg exports it.
CREATE OR REPLACE FUNCTION log_action_atx (
    username text, event_date timestamp, msg text
) RETURNS VOID AS
$body$
BEGIN
   INSERT INTO table_tracking VALUES (nextval('log_seq'), username, event_date, msg);
END;
$body$
LANGUAGE PLPGSQL;

-------------------------------------------------------------------------------
-- 1. Without a result: the wrapper emits the call.
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION log_action (
    username text, event_date timestamp, msg text
) RETURNS VOID AS
$body$
BEGIN
    PERFORM atx_log('SELECT log_action_atx($1, $2, $3)', username, event_date, msg);
END;
$body$
LANGUAGE plpgsql;

-- The article's session: log, then roll back; the log line stays.
BEGIN;
SELECT log_action('gilles', 'now', 'Add autonomous_transaction article');
ROLLBACK;

DO $$
BEGIN
    FOR i IN 1..100 LOOP   -- wait up to 10 s for atx-applier
        EXIT WHEN EXISTS (SELECT 1 FROM table_tracking);
        PERFORM pg_sleep(0.1);
    END LOOP;
    ASSERT (SELECT id || ' ' || username || ' ' || msg FROM table_tracking)
           = '1 gilles Add autonomous_transaction article', 'the log line survives the ROLLBACK';
    ASSERT (SELECT event_date FROM table_tracking) <= localtimestamp, 'dated at the call';
END
$$;
SELECT 'log_action without a result: ok' AS result;

-------------------------------------------------------------------------------
-- 2. With a result: the article's log_action that returns a text, and two direct forms.
-------------------------------------------------------------------------------
DROP FUNCTION log_action_atx(text, timestamp, text);
DROP FUNCTION log_action(text, timestamp, text);
TRUNCATE table_tracking;
ALTER SEQUENCE log_seq RESTART 1;

CREATE OR REPLACE FUNCTION log_action (
        username text, event_date timestamp, msg text
) RETURNS text AS
$body$
DECLARE
   s_id integer;
BEGIN
   INSERT INTO table_tracking VALUES (nextval('log_seq'), username, event_date, msg) RETURNING id INTO s_id;
   RETURN 'Message inserted into table_tracking with id: '|| s_id;
END;
$body$
LANGUAGE plpgsql;

BEGIN;
-- pg_background_result(pg_background_launch('SELECT log_action(...)')) AS p (result text):
SELECT atx_exec('SELECT log_action($1, $2, $3) AS result', 'gilles', 'now'::timestamp,
                'Add autonomous_transaction article') -> 'result' -> 0 ->> 'result' AS result \gset
-- The row is there at once for the caller (READ COMMITTED), as in the article.
SELECT count(*) AS rows_seen_in_the_open_transaction FROM table_tracking \gset
-- The inserted row, as a record (pg_background_result(...) AS p (id int, ...)):
SELECT r.* FROM jsonb_to_recordset(atx_exec(
    'INSERT INTO table_tracking VALUES (nextval(''log_seq''), $1, $2, $3) RETURNING *',
    'gilles', localtimestamp, 'second entry') -> 'result') AS r(id int, username text, event_date timestamp, msg text);
-- Just the id:
SELECT (atx_exec('INSERT INTO table_tracking VALUES (nextval(''log_seq''), $1, $2, $3) RETURNING id',
                 'gilles', localtimestamp, 'third entry') -> 'result' -> 0 ->> 'id')::int AS third_id \gset
ROLLBACK;

DO $$
BEGIN
    ASSERT (SELECT string_agg(id || ' ' || msg, ', ' ORDER BY id) FROM table_tracking)
           = '1 Add autonomous_transaction article, 2 second entry, 3 third entry', 'three rows, committed autonomously';
END
$$;
SELECT check_that(:'result' = 'Message inserted into table_tracking with id: 1'
                  AND :'rows_seen_in_the_open_transaction' = '1' AND :'third_id' = '3',
                  'log_action with a result',
                  concat_ws(' / ', :'result', :'rows_seen_in_the_open_transaction', :'third_id'));

-------------------------------------------------------------------------------
-- 3. Launch now, read the result later (pg_background_launch ... pg_background_result(pid)).
-------------------------------------------------------------------------------
BEGIN;
SELECT atx_log('INSERT INTO table_tracking SELECT nextval(''log_seq''), $1, $2, $3, id FROM atx.current_message()',
               'gilles', localtimestamp, 'launched now, read later') AS launched \gset
-- ... the caller works on ...
COMMIT;

-- The id the caller kept, for the DO block below.
SELECT set_config('ex_ora2pg.launched', :'launched', false) IS NOT NULL AS kept;
DO $$
DECLARE
    launched uuid := current_setting('ex_ora2pg.launched')::uuid;
    line text;
BEGIN
    FOR i IN 1..100 LOOP   -- wait up to 10 s for atx-applier: the "pg_background_result" step
        SELECT 'Message inserted into table_tracking with id: ' || id INTO line
          FROM table_tracking WHERE msg_id = launched;
        EXIT WHEN FOUND;
        PERFORM pg_sleep(0.1);
    END LOOP;
    ASSERT line = 'Message inserted into table_tracking with id: 4', format('read later: %s', line);
END
$$;
SELECT 'log_action launched now, read later: ok' AS result;

-------------------------------------------------------------------------------
-- 4. Second form: ora2pg's plain export of the Oracle bodies, and one statement.
--
-- With AUTONOMOUS_TRANSACTION 0 in ora2pg.conf, ora2pg exports each routine as it is, leaving
-- the pragma as a comment in its DECLARE section (and the procedure its COMMIT), instead of the
-- _atx body and a dblink or pg_background wrapper. One statement then makes every such routine
-- autonomous; each call runs its body in its own transaction through atx-applier and waits for
-- it, as Oracle's caller does. Below: the article's procedure, as ora2pg exports it, and its
-- text-returning variant as a function (a function cannot COMMIT; its autonomous transaction
-- commits when it returns).
-------------------------------------------------------------------------------
TRUNCATE table_tracking;
ALTER SEQUENCE log_seq RESTART 1;
DROP FUNCTION log_action(text, timestamp, text);

CREATE OR REPLACE PROCEDURE log_action (
        username text, event_date timestamp, msg text
) AS $body$
DECLARE
-- PRAGMA AUTONOMOUS_TRANSACTION;
BEGIN
   INSERT INTO table_tracking VALUES (nextval('log_seq'), username, event_date, msg);
   COMMIT;
END;
$body$
LANGUAGE PLPGSQL;

CREATE OR REPLACE FUNCTION log_action_id (
        username text, event_date timestamp, msg text
) RETURNS text AS
$body$
DECLARE
-- PRAGMA AUTONOMOUS_TRANSACTION;
   s_id integer;
BEGIN
   INSERT INTO table_tracking VALUES (nextval('log_seq'), username, event_date, msg) RETURNING id INTO s_id;
   RETURN 'Message inserted into table_tracking with id: '|| s_id;
END;
$body$
LANGUAGE plpgsql;

-- The one statement: every routine ora2pg exported with the pragma becomes autonomous.
SELECT atx.make_autonomous(p.oid) AS made_autonomous
  FROM pg_proc p
 WHERE p.pronamespace = 'ex_ora2pg'::regnamespace
   AND p.prosrc ~* '--\s*PRAGMA\s+AUTONOMOUS_TRANSACTION'
 ORDER BY 1;

BEGIN;
CALL log_action('gilles', localtimestamp(0), 'Add autonomous_transaction article');
SELECT log_action_id('gilles', localtimestamp(0), 'second entry') AS result \gset
SELECT count(*) AS rows_seen_in_the_open_transaction FROM table_tracking \gset
ROLLBACK;
-- The procedure's COMMIT sends it to the non-atomic path after an atomic attempt that ran up to
-- that COMMIT: the sequence value that attempt drew is not given back (sequences never are), so
-- the ids may have a gap where Oracle's would not.
SELECT check_that(:'result' = 'Message inserted into table_tracking with id: '
                              || (SELECT id FROM table_tracking WHERE msg = 'second entry')
                  AND :'rows_seen_in_the_open_transaction' = '2'
                  AND (SELECT string_agg(msg, ', ' ORDER BY id) FROM table_tracking)
                      = 'Add autonomous_transaction article, second entry',
                  'log_action with make_autonomous',
                  concat_ws(' / ', :'result', :'rows_seen_in_the_open_transaction'));
SELECT 'ora2pg_log_action: ok' AS result;
