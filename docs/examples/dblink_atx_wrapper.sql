-- ora2pg's dblink "_atx" wrapper for autonomous transactions, rewritten with atx_log.
--
-- Run with psql against a database with pg_atx installed and atx-applier running:
--   psql -v ON_ERROR_STOP=1 -f docs/examples/dblink_atx_wrapper.sql
-- Checked by tests/integration/examples.sh. See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_dblink CASCADE;
CREATE SCHEMA ex_dblink;

CREATE TABLE ex_dblink.error_log (
    id bigserial PRIMARY KEY,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    who name NOT NULL DEFAULT current_user,
    code text,
    message text
);

-------------------------------------------------------------------------------
-- What ora2pg generates for an Oracle procedure with PRAGMA AUTONOMOUS_TRANSACTION: the body is
-- renamed to <name>_atx, and <name> becomes a wrapper that runs it over a new dblink connection,
-- with the connection string (and often the password) in the code:
--
--   CREATE OR REPLACE FUNCTION log_error(p_code text, p_message text) RETURNS void AS $body$
--   DECLARE
--       -- Change this to reflect the dblink connection string
--       v_conn_str  text := 'port=5432 dbname=appdb host=localhost user=app_owner password=s3cr3t';
--       v_query     text;
--   BEGIN
--       v_query := 'SELECT true FROM log_error_atx ( ' || quote_nullable(p_code)
--                  || ',' || quote_nullable(p_message) || ' )';
--       PERFORM * FROM dblink(v_conn_str, v_query) AS p (ret boolean);
--   END;
--   $body$ LANGUAGE plpgsql SECURITY DEFINER;
--
--   CREATE OR REPLACE FUNCTION log_error_atx(p_code text, p_message text) RETURNS void AS $body$
--   BEGIN
--       INSERT INTO error_log (code, message) VALUES (p_code, p_message);
--   END;
--   $body$ LANGUAGE plpgsql;
--
-- Its problems: a password in the source; a new connection (about 5 ms, one backend) per call;
-- the work runs as whoever the connection string names (often the owner or a superuser), not as
-- the caller; an unqualified dblink can be hijacked through search_path.
--
-- With pg_atx: the _atx function stays as it is. The wrapper emits a call of it with the
-- arguments as bound parameters: no connection string, no password, no quoting, no dblink
-- extension. It runs as the wrapper's current_user (so drop SECURITY DEFINER unless the owner is
-- meant to do the work), with the caller's settings.
-------------------------------------------------------------------------------
CREATE FUNCTION ex_dblink.log_error_atx(p_code text, p_message text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO ex_dblink.error_log (code, message) VALUES (p_code, p_message);
END
$$;

CREATE FUNCTION ex_dblink.log_error(p_code text, p_message text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM atx_log('SELECT ex_dblink.log_error_atx($1, $2)', p_code, p_message);
END
$$;

-- The typical use: log the error in the handler, then let the transaction fail.
CREATE TABLE ex_dblink.payments (id int PRIMARY KEY, amount numeric CHECK (amount > 0));
CREATE FUNCTION ex_dblink.pay(p_id int, p_amount numeric)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO ex_dblink.payments VALUES (p_id, p_amount);
EXCEPTION WHEN OTHERS THEN
    PERFORM ex_dblink.log_error(SQLSTATE, format('payment %s of %s: %s', p_id, p_amount, SQLERRM));
    RAISE;
END
$$;

BEGIN;
SELECT ex_dblink.pay(1, 10);
DO $$
BEGIN
    PERFORM ex_dblink.pay(2, -5);   -- fails; the error is logged, and the log survives
EXCEPTION WHEN check_violation THEN
    RAISE NOTICE 'payment 2 refused: %', SQLERRM;
END
$$;
SELECT ex_dblink.pay(3, 7);
ROLLBACK;                       -- not a single payment stays; the error log entry does

-------------------------------------------------------------------------------
-- Checks (wait for atx-applier, then assert).
-------------------------------------------------------------------------------
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM ex_dblink.error_log);
        PERFORM pg_sleep(0.1);
    END LOOP;
    ASSERT (SELECT count(*) FROM ex_dblink.payments) = 0, 'payments rolled back';
    ASSERT (SELECT code || ' ' || message FROM ex_dblink.error_log)
           = '23514 payment 2 of -5: new row for relation "payments" violates check constraint "payments_amount_check"',
           'error logged';
    ASSERT (SELECT who FROM ex_dblink.error_log) = current_user, 'logged as the caller';
    ASSERT NOT EXISTS (SELECT 1 FROM pg_proc WHERE prosrc ~ 'password=' AND pronamespace = 'ex_dblink'::regnamespace),
           'no connection string left in the code';
END
$$;
-------------------------------------------------------------------------------
-- Second form: the error-logging procedure's body as it is, made autonomous with one statement:
-- no _atx pair, no wrapper, no connection string. log_error keeps its name and signature, so
-- every caller stays as it is; the caller waits until the log row is committed.
-------------------------------------------------------------------------------
TRUNCATE ex_dblink.error_log;
DROP FUNCTION ex_dblink.log_error(text, text);
CREATE FUNCTION ex_dblink.log_error(p_code text, p_message text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO ex_dblink.error_log (code, message) VALUES (p_code, p_message);
END
$$;
SELECT atx.make_autonomous('ex_dblink.log_error(text, text)');

BEGIN;
SELECT ex_dblink.pay(1, 10);
DO $$
BEGIN
    PERFORM ex_dblink.pay(2, -5);   -- fails; the error is logged, and the log survives
EXCEPTION WHEN check_violation THEN
    RAISE NOTICE 'payment 2 refused: %', SQLERRM;
END
$$;
ROLLBACK;

DO $$
BEGIN
    ASSERT (SELECT count(*) FROM ex_dblink.payments) = 0, 'make_autonomous: payments rolled back';
    ASSERT (SELECT code || ' ' || message || ' ' || who FROM ex_dblink.error_log)
           = '23514 payment 2 of -5: new row for relation "payments" violates check constraint "payments_amount_check" '
             || current_user, 'make_autonomous: the error logged at once, as the caller';
END
$$;
SELECT 'dblink_atx_wrapper with make_autonomous: ok' AS result;
SELECT 'dblink_atx_wrapper: ok' AS result;
