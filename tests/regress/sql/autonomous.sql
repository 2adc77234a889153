-- Autonomous routines, the catalog side (atx.make_autonomous, make_ordinary, the event triggers,
-- the view): what a routine becomes, what it keeps, who may do it, what DDL does to it. The
-- suite's cluster does not preload pg_atx, so a call of an autonomous routine refuses with 55000;
-- tests/integration/autonomous*.sh run them.
CREATE ROLE regress_atx_alice;
CREATE ROLE regress_atx_bob;
CREATE SCHEMA regress_auto AUTHORIZATION regress_atx_alice;
GRANT USAGE ON SCHEMA regress_auto TO regress_atx_bob;
SET ROLE regress_atx_alice;
CREATE TABLE regress_auto.log (id serial, msg text);
CREATE FUNCTION regress_auto.add_log(m text, n int DEFAULT 1) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE i int;
BEGIN
    INSERT INTO regress_auto.log(msg) VALUES (m) RETURNING id INTO i;
    RETURN i * n;
END
$$;
COMMENT ON FUNCTION regress_auto.add_log(text, int) IS 'alice''s logger';
GRANT EXECUTE ON FUNCTION regress_auto.add_log(text, int) TO regress_atx_bob;
CREATE PROCEDURE regress_auto.tick(INOUT n int) LANGUAGE sql BEGIN ATOMIC SELECT n + 1; END;
CREATE FUNCTION regress_auto.stable_one() RETURNS int STABLE PARALLEL SAFE LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION regress_auto.owner_only() RETURNS name SECURITY DEFINER
    SET search_path = regress_auto, pg_temp LANGUAGE sql AS 'SELECT current_user';
CREATE TABLE regress_auto.t (v int);
CREATE FUNCTION regress_auto.trg() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
RESET ROLE;
SELECT oid AS add_log_oid FROM pg_proc WHERE oid = 'regress_auto.add_log(text, int)'::regprocedure \gset

-- Only the owner (or a superuser) may make a routine autonomous or ordinary.
SET ROLE regress_atx_bob;
SELECT regress_try($$SELECT atx.make_autonomous('regress_auto.add_log(text, int)')$$);
RESET ROLE;
SET ROLE regress_atx_alice;
SELECT atx.make_autonomous('regress_auto.add_log(text, int)');
SELECT atx.make_autonomous('regress_auto.add_log(text, int)');  -- again: a notice
SELECT atx.make_autonomous('regress_auto.tick(int)');
SELECT atx.make_autonomous('regress_auto.stable_one()');
SELECT atx.make_autonomous('regress_auto.owner_only()');
RESET ROLE;
SET ROLE regress_atx_bob;
SELECT regress_try($$SELECT atx.make_ordinary('regress_auto.add_log(text, int)')$$);
RESET ROLE;

-- The routine keeps its OID, name, signature, defaults, owner, grants and comment; it becomes the
-- stub, VOLATILE and PARALLEL UNSAFE; its body keeps the rest.
SELECT p.oid = :add_log_oid AS same_oid, p.oid::regprocedure, l.lanname, p.prosrc, p.provolatile, p.proparallel,
       pg_get_userbyid(p.proowner) AS owner, p.proacl, obj_description(p.oid, 'pg_proc') AS comment,
       pg_get_function_arguments(p.oid) AS arguments
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.oid IN ('regress_auto.add_log(text, int)'::regprocedure, 'regress_auto.stable_one()'::regprocedure)
 ORDER BY 2;
SELECT routine, kind, owner, security_definer, settings, body, body_language, body_volatility
  FROM atx.autonomous_routines ORDER BY routine::text;
SELECT b.oid::regprocedure, pg_get_userbyid(b.proowner) AS owner, b.proacl, b.prosecdef, b.proconfig,
       pg_get_function_arguments(b.oid) AS arguments, b.prosqlbody IS NOT NULL AS sql_standard_body
  FROM pg_proc b WHERE b.pronamespace = 'atx_autonomous'::regnamespace ORDER BY b.proname;
-- The body of a SECURITY DEFINER routine is executable by its owner alone.
SET ROLE regress_atx_bob;
SELECT regress_try($$SELECT atx_autonomous."regress_auto.owner_only"()$$);
RESET ROLE;

-- A call needs the preloaded library (the wait), as atx_exec does; nothing is written.
SELECT regress_try($$SELECT regress_auto.add_log('x')$$);
SELECT regress_try($$CALL regress_auto.tick(1)$$);

-- What cannot be made autonomous.
CREATE AGGREGATE regress_auto.agg(int) (sfunc = int4pl, stype = int);
SELECT regress_try($$SELECT atx.make_autonomous('regress_auto.agg(int)')$$);
SELECT regress_try($$SELECT atx.make_autonomous('pg_catalog.now()')$$);
SELECT regress_try($$SELECT atx.make_autonomous('atx.slot_name()')$$);
SELECT regress_try($$SELECT atx.make_autonomous('regress_auto.trg()')$$);
SELECT regress_try($$SELECT atx.make_autonomous('atx_autonomous."regress_auto.add_log"(text, int)')$$);
SELECT regress_try($$SELECT atx.make_ordinary(1::oid::regprocedure)$$);

-- GRANT and REVOKE on the routine reach its body; ALTER too; the body follows a rename.
SET ROLE regress_atx_alice;
REVOKE EXECUTE ON FUNCTION regress_auto.add_log(text, int) FROM PUBLIC;
SELECT proacl FROM pg_proc WHERE oid = atx._autonomous_body('regress_auto.add_log(text, int)');
ALTER FUNCTION regress_auto.add_log(text, int) SET work_mem = '2MB';
ALTER FUNCTION regress_auto.add_log(text, int) RENAME TO add_entry;
SELECT routine, body, settings FROM atx.autonomous_routines WHERE routine::text LIKE '%add_entry%';
-- Changing its volatility is undone: the routine stays VOLATILE, the body keeps its own.
ALTER FUNCTION regress_auto.stable_one() IMMUTABLE;
SELECT provolatile FROM pg_proc WHERE oid = 'regress_auto.stable_one()'::regprocedure;

-- CREATE OR REPLACE of an autonomous routine: it stays autonomous, the new definition is its body.
CREATE OR REPLACE FUNCTION regress_auto.add_entry(m text, n int DEFAULT 1) RETURNS int
LANGUAGE sql AS $$ INSERT INTO regress_auto.log(msg) VALUES (upper(m)) RETURNING id * n $$;
SELECT routine, body_language, (SELECT prosrc FROM pg_proc WHERE oid = body) AS body_source,
       (SELECT lanname FROM pg_language l JOIN pg_proc p ON p.prolang = l.oid WHERE p.oid = routine) AS language
  FROM atx.autonomous_routines WHERE routine::text LIKE '%add_entry%';

-- A body cannot be dropped alone; with its routine it goes.
SELECT regress_try($$DROP FUNCTION atx_autonomous."regress_auto.add_entry"(text, int)$$);
-- Nobody creates in schema atx_autonomous, nor replaces a body there.
SELECT regress_try($$CREATE FUNCTION atx_autonomous.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'$$);
SELECT regress_try($$CREATE OR REPLACE FUNCTION atx_autonomous."regress_auto.add_entry"(m text, n int DEFAULT 1)
    RETURNS int LANGUAGE sql AS 'SELECT 0'$$);
RESET ROLE;

-- make_ordinary: the routine gets its body back (language, source, volatility), the body goes.
SET ROLE regress_atx_alice;
SELECT atx.make_ordinary('regress_auto.add_entry(text, int)');
SELECT atx.make_ordinary('regress_auto.add_entry(text, int)');  -- again: a notice
SELECT atx.make_ordinary('regress_auto.stable_one()');
SELECT p.oid = :add_log_oid AS same_oid, l.lanname, p.prosrc, p.provolatile, p.proparallel, p.proconfig, p.proacl,
       obj_description(p.oid, 'pg_proc') AS comment
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.oid IN ('regress_auto.add_entry(text, int)'::regprocedure, 'regress_auto.stable_one()'::regprocedure)
 ORDER BY p.proname;
SELECT regress_auto.add_entry('ordinary again', 2) AS ordinary_call;
DROP FUNCTION regress_auto.owner_only();
RESET ROLE;
SELECT routine FROM atx.autonomous_routines ORDER BY routine::text;
SELECT count(*) AS bodies_left FROM pg_proc WHERE pronamespace = 'atx_autonomous'::regnamespace;

-- DROP EXTENSION refuses while a routine is autonomous, naming its body.
SELECT regress_try($$DROP EXTENSION pg_atx$$);
SELECT atx.make_ordinary('regress_auto.tick(int)');

SET client_min_messages = warning;
DROP SCHEMA regress_auto CASCADE;
RESET client_min_messages;
DROP ROLE regress_atx_alice, regress_atx_bob;
