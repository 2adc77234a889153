-- EDB's autonomous transaction scenarios 1a-2c (the dept table), rewritten with pg_atx.
--
-- Original: the EDB Postgres Advanced Server documentation of PRAGMA AUTONOMOUS_TRANSACTION (SPL,
-- "Transaction control"), also in PolarDB for Oracle's manual. Before each scenario dept holds
-- departments 10-40; the scenarios insert 50 in the caller's transaction, 60 in an anonymous
-- block and 70 in procedure insert_dept_70, and show which rows survive:
--   1a, 1b, 1c: no autonomous transaction (final COMMIT; final ROLLBACK; ROLLBACK in the block);
--   2a: the anonymous block is autonomous and ends with COMMIT, the caller rolls back;
--   2b: as 2a, but insert_dept_70 ends with ROLLBACK;
--   2c: as 2b, and insert_dept_70 is autonomous itself (a nested autonomous transaction).
-- The SQL below is EDB's, statement for statement; only SPL syntax is spelled the PostgreSQL way.
--
-- How it maps:
--   * SPL anonymous block BEGIN ... END;          -> DO $$ BEGIN ... END $$;
--   * a procedure call   insert_dept_70;          -> CALL insert_dept_70();
--   * DECLARE PRAGMA AUTONOMOUS_TRANSACTION; BEGIN ... END;
--                                                 -> SELECT atx_exec('DO $$ BEGIN ... END $$');
--     atx_exec waits until atx-applier has committed the block, as EDB's caller waits for its
--     autonomous block, and the caller (READ COMMITTED) sees the block's rows in its next statement.
--   * a procedure with PRAGMA AUTONOMOUS_TRANSACTION
--                                                 -> ora2pg's pair: the body as insert_dept_70_atx,
--     and insert_dept_70 runs it with atx_exec('CALL insert_dept_70_atx()').
--   * COMMIT or ROLLBACK inside the autonomous block: the message runs non-atomically, as a
--     top-level statement of a background worker connected as the caller (as a client's DO or
--     CALL runs), so they work as in EDB. Before PostgreSQL 17 the caller's role needs LOGIN.
--   * an autonomous block inside an autonomous block (2c): atx_exec inside an applied statement;
--     another apply session serves it; up to 16 levels, EDB's limit too.
--
-- Where it differs from EDB (and why), in the scenarios' comments: 1c (a PostgreSQL DO block
-- cannot end its caller's transaction), GUCs (carried into the block, never back out), a block that
-- ends with work uncommitted (committed, as in EDB, unlike Oracle's ORA-06519).
--
-- Needs shared_preload_libraries = 'pg_atx' (atx_exec) and atx-applier running for the database.
-- Run: psql -v ON_ERROR_STOP=1 -f docs/examples/edb_autonomous_dept.sql
-- Each scenario prints '<scenario>: ok' when the dept table is what EDB documents; the last line
-- is 'edb_autonomous_dept: ok'. Checked by tests/integration/examples.sh. See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_edb CASCADE;
CREATE SCHEMA ex_edb;
SET search_path = ex_edb, public;   -- carried into every autonomous block
-- Every autonomous call here is answered in well under a second: a wait this long is a failure.
SET atx.exec_timeout = '10s';

CREATE TABLE dept (
    deptno numeric(2) PRIMARY KEY,
    dname varchar(14),
    loc varchar(13)
);

-- Before each scenario, dept is reset to its four initial departments.
CREATE PROCEDURE reset_dept()
LANGUAGE sql
AS $$
    DELETE FROM ex_edb.dept;
    INSERT INTO ex_edb.dept VALUES (10, 'ACCOUNTING', 'NEW YORK'), (20, 'RESEARCH', 'DALLAS'),
                                   (30, 'SALES', 'CHICAGO'), (40, 'OPERATIONS', 'BOSTON');
$$;

-- The check after each scenario: dept holds exactly these departments (with EDB's names and
-- places). Returns '<scenario>: ok', raises otherwise.
CREATE FUNCTION expect_dept(scenario text, VARIADIC deptnos int[])
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    want text;
    have text;
BEGIN
    SELECT string_agg(d.deptno || ' ' || d.dname || ' ' || d.loc, ', ' ORDER BY d.deptno) INTO want
      FROM (VALUES (10, 'ACCOUNTING', 'NEW YORK'), (20, 'RESEARCH', 'DALLAS'), (30, 'SALES', 'CHICAGO'),
                   (40, 'OPERATIONS', 'BOSTON'), (50, 'HR', 'DENVER'), (60, 'FINANCE', 'CHICAGO'),
                   (70, 'MARKETING', 'LOS ANGELES')) d(deptno, dname, loc)
     WHERE d.deptno = ANY (deptnos);
    SELECT string_agg(deptno || ' ' || dname || ' ' || loc, ', ' ORDER BY deptno) INTO have FROM ex_edb.dept;
    ASSERT have = want, format('%s: dept is [%s], EDB documents [%s]', scenario, have, want);
    RETURN scenario || ': ok';
END
$$;

-- A check on something psql knows (an error's SQLSTATE, a result kept with \gset).
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

-- Bounded wait for atx-applier: the first autonomous call returns once it is being served.
SELECT (atx_exec('SELECT 1 AS up')->'result'->0->>'up') = '1' AS applier_answers;

-------------------------------------------------------------------------------
-- Scenario 1a: no autonomous transactions, only a final COMMIT. All three rows stay.
-- (No pg_atx here: 1a-1c are EDB's baseline and hold on plain PostgreSQL.)
-------------------------------------------------------------------------------
CREATE OR REPLACE PROCEDURE insert_dept_70()
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO dept VALUES (70,'MARKETING','LOS ANGELES');
END
$$;

CALL reset_dept();
BEGIN;
INSERT INTO dept VALUES (50,'HR','DENVER');
DO $$
BEGIN
    INSERT INTO dept VALUES (60,'FINANCE','CHICAGO');
    CALL insert_dept_70();
END
$$;
COMMIT;
SELECT expect_dept('1a', 10, 20, 30, 40, 50, 60, 70);

-------------------------------------------------------------------------------
-- Scenario 1b: no autonomous transactions, a final ROLLBACK. None of the three rows stays.
-------------------------------------------------------------------------------
CALL reset_dept();
BEGIN;
INSERT INTO dept VALUES (50,'HR','DENVER');
DO $$
BEGIN
    INSERT INTO dept VALUES (60,'FINANCE','CHICAGO');
    CALL insert_dept_70();
END
$$;
ROLLBACK;
SELECT expect_dept('1b', 10, 20, 30, 40);

-------------------------------------------------------------------------------
-- Scenario 1c: no autonomous transactions, ROLLBACK at the end of the anonymous block. None of
-- the three rows stays.
--
-- Differs from EDB: in EDB the block's ROLLBACK ends the caller's transaction and the final
-- COMMIT commits nothing. A PostgreSQL DO block inside a transaction block may not end that
-- transaction: its ROLLBACK fails with 2D000 (invalid transaction termination), which aborts the
-- transaction, and the final COMMIT then rolls back. Same rows in the end, reached by an error.
-------------------------------------------------------------------------------
CALL reset_dept();
\set ON_ERROR_STOP 0
BEGIN;
INSERT INTO dept VALUES (50,'HR','DENVER');
DO $$
BEGIN
    INSERT INTO dept VALUES (60,'FINANCE','CHICAGO');
    CALL insert_dept_70();
    ROLLBACK;
END
$$;
COMMIT;
\set ON_ERROR_STOP 1
SELECT check_that(:'LAST_ERROR_SQLSTATE' = '2D000', '1c refused', :'LAST_ERROR_SQLSTATE');
SELECT expect_dept('1c', 10, 20, 30, 40);

-------------------------------------------------------------------------------
-- Scenario 2a: the anonymous block is autonomous and ends with COMMIT; the caller rolls back.
-- Only 50, inserted by the caller, is gone; 60 and 70 were committed by the block.
--
-- The block is the statement of an atx_exec message. Its COMMIT makes it run non-atomically
-- (a top-level DO of a background worker connected as the caller); without the COMMIT it would
-- run atomically in an apply session and be committed by the applier: the same rows. That is
-- also EDB's answer to "a block that ends with work uncommitted": committed, no error (Oracle
-- raises ORA-06519 there).
-------------------------------------------------------------------------------
CALL reset_dept();
BEGIN;
INSERT INTO dept VALUES (50,'HR','DENVER');
SELECT atx_exec($atx$
DO $block$
BEGIN
    INSERT INTO dept VALUES (60,'FINANCE','CHICAGO');
    CALL insert_dept_70();
    COMMIT;
END
$block$
$atx$) ->> 'status' AS "2a block";
-- As in EDB, the caller sees the block's committed rows at once (READ COMMITTED), next to its own.
SELECT expect_dept('2a, inside the caller before its ROLLBACK', 10, 20, 30, 40, 50, 60, 70);
ROLLBACK;
SELECT expect_dept('2a', 10, 20, 30, 40, 60, 70);

-------------------------------------------------------------------------------
-- Scenario 2b: autonomous block with COMMIT, calling a procedure that ends with ROLLBACK and is
-- not autonomous. The procedure's ROLLBACK undoes the block's work (60 and 70) and nothing of the
-- caller's; the caller commits 50.
--
-- The ROLLBACK inside a procedure called from the block: the block runs non-atomically (as in
-- 2a), so the procedure's ROLLBACK ends the block's transaction, as in EDB. The caller's
-- transaction is another session's and is untouched.
-------------------------------------------------------------------------------
CREATE OR REPLACE PROCEDURE insert_dept_70()
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO dept VALUES (70,'MARKETING','LOS ANGELES');
    ROLLBACK;
END
$$;

CALL reset_dept();
BEGIN;
INSERT INTO dept VALUES (50,'HR','DENVER');
SELECT atx_exec($atx$
DO $block$
BEGIN
    INSERT INTO dept VALUES (60,'FINANCE','CHICAGO');
    CALL insert_dept_70();
    COMMIT;
END
$block$
$atx$) ->> 'status' AS "2b block";
COMMIT;
SELECT expect_dept('2b', 10, 20, 30, 40, 50);

-------------------------------------------------------------------------------
-- Settings. EDB's autonomous transactions "absorb the surrounding values" of the caller's GUCs
-- and can propagate values they commit back out. pg_atx carries every setting the caller's
-- session changed (here search_path and DateStyle) into the block, never back: a SET
-- inside the block ends with it.
-------------------------------------------------------------------------------
SET datestyle = 'SQL, DMY';
SELECT atx_exec('SELECT current_setting(''datestyle'') AS inside, current_setting(''search_path'') AS path')
           -> 'result' -> 0 AS settings_inside \gset
DO $$
BEGIN
    PERFORM atx_exec('SET datestyle = ''ISO, MDY''');
    ASSERT current_setting('datestyle') = 'SQL, DMY', 'a SET inside the block does not reach the caller';
END
$$;
SELECT check_that(:'settings_inside'::jsonb = '{"inside": "SQL, DMY", "path": "ex_edb, public"}',
                  'settings', :'settings_inside');
RESET datestyle;

-------------------------------------------------------------------------------
-- Nesting depth. EDB nests autonomous transactions up to 16 levels in a session; atx_exec inside
-- an applied statement nests the same way (each level waits in its own apply session), and the
-- 17th level is refused with 54001 (statement_too_complex) instead of hanging.
-------------------------------------------------------------------------------
CREATE FUNCTION nest(target int)
RETURNS int
LANGUAGE plpgsql
AS $$
DECLARE
    depth int := coalesce((atx.current_message()).depth, 0);  -- 0: not inside a message
BEGIN
    IF depth = target THEN
        RETURN depth;
    END IF;
    RETURN (atx_exec('SELECT ex_edb.nest($1) AS depth', target)->'result'->0->>'depth')::int;
END
$$;

DO $$
BEGIN
    ASSERT ex_edb.nest(16) = 16, '16 nested autonomous levels';
    BEGIN
        PERFORM ex_edb.nest(17);
        RAISE EXCEPTION 'a 17th level was not refused';
    EXCEPTION WHEN statement_too_complex THEN
        RAISE NOTICE 'a 17th level is refused: %', SQLERRM;
    END;
END
$$;
SELECT 'nesting: ok' AS result;

-------------------------------------------------------------------------------
-- Scenario 2c: as 2b, but insert_dept_70 is autonomous itself. Its ROLLBACK undoes only its own
-- insert (70); the block commits 60, the caller commits 50.
--
-- insert_dept_70 becomes ora2pg's pair: EDB's body, unchanged, is insert_dept_70_atx (its
-- ROLLBACK makes it run non-atomically), and insert_dept_70 runs it through atx_exec. Called from
-- the autonomous block, that is a nested atx_exec, served by another apply session.
--
-- The block's COMMIT sends it to the non-atomic path after its atomic attempt already ran the
-- nested call; the non-atomic re-run emits the same nested message again (same derived id), finds
-- it handled, and gets its stored outcome: it runs once.
-------------------------------------------------------------------------------
DROP PROCEDURE insert_dept_70();
CREATE PROCEDURE insert_dept_70_atx()
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO dept VALUES (70,'MARKETING','LOS ANGELES');
    ROLLBACK;
END
$$;
CREATE PROCEDURE insert_dept_70()
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM atx_exec('CALL insert_dept_70_atx()');
END
$$;

CALL reset_dept();
BEGIN;
INSERT INTO dept VALUES (50,'HR','DENVER');
SELECT atx_exec($atx$
DO $block$
BEGIN
    INSERT INTO dept VALUES (60,'FINANCE','CHICAGO');
    CALL insert_dept_70();
    COMMIT;
END
$block$
$atx$) ->> 'status' AS "2c block";
COMMIT;
SELECT expect_dept('2c', 10, 20, 30, 40, 50, 60);

-------------------------------------------------------------------------------
-- Second form: EDB's bodies as they are, each made autonomous with one statement.
--
-- A procedure declared with PRAGMA AUTONOMOUS_TRANSACTION keeps its body, ROLLBACK included,
-- and atx.make_autonomous makes every call of it autonomous: the caller waits while the body
-- runs in its own transaction (through atx-applier, as the caller, with its settings). An
-- anonymous block cannot be made autonomous (it is no routine): its body becomes a procedure.
-------------------------------------------------------------------------------
DROP PROCEDURE insert_dept_70();
DROP PROCEDURE insert_dept_70_atx();

-- 2a: the autonomous block, with COMMIT, calling an ordinary insert_dept_70.
CREATE PROCEDURE insert_dept_70()
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO dept VALUES (70,'MARKETING','LOS ANGELES');
END
$$;
CREATE PROCEDURE autonomous_block()
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO dept VALUES (60,'FINANCE','CHICAGO');
    CALL insert_dept_70();
    COMMIT;
END
$$;
SELECT atx.make_autonomous('autonomous_block()');

CALL reset_dept();
BEGIN;
INSERT INTO dept VALUES (50,'HR','DENVER');
CALL autonomous_block();
SELECT expect_dept('2a with make_autonomous, inside the caller before its ROLLBACK', 10, 20, 30, 40, 50, 60, 70);
ROLLBACK;
SELECT expect_dept('2a with make_autonomous', 10, 20, 30, 40, 60, 70);

-- 2b: insert_dept_70 ends with ROLLBACK and is not autonomous.
CREATE OR REPLACE PROCEDURE insert_dept_70()
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO dept VALUES (70,'MARKETING','LOS ANGELES');
    ROLLBACK;
END
$$;
CALL reset_dept();
BEGIN;
INSERT INTO dept VALUES (50,'HR','DENVER');
CALL autonomous_block();
COMMIT;
SELECT expect_dept('2b with make_autonomous', 10, 20, 30, 40, 50);

-- 2c: insert_dept_70, ROLLBACK and all, is autonomous itself: nested in the autonomous block.
SELECT atx.make_autonomous('insert_dept_70()');
CALL reset_dept();
BEGIN;
INSERT INTO dept VALUES (50,'HR','DENVER');
CALL autonomous_block();
COMMIT;
SELECT expect_dept('2c with make_autonomous', 10, 20, 30, 40, 50, 60);

-- Nesting: an autonomous function that calls itself, 16 levels below the client's call; the 17th
-- is refused (54001), EDB's limit.
CREATE FUNCTION nest_autonomous(target int)
RETURNS int
LANGUAGE plpgsql
AS $$
DECLARE
    depth int := (atx.current_message()).depth;
BEGIN
    IF depth = target THEN
        RETURN depth;
    END IF;
    RETURN nest_autonomous(target);
END
$$;
SELECT atx.make_autonomous('nest_autonomous(int)');
DO $$
BEGIN
    ASSERT ex_edb.nest_autonomous(16) = 16, '16 nested autonomous levels';
    BEGIN
        PERFORM ex_edb.nest_autonomous(17);
        RAISE EXCEPTION 'a 17th level was not refused';
    EXCEPTION WHEN statement_too_complex THEN
        RAISE NOTICE 'a 17th level is refused: %', SQLERRM;
    END;
END
$$;
SELECT 'nesting with make_autonomous: ok' AS result;

SELECT 'edb_autonomous_dept: ok' AS result;
