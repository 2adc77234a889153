-- Autonomous routines (issue 24; docs/usage.md "Autonomous routines", docs/design.md): PRAGMA
-- AUTONOMOUS_TRANSACTION for an existing function or procedure, in one statement. New in 0.3, so
-- sql/pg_atx--0.2--0.3.d/50-autonomous.sql is a link to this file.

-- The bodies of autonomous routines, one per routine, named "<schema>.<name>" after it and owned
-- by its owner, with its grants. Nobody may create here; everyone may look up (a body runs as
-- the caller of an autonomous routine, who needs its EXECUTE grant, as on the routine).
CREATE SCHEMA atx_autonomous;
COMMENT ON SCHEMA atx_autonomous IS
    'pg_atx: the bodies of autonomous routines (atx.make_autonomous), named after them; keep it in dumps';
GRANT USAGE ON SCHEMA atx_autonomous TO PUBLIC;

CREATE FUNCTION atx.make_autonomous(routine regprocedure)
RETURNS regprocedure
AS 'MODULE_PATHNAME', 'atx_make_autonomous'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION atx.make_autonomous(regprocedure) IS
    'every call of this function or procedure runs its body in a transaction of its own through atx-applier and waits for it (owner or superuser)';
GRANT EXECUTE ON FUNCTION atx.make_autonomous(regprocedure) TO PUBLIC;

CREATE FUNCTION atx.make_ordinary(routine regprocedure)
RETURNS regprocedure
AS 'MODULE_PATHNAME', 'atx_make_ordinary'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION atx.make_ordinary(regprocedure) IS
    'undo atx.make_autonomous: the routine runs its body in its caller''s transaction again (owner or superuser)';
GRANT EXECUTE ON FUNCTION atx.make_ordinary(regprocedure) TO PUBLIC;

-- The result of a body, as the stub reads it back (ext/autonomous_call.cc).
CREATE FUNCTION atx._autonomous_encode("any")
RETURNS bytea
AS 'MODULE_PATHNAME', 'atx_autonomous_encode'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION atx._autonomous_encode("any") IS
    'internal: a value as its type''s send() output (text output without one), for an autonomous routine''s caller';
GRANT EXECUTE ON FUNCTION atx._autonomous_encode("any") TO PUBLIC;

CREATE FUNCTION atx._autonomous_body(routine regprocedure)
RETURNS regprocedure
AS 'MODULE_PATHNAME', 'atx_autonomous_body'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION atx._autonomous_body(regprocedure) IS
    'internal: the body of an autonomous routine, NULL for any other';
GRANT EXECUTE ON FUNCTION atx._autonomous_body(regprocedure) TO PUBLIC;

-- Routine and body stay in step: CREATE OR REPLACE of an autonomous routine makes its new
-- definition the body (it stays autonomous); ALTER (owner, SECURITY DEFINER, SET, rename) and
-- GRANT/REVOKE on it are carried to the body; a restored body is linked to its routine; a body
-- cannot be dropped on its own.
CREATE FUNCTION atx._autonomous_ddl()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'atx_autonomous_ddl'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION atx._autonomous_ddl() FROM PUBLIC;
COMMENT ON FUNCTION atx._autonomous_ddl() IS 'internal: keeps autonomous routines and their bodies in step';

CREATE FUNCTION atx._autonomous_drop()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'atx_autonomous_drop'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION atx._autonomous_drop() FROM PUBLIC;
COMMENT ON FUNCTION atx._autonomous_drop() IS 'internal: refuses to drop the body of an autonomous routine alone';

CREATE EVENT TRIGGER atx_autonomous_ddl ON ddl_command_end
    WHEN TAG IN ('CREATE FUNCTION', 'CREATE PROCEDURE', 'ALTER FUNCTION', 'ALTER PROCEDURE', 'ALTER ROUTINE',
                 'GRANT', 'REVOKE')
    EXECUTE FUNCTION atx._autonomous_ddl();
CREATE EVENT TRIGGER atx_autonomous_drop ON sql_drop
    WHEN TAG IN ('DROP FUNCTION', 'DROP PROCEDURE', 'DROP ROUTINE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION atx._autonomous_drop();

CREATE VIEW atx.autonomous_routines AS
SELECT r.oid::pg_catalog.regprocedure AS routine,
       CASE r.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END AS kind,
       pg_catalog.pg_get_userbyid(r.proowner) AS owner,
       r.prosecdef AS security_definer,
       r.proconfig AS settings,
       b.oid::pg_catalog.regprocedure AS body,
       l.lanname AS body_language,
       b.provolatile AS body_volatility
  FROM pg_catalog.pg_proc r
  LEFT JOIN pg_catalog.pg_proc b ON b.oid OPERATOR(pg_catalog.=) atx._autonomous_body(r.oid)
  LEFT JOIN pg_catalog.pg_language l ON l.oid OPERATOR(pg_catalog.=) b.prolang
 WHERE r.prolang OPERATOR(pg_catalog.=) 13  -- C
   AND r.prosrc OPERATOR(pg_catalog.=) 'atx_autonomous_call';
COMMENT ON VIEW atx.autonomous_routines IS
    'routines made autonomous (atx.make_autonomous), with their bodies (NULL: missing, restore schema atx_autonomous)';
GRANT SELECT ON atx.autonomous_routines TO PUBLIC;
