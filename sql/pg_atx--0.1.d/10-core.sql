-- pg_atx 0.1: user functions in the target schema (@extschema@), internal
-- objects in schema atx. See docs/design.md.
\echo Use "CREATE EXTENSION pg_atx" to load this file. \quit

CREATE SCHEMA atx;
COMMENT ON SCHEMA atx IS 'pg_atx internals: apply functions, idempotency keys, dead letters';

-- The replication origin that tags every record atx_log writes. Cluster-wide:
-- another database's CREATE EXTENSION may have made it already. Created from
-- C because pg_replication_origin_create() refuses names starting with "pg_".
CREATE FUNCTION atx.ensure_emit_origin()
RETURNS text
AS 'MODULE_PATHNAME', 'atx_ensure_emit_origin'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION atx.ensure_emit_origin() FROM PUBLIC;
SELECT atx.ensure_emit_origin();

-- The applier's progress origin of this database, pg_atx_apply_<database oid>
-- (same reason: pg_replication_origin_create() cannot make a "pg_" name).
CREATE FUNCTION atx.ensure_apply_origin()
RETURNS text
AS 'MODULE_PATHNAME', 'atx_ensure_apply_origin'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION atx.ensure_apply_origin() IS
    'create the replication origin pg_atx_apply_<database oid> if missing; returns its name';

-- The group role whose members may apply messages (cluster-wide, kept on DROP EXTENSION).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'atx_applier') THEN
        CREATE ROLE atx_applier NOLOGIN;
    END IF;
END
$$;

-- Emit ----------------------------------------------------------------------

CREATE FUNCTION @extschema@.atx_log(statement text)
RETURNS uuid
AS 'MODULE_PATHNAME', 'atx_log'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.atx_log(statement text, VARIADIC params "any")
RETURNS uuid
AS 'MODULE_PATHNAME', 'atx_log'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.atx_log_keyed(idempotency_key text, statement text)
RETURNS uuid
AS 'MODULE_PATHNAME', 'atx_log_keyed'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.atx_log_keyed(idempotency_key text, statement text, VARIADIC params "any")
RETURNS uuid
AS 'MODULE_PATHNAME', 'atx_log_keyed'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.atx_log(text) IS
    'write a statement to the WAL to be run as current_user by atx-applier, even if this transaction rolls back';
COMMENT ON FUNCTION @extschema@.atx_log(text, "any") IS
    'write a statement with bound parameters ($1..$n) to the WAL to be run as current_user by atx-applier';
COMMENT ON FUNCTION @extschema@.atx_log_keyed(text, text) IS
    'atx_log with an idempotency key: a second message with an applied key is not run';
COMMENT ON FUNCTION @extschema@.atx_log_keyed(text, text, "any") IS
    'atx_log with an idempotency key and bound parameters';

-- Apply ---------------------------------------------------------------------

CREATE TABLE atx.idempotency_key (
    key text PRIMARY KEY,
    message_id uuid NOT NULL,
    applied_at timestamptz NOT NULL
);

CREATE TABLE atx.dead_letter (
    id bigserial PRIMARY KEY,
    message_id uuid UNIQUE,
    source_lsn pg_lsn,
    caller_role name,
    caller_role_oid oid,
    caller_xid xid8,
    emitted_at timestamptz,
    statement text,
    params jsonb,
    idempotency_key text,
    payload bytea NOT NULL,
    sqlstate text NOT NULL,
    error text NOT NULL,
    attempts int NOT NULL,
    first_failed_at timestamptz NOT NULL,
    dead_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION atx.apply_message(payload bytea,
    OUT message_id uuid, OUT status text, OUT sqlstate text, OUT error text,
    OUT command text, OUT rows bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'atx_apply_message'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

CREATE FUNCTION atx.apply(payload bytea, OUT message_id uuid, OUT command text, OUT rows bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'atx_apply'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

CREATE FUNCTION atx.decode(payload bytea)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'atx_decode'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION atx.apply_message(bytea) IS
    'verify a pg_atx message and run it as its caller in a subtransaction; reports failures as status';
COMMENT ON FUNCTION atx.apply(bytea) IS
    'verify a pg_atx message and run it as its caller; raises on failure';
COMMENT ON FUNCTION atx.decode(bytea) IS
    'the fields of a pg_atx payload as jsonb, without MAC check';

-- The slot the messages of this database go through.
CREATE FUNCTION atx.ensure_slot()
RETURNS name
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    slot name := 'pg_atx_' || (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database());
    existing name;
BEGIN
    SELECT plugin INTO existing FROM pg_catalog.pg_replication_slots WHERE slot_name = slot;
    IF NOT FOUND THEN
        PERFORM pg_catalog.pg_create_logical_replication_slot(slot, 'pg_atx');
    ELSIF existing IS DISTINCT FROM 'pg_atx' THEN
        RAISE EXCEPTION 'replication slot "%" exists with plugin "%"', slot, existing
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Drop it with pg_drop_replication_slot().';
    END IF;
    RETURN slot;
END
$$;

COMMENT ON FUNCTION atx.ensure_slot() IS
    'create the logical replication slot pg_atx_<database oid> with plugin pg_atx if missing; returns its name';

-- Privileges ----------------------------------------------------------------

REVOKE ALL ON FUNCTION atx.apply_message(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.apply(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.decode(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.ensure_slot() FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.ensure_apply_origin() FROM PUBLIC;

GRANT USAGE ON SCHEMA atx TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.apply_message(bytea) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.apply(bytea) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.decode(bytea) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.ensure_apply_origin() TO atx_applier;
GRANT SELECT, INSERT ON atx.idempotency_key TO atx_applier;
GRANT SELECT, INSERT ON atx.dead_letter TO atx_applier;
GRANT USAGE ON SEQUENCE atx.dead_letter_id_seq TO atx_applier;

-- So that a non-superuser applier can keep its progress in a replication origin.
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text) TO atx_applier;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_reset() TO atx_applier;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_xact_setup(pg_lsn, timestamptz) TO atx_applier;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_progress(text, boolean) TO atx_applier;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_create(text) TO atx_applier;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_oid(text) TO atx_applier;

