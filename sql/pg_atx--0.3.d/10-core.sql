-- pg_atx 0.3, installed directly: the definition of the current schema. User functions in the
-- target schema (@extschema@), everything else in schema atx. docs/design.md describes the
-- objects. An existing installation gets here through pg_atx--0.1.sql, pg_atx--0.1--0.2.sql and
-- pg_atx--0.2--0.3.sql; tests/integration/extension_upgrade.sh checks that both ways end with
-- the same objects, privileges, policies and comments. A change to the schema goes into this
-- directory AND into sql/pg_atx--0.2--0.3.d/ (parts 40-89 are free for new features).
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

-- The group role whose members may apply messages (cluster-wide, kept on DROP EXTENSION).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'atx_applier') THEN
        CREATE ROLE atx_applier NOLOGIN;
    END IF;
END
$$;

-- The applier role reads its way into schema atx; the statements of messages, which run as
-- their callers, call functions in it (atx.current_message, atx._audit_insert). Every other
-- function of the schema has its EXECUTE revoked from PUBLIC, and its tables grant nothing to
-- PUBLIC but the dead letters that row-level security filters.
GRANT USAGE ON SCHEMA atx TO atx_applier;
GRANT USAGE ON SCHEMA atx TO PUBLIC;

-- The HMAC key (docs/security.md) is made here, by CREATE EXTENSION, if the cluster has none yet
-- (in the data directory, or where atx.key_file says); no backend makes one later by itself.
CREATE FUNCTION atx._ensure_key() RETURNS void
AS 'MODULE_PATHNAME', 'atx_ensure_key'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION atx._ensure_key() FROM PUBLIC;
COMMENT ON FUNCTION atx._ensure_key() IS 'internal: read the HMAC key; CREATE EXTENSION creates it if missing';
SELECT atx._ensure_key();

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

-- The same functions as atx_log, in schema atx where only the extension owner
-- can create objects: extension code calls these, so that an overload a role
-- defines in the target schema (public by default, "CREATE FUNCTION
-- public.atx_log(text, oid, ...)") can never capture an internal call.
CREATE FUNCTION atx._emit(statement text)
RETURNS uuid
AS 'MODULE_PATHNAME', 'atx_log'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION atx._emit(statement text, VARIADIC params "any")
RETURNS uuid
AS 'MODULE_PATHNAME', 'atx_log'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION atx._emit(text) IS 'internal: atx_log for extension code (cannot be overloaded by users)';
COMMENT ON FUNCTION atx._emit(text, "any") IS 'internal: atx_log for extension code (cannot be overloaded by users)';

-- Statement-level emitters (the audit trigger) write several messages and make them durable
-- once: as one COMMIT would, under the caller's synchronous_commit (ext/emit.cc).
CREATE FUNCTION atx._emit_batch_begin() RETURNS void
AS 'MODULE_PATHNAME', 'atx_emit_batch_begin' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION atx._emit_batch_end() RETURNS void
AS 'MODULE_PATHNAME', 'atx_emit_batch_end' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION atx._emit_batch_begin() IS 'internal: defer the durability wait of the emits that follow';
COMMENT ON FUNCTION atx._emit_batch_end() IS 'internal: make the deferred emits durable (flush, synchronous standbys)';

-- Payloads ------------------------------------------------------------------

CREATE FUNCTION atx.decode(payload bytea)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'atx_decode'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION atx.decode(bytea) IS
    'the fields of a pg_atx payload as jsonb, without MAC check';
REVOKE ALL ON FUNCTION atx.decode(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.decode(bytea) TO atx_applier;

CREATE FUNCTION atx.verify_payload(payload bytea)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'atx_verify_payload'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION atx.verify_payload(bytea) IS 'decode and authenticate a payload without running it';
REVOKE ALL ON FUNCTION atx.verify_payload(bytea) FROM PUBLIC;

-- The message whose statement is running: NULL (every field) outside an apply.
CREATE FUNCTION atx.current_message(
    OUT id uuid, OUT caller_role name, OUT caller_role_oid oid, OUT caller_xid xid8,
    OUT emitted_at timestamptz, OUT idempotency_key text, OUT caller_session_user name,
    OUT depth int, OUT parent_id uuid)
RETURNS record
AS 'MODULE_PATHNAME', 'atx_current_message'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION atx.current_message() IS
    'the pg_atx message being applied: id, caller role, xid, emit time, key, session user, depth, parent; NULL outside';
GRANT EXECUTE ON FUNCTION atx.current_message() TO PUBLIC;

-- The slot ------------------------------------------------------------------

CREATE FUNCTION atx.slot_name()
RETURNS name
AS 'MODULE_PATHNAME', 'atx_slot_name_sql'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION atx.slot_name() IS 'the replication slot of this database: pg_atx_<database oid>';

-- The slot the messages of this database go through; on PostgreSQL 17 and later a failover
-- slot, synchronised to standbys.
CREATE FUNCTION atx.ensure_slot()
RETURNS name
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    slot name := atx.slot_name();
    existing name;
BEGIN
    SELECT plugin INTO existing FROM pg_catalog.pg_replication_slots WHERE slot_name = slot;
    IF NOT FOUND THEN
        IF pg_catalog.current_setting('server_version_num')::int >= 170000 THEN
            EXECUTE 'SELECT pg_catalog.pg_create_logical_replication_slot($1, ''pg_atx'', false, false, true)'
                USING slot;
        ELSE
            PERFORM pg_catalog.pg_create_logical_replication_slot(slot, 'pg_atx');
        END IF;
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
REVOKE ALL ON FUNCTION atx.ensure_slot() FROM PUBLIC;
-- The applier creates the slot of a database if it is missing (it needs REPLICATION too).
GRANT EXECUTE ON FUNCTION atx.ensure_slot() TO atx_applier;
