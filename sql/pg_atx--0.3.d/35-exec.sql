
-- ===========================================================================
-- atx_exec: the waiting form (issue 5; docs/exec.md). Needs pg_atx in
-- shared_preload_libraries; without it these functions raise 55000.
-- ===========================================================================

CREATE FUNCTION @extschema@.atx_exec(statement text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'atx_exec'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.atx_exec(statement text, VARIADIC params "any")
RETURNS jsonb
AS 'MODULE_PATHNAME', 'atx_exec'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.atx_exec_noraise(statement text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'atx_exec_noraise'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.atx_exec_noraise(statement text, VARIADIC params "any")
RETURNS jsonb
AS 'MODULE_PATHNAME', 'atx_exec_noraise'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.atx_exec(text) IS
    'atx_log, then wait until atx-applier committed the statement; returns its outcome as jsonb, raises its error';
COMMENT ON FUNCTION @extschema@.atx_exec(text, "any") IS
    'atx_exec with bound parameters ($1..$n)';
COMMENT ON FUNCTION @extschema@.atx_exec_noraise(text) IS
    'atx_exec that returns a failure as {"status": "failed", "sqlstate": ..., "error": ...} instead of raising it';
COMMENT ON FUNCTION @extschema@.atx_exec_noraise(text, "any") IS
    'atx_exec_noraise with bound parameters ($1..$n)';
