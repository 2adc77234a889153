-- A caller reads its own dead letters, and hears of them on LISTEN atx_dead_letter.
--
-- Original: what every peer's users do after a failed autonomous statement. Oracle and EDB
-- raise the error at the call; a pg_background user reads it from pg_background_result; a
-- dblink wrapper sees it in its own session. With atx_log the statement runs after the call
-- returned, so a statement that fails when it runs (a constraint, a lock timeout past its
-- retries, a policy) cannot raise in the caller: it is dead-lettered in atx.dead_letter.
--
-- How it maps:
--   * atx.dead_letter has row-level security: each role reads the dead letters of the messages
--     it emitted (its statement, parameters, SQLSTATE, error, detail, hint), nobody else's;
--     superusers and members of atx_applier read all of them.
--   * every dead letter is announced with NOTIFY atx_dead_letter, with no payload: a listener
--     learns that one was written and reads atx.dead_letter to see whose (only the emitting role
--     reads its rows). Any session may LISTEN, and any may NOTIFY that channel too: a
--     notification is a reason to look, never a fact.
--   * what can never work (a missing table, a syntax error, a missing privilege) is refused at
--     the call already, with its own SQLSTATE (atx.validate, on by default).
--
-- The roles ex_clerk and ex_other (no LOGIN needed) are created once and kept.
-- Needs atx-applier running for the database.
-- Run as a superuser: psql -v ON_ERROR_STOP=1 -f docs/examples/own_dead_letters.sql
-- psql prints the notification ("Asynchronous notification "atx_dead_letter" received from
-- server process ...") after the wait below; tests/integration/examples.sh checks that it came,
-- without a payload. See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_dead CASCADE;
CREATE SCHEMA ex_dead;
DO $$
BEGIN
    CREATE ROLE ex_clerk NOLOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE ex_other NOLOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA ex_dead TO ex_clerk, ex_other;

CREATE TABLE ex_dead.orders (id int PRIMARY KEY, qty int NOT NULL CHECK (qty > 0));
GRANT SELECT, INSERT ON ex_dead.orders TO ex_clerk, ex_other;

-- A check on values psql kept (\gset): returns '<what>: ok' or raises.
CREATE FUNCTION ex_dead.check_that(holds boolean, what text, seen text DEFAULT NULL)
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

-------------------------------------------------------------------------------
-- ex_other's failing message (a negative quantity): dead-lettered, readable by ex_other only.
-------------------------------------------------------------------------------
SET ROLE ex_other;
SELECT atx_log('INSERT INTO ex_dead.orders VALUES ($1, $2)', 1, -3) AS other_id \gset
RESET ROLE;

-------------------------------------------------------------------------------
-- ex_clerk listens, then emits a message that fails when it runs.
-------------------------------------------------------------------------------
SET ROLE ex_clerk;
LISTEN atx_dead_letter;
-- Refused at the call (nothing emitted): a table that does not exist.
DO $$
BEGIN
    PERFORM atx_log('INSERT INTO ex_dead.no_such_table VALUES ($1)', 1);
    RAISE EXCEPTION 'not refused at the call';
EXCEPTION WHEN undefined_table THEN
    RAISE NOTICE 'refused at the call: %', SQLERRM;
END
$$;
-- Fails only when it runs: the CHECK constraint.
BEGIN;
SELECT atx_log('INSERT INTO ex_dead.orders VALUES ($1, $2)', 2, -5) AS clerk_id \gset
COMMIT;
SELECT 'clerk message: ' || :'clerk_id' AS result;
SELECT set_config('ex_dead.clerk_id', :'clerk_id', false) IS NOT NULL AS kept;

DO $$
BEGIN
    FOR i IN 1..100 LOOP   -- wait up to 10 s for atx-applier
        EXIT WHEN EXISTS (SELECT 1 FROM atx.dead_letter WHERE message_id = current_setting('ex_dead.clerk_id')::uuid);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
-- (psql shows the notification here, after the statement above.)

-- What ex_clerk reads: its own dead letter, in full; no other role's.
SELECT sqlstate, error, statement, params, caller_role FROM atx.dead_letter
 WHERE message_id = :'clerk_id';
SELECT ex_dead.check_that(
    (SELECT sqlstate || ' ' || caller_role || ' ' || statement || ' ' || (params -> 1 ->> 'value')
       FROM atx.dead_letter WHERE message_id = :'clerk_id')
    = '23514 ex_clerk INSERT INTO ex_dead.orders VALUES ($1, $2) -5',
    'ex_clerk reads its own dead letter');
SELECT ex_dead.check_that(NOT EXISTS (SELECT 1 FROM atx.dead_letter WHERE caller_role <> current_user),
                          'ex_clerk reads no other role''s dead letters');
SELECT ex_dead.check_that(NOT EXISTS (SELECT 1 FROM atx.dead_letter WHERE message_id = :'other_id'),
                          'ex_other''s dead letter is invisible to ex_clerk');
UNLISTEN atx_dead_letter;
RESET ROLE;

-- As a superuser: both are there.
SELECT ex_dead.check_that(
    (SELECT string_agg(caller_role || ' ' || sqlstate, ', ' ORDER BY caller_role) FROM atx.dead_letter
      WHERE message_id IN (:'clerk_id', :'other_id')) = 'ex_clerk 23514, ex_other 23514',
    'a superuser reads both');
SELECT ex_dead.check_that(NOT EXISTS (SELECT 1 FROM ex_dead.orders), 'no order was written');
SELECT 'own_dead_letters: ok' AS result;
