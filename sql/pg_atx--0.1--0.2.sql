-- pg_atx 0.1 -> 0.2. A fresh CREATE EXTENSION runs pg_atx--0.1.sql and then this
-- script, so this is also the definition of 0.2 (tests/integration/extension_upgrade.sh).
\echo Use "ALTER EXTENSION pg_atx UPDATE TO '0.2'" to load this file. \quit

-- ===========================================================================
-- Security (issue 12): audit writes run as the audit table's owner; internal
-- calls cannot be hijacked by an overload in the extension's target schema.
-- ===========================================================================

-- The two writes the audit helpers make, run as the audit table's OWNER inside
-- a security-restricted operation with search_path = pg_catalog, pg_temp
-- (ext/audit_owner.cc). A trigger, default or policy on an audit table thus
-- runs with its owner's rights, never with the extension owner's.
CREATE FUNCTION atx._audit_write(audit_table regclass, target oid, table_name text, op text, rows jsonb,
    caller_role name, caller_session_user name, application_name text, client_addr inet,
    caller_xid xid8, emitted_at timestamptz, message_id uuid, outcome text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'atx_audit_write'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION atx._audit_write(regclass, oid, text, text, jsonb, name, name, text, inet, xid8,
    timestamptz, uuid, text) FROM PUBLIC;
COMMENT ON FUNCTION atx._audit_write(regclass, oid, text, text, jsonb, name, name, text, inet, xid8,
    timestamptz, uuid, text) IS 'internal: insert audit rows as the audit table''s owner';

-- Persists final caller outcomes in one audit table, as its owner. The caller
-- needs UPDATE on the table (checked by the function: it is not SECURITY DEFINER).
CREATE FUNCTION atx._audit_resolve(audit_table regclass)
RETURNS bigint
AS 'MODULE_PATHNAME', 'atx_audit_resolve'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION atx._audit_resolve(regclass) IS
    'internal: persist final caller outcomes of one audit table, as its owner (caller needs UPDATE)';

-- Audit tables of one's own are made with (LIKE atx.audit_log INCLUDING DEFAULTS), whose id
-- default draws from this sequence; their owners, who now do the insert, need to use it.
GRANT USAGE ON SEQUENCE atx.audit_log_id_seq TO PUBLIC;

CREATE OR REPLACE FUNCTION atx._audit_insert(target oid, op text, rows jsonb,
    caller_session_user name, caller_application_name text, caller_client_addr inet)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m record;
    cfg record;
    outcome text;
BEGIN
    SELECT * INTO m FROM atx.current_message();
    IF m.id IS NULL THEN
        RAISE EXCEPTION 'atx._audit_insert may only run inside a pg_atx message'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT c.audit_table, format('%I.%I', ns.nspname, cl.relname) AS name
      INTO cfg
      FROM atx.audit_config c
      JOIN pg_class cl ON cl.oid = c.target
      JOIN pg_namespace ns ON ns.oid = cl.relnamespace
     WHERE c.target = _audit_insert.target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table with OID % is not audited', target USING ERRCODE = 'undefined_object';
    END IF;
    IF op NOT IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
       OR NOT has_table_privilege(m.caller_role_oid, target, op) THEN
        RAISE EXCEPTION 'role % may not % table %', m.caller_role, op, cfg.name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    outcome := atx.xact_outcome(m.caller_xid);
    IF outcome NOT IN ('committed', 'aborted', 'no transaction') THEN
        outcome := NULL;
    END IF;
    -- As the audit table's owner (never as this function's owner).
    RETURN atx._audit_write(cfg.audit_table, target, cfg.name, op, rows, m.caller_role, caller_session_user,
                            caller_application_name, caller_client_addr, m.caller_xid, m.emitted_at, m.id,
                            outcome);
END
$$;

CREATE OR REPLACE FUNCTION atx.resolve_outcomes(audit_table regclass DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tables regclass[];
    t regclass;
    total bigint := 0;
BEGIN
    IF audit_table IS NOT NULL THEN
        tables := ARRAY[audit_table];   -- no need to read atx.audit_config
    ELSE
        SELECT array_agg(x) INTO tables
          FROM (SELECT c.audit_table AS x FROM atx.audit_config c
                UNION SELECT 'atx.audit_log'::regclass) s;
    END IF;
    FOREACH t IN ARRAY tables LOOP
        total := total + atx._audit_resolve(t);
    END LOOP;
    RETURN total;
END
$$;

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

-- Unchanged but for its four emit calls, which now go to atx._emit.
CREATE OR REPLACE FUNCTION atx.audit_trigger()
RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    excl text[] := CASE WHEN TG_NARGS > 0 THEN TG_ARGV[0]::text[] ELSE '{}' END;
    masks jsonb := '{}';
    limit_bytes bigint;
    budget bigint;
    per_row bigint;
    stmt constant text := 'SELECT atx._audit_insert($1, $2, $3, $4, $5, $6)';
    app text := current_setting('application_name');
    chunk record;
    one jsonb;
BEGIN
    IF TG_NARGS > 1 THEN
        SELECT COALESCE(jsonb_object_agg(c, '***'), '{}') INTO masks FROM unnest(TG_ARGV[1]::text[]) c;
    END IF;

    IF TG_LEVEL = 'ROW' THEN
        PERFORM atx._emit(stmt, TG_RELID, TG_OP::text,
            jsonb_build_array(jsonb_build_array(
                CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN (to_jsonb(OLD) - excl) || masks END,
                CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN (to_jsonb(NEW) - excl) || masks END)),
            session_user, app, inet_client_addr());
        RETURN NULL;
    END IF;

    IF TG_OP = 'TRUNCATE' THEN
        PERFORM atx._emit(stmt, TG_RELID, TG_OP::text, '[[null, null]]'::jsonb,
                                    session_user, app, inet_client_addr());
        RETURN NULL;
    END IF;

    -- Chunks: every row weighs its jsonb text plus budget/1000, so a chunk
    -- holds at most ~1000 rows and ~budget bytes (plus its last row).
    -- The chunks of one statement are made durable together, once, at the end.
    PERFORM atx._emit_batch_begin();
    limit_bytes := pg_size_bytes(COALESCE(current_setting('atx.max_payload_size', true), '1MB'));
    budget := GREATEST(limit_bytes / 2, 1);
    per_row := GREATEST(budget / 1000, 1);
    FOR chunk IN EXECUTE format($q$
        SELECT jsonb_agg(jsonb_build_array(o, n) ORDER BY rn) AS rows, sum(w) AS bytes
          FROM (SELECT rn, o, n, w, (sum(w) OVER (ORDER BY rn))::bigint - w AS start
                  FROM (SELECT rn, o, n,
                               (COALESCE(octet_length(o::text), 0) + COALESCE(octet_length(n::text), 0))::bigint + $3 AS w
                          FROM %s) x) y
         GROUP BY start / $4
         ORDER BY start / $4$q$,
        CASE TG_OP
        WHEN 'INSERT' THEN
            '(SELECT row_number() OVER () AS rn, NULL::jsonb AS o, (to_jsonb(t) - $1) || $2 AS n FROM atx_new t) p'
        WHEN 'DELETE' THEN
            '(SELECT row_number() OVER () AS rn, (to_jsonb(t) - $1) || $2 AS o, NULL::jsonb AS n FROM atx_old t) p'
        ELSE
            -- Both transition tables hold the rows in the same order (each
            -- updated row is appended to both at once): pair them by position.
            '(SELECT rn, o.img AS o, n.img AS n'
            '   FROM (SELECT row_number() OVER () AS rn, (to_jsonb(t) - $1) || $2 AS img FROM atx_old t) o'
            '   JOIN (SELECT row_number() OVER () AS rn, (to_jsonb(t) - $1) || $2 AS img FROM atx_new t) n'
            '  USING (rn)) p'
        END)
        USING excl, masks, per_row, budget
    LOOP
        IF chunk.bytes > limit_bytes * 9 / 10 THEN
            -- One row of about the limit rode along: send the rows one by one
            -- (a single row above the limit fails the statement: 54000).
            FOR one IN SELECT e FROM jsonb_array_elements(chunk.rows) e LOOP
                PERFORM atx._emit(stmt, TG_RELID, TG_OP::text, jsonb_build_array(one),
                                            session_user, app, inet_client_addr());
            END LOOP;
        ELSE
            PERFORM atx._emit(stmt, TG_RELID, TG_OP::text, chunk.rows,
                                        session_user, app, inet_client_addr());
        END IF;
    END LOOP;
    PERFORM atx._emit_batch_end();
    RETURN NULL;
END
$fn$;

-- Statement-level emitters (the audit trigger) write several messages and make them durable
-- once: as one COMMIT would, under the caller's synchronous_commit (ext/emit.cc).
CREATE FUNCTION atx._emit_batch_begin() RETURNS void
AS 'MODULE_PATHNAME', 'atx_emit_batch_begin' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION atx._emit_batch_end() RETURNS void
AS 'MODULE_PATHNAME', 'atx_emit_batch_end' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION atx._emit_batch_begin() IS 'internal: defer the durability wait of the emits that follow';
COMMENT ON FUNCTION atx._emit_batch_end() IS 'internal: make the deferred emits durable (flush, synchronous standbys)';

-- ===========================================================================
-- The apply path (issues 11-14; docs/design.md): messages named by their WAL
-- LSN and read back from this server's WAL; atx.applied records every handled
-- message in the transaction that handles it; no replication origins.
-- ===========================================================================

DROP TRIGGER exec_dead_lettered ON atx.dead_letter;
DROP FUNCTION atx._exec_dead_lettered();
DROP FUNCTION atx.apply_message(bytea);
DROP FUNCTION atx.apply(bytea);
DROP FUNCTION atx.ensure_apply_origin();

-- The applier role may no longer set up a replication origin (it could tag records as
-- pg_atx's), nor write the tables whose rows the server trusts.
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text) FROM atx_applier;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_reset() FROM atx_applier;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_xact_setup(pg_lsn, timestamptz) FROM atx_applier;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_progress(text, boolean) FROM atx_applier;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_create(text) FROM atx_applier;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_oid(text) FROM atx_applier;
REVOKE INSERT ON atx.idempotency_key, atx.dead_letter FROM atx_applier;
REVOKE USAGE ON SEQUENCE atx.dead_letter_id_seq FROM atx_applier;

-- Idempotency keys belong to a role: another role's key never suppresses a message. Keys
-- recorded by 0.1 (role 0) keep suppressing the key for every role, as they did.
ALTER TABLE atx.idempotency_key ADD COLUMN role_oid oid NOT NULL DEFAULT 0;
ALTER TABLE atx.idempotency_key DROP CONSTRAINT idempotency_key_pkey;
ALTER TABLE atx.idempotency_key ADD PRIMARY KEY (role_oid, key);
ALTER TABLE atx.idempotency_key ALTER COLUMN role_oid DROP DEFAULT;
COMMENT ON COLUMN atx.idempotency_key.role_oid IS 'the role whose key it is; 0: recorded by pg_atx 0.1, any role';

-- Dead letters: who called, the error's detail and hint; each role reads its own.
ALTER TABLE atx.dead_letter ADD COLUMN caller_session_user name;
ALTER TABLE atx.dead_letter ADD COLUMN detail text;
ALTER TABLE atx.dead_letter ADD COLUMN hint text;
ALTER TABLE atx.dead_letter ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_messages ON atx.dead_letter FOR SELECT
    USING (caller_role_oid OPERATOR(pg_catalog.=)
           (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER));
CREATE POLICY applier_reads_all ON atx.dead_letter FOR SELECT TO atx_applier USING (true);
GRANT SELECT ON atx.dead_letter TO PUBLIC;
COMMENT ON TABLE atx.dead_letter IS
    'messages that could not be applied; each role sees its own (row-level security); NOTIFY atx_dead_letter with the message id';

-- Every handled message: applied, duplicate (its key), dead (dead-lettered), in the transaction
-- that handled it. A message id found here is never applied again; records below the horizon
-- are pruned (atx.prune) and such messages are refused as handled.
CREATE TABLE atx.applied (
    message_id uuid PRIMARY KEY,
    lsn pg_lsn NOT NULL,
    status text NOT NULL CHECK (status IN ('applied', 'duplicate', 'dead', 'started')),
    handled_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    outcome jsonb   -- what a waiting atx_exec was (or is to be) told
);
CREATE INDEX applied_lsn ON atx.applied USING brin (lsn);
COMMENT ON TABLE atx.applied IS 'pg_atx messages handled and not yet below atx.apply_horizon (exactly once)';

CREATE TABLE atx.apply_horizon (
    lsn pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    one boolean PRIMARY KEY DEFAULT true CHECK (one)
);
COMMENT ON TABLE atx.apply_horizon IS 'every pg_atx message starting before lsn was handled (the slot confirmed it)';
-- 0.1 kept its progress in the replication origin pg_atx_apply_<database oid>: whatever it
-- applied is handled.
DO $$
DECLARE
    origin text := 'pg_atx_apply_' || (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database());
    progress pg_lsn;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = origin) THEN
        progress := pg_catalog.pg_replication_origin_progress(origin, true);
    END IF;
    INSERT INTO atx.apply_horizon (lsn) VALUES (COALESCE(progress, '0/0'));
END
$$;

-- The HMAC key (docs/security.md) is made here, by CREATE EXTENSION, if the cluster has none yet
-- (in the data directory, or where atx.key_file says); no backend makes one later by itself.
CREATE FUNCTION atx._ensure_key() RETURNS void
AS 'MODULE_PATHNAME', 'atx_ensure_key'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION atx._ensure_key() FROM PUBLIC;
COMMENT ON FUNCTION atx._ensure_key() IS 'internal: read the HMAC key; CREATE EXTENSION creates it if missing';
SELECT atx._ensure_key();

CREATE FUNCTION atx.slot_name()
RETURNS name
AS 'MODULE_PATHNAME', 'atx_slot_name_sql'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION atx.slot_name() IS 'the replication slot of this database: pg_atx_<database oid>';

-- PostgreSQL 17 and later: a failover slot, synchronised to standbys.
CREATE OR REPLACE FUNCTION atx.ensure_slot()
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

-- The apply entry points below are SECURITY DEFINER: they read the WAL, write atx.applied,
-- atx.dead_letter and atx.idempotency_key, none of which their callers (atx_applier members) may
-- touch themselves, and they run each message as its caller's role. Each pins its search_path
-- (SET clause, and again inside, in ext/apply_batch.cc); what a message runs gets the caller's
-- own settings back in a nested GUC level.
CREATE FUNCTION atx.apply_batch(lsns pg_lsn[], attempts int[], first_failed timestamptz[],
    max_attempts int, timeout_ms int, wake_at_commit boolean,
    OUT lsn pg_lsn, OUT message_id uuid, OUT status text, OUT sqlstate text, OUT error text,
    OUT failure text, OUT command text, OUT rows bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'atx_apply_batch'
LANGUAGE C VOLATILE SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean) IS
    'apply the pg_atx messages starting at these LSNs, in order, each once (what atx-applier calls)';

CREATE FUNCTION atx.apply(lsn pg_lsn, OUT message_id uuid, OUT status text, OUT command text, OUT rows bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'atx_apply_one'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.apply(pg_lsn) IS 'apply one pg_atx message by hand; raises its error';

CREATE FUNCTION atx.dead_letter_message(lsn pg_lsn, sqlstate text, error text, attempts int, first_failed timestamptz)
RETURNS uuid
AS 'MODULE_PATHNAME', 'atx_dead_letter_message'
LANGUAGE C VOLATILE SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.dead_letter_message(pg_lsn, text, text, int, timestamptz) IS
    'dead-letter the pg_atx message at lsn without running it (NULL: it was handled before)';

CREATE FUNCTION atx.wake(ids uuid[])
RETURNS int
AS 'MODULE_PATHNAME', 'atx_wake'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.wake(uuid[]) IS 'hand waiting atx_exec callers the stored outcomes of these messages';

CREATE FUNCTION atx.prune()
RETURNS pg_lsn
AS 'MODULE_PATHNAME', 'atx_prune'
LANGUAGE C VOLATILE SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.prune() IS 'move atx.apply_horizon to the slot''s confirmed position and forget older records';

CREATE FUNCTION atx.unapplied(lsns pg_lsn[])
RETURNS SETOF pg_lsn
AS 'MODULE_PATHNAME', 'atx_unapplied'
LANGUAGE C STABLE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.unapplied(pg_lsn[]) IS 'the LSNs among these of which this server has no handled record';

CREATE FUNCTION atx.message_at(lsn pg_lsn)
RETURNS bytea
AS 'MODULE_PATHNAME', 'atx_message_at'
LANGUAGE C STABLE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.message_at(pg_lsn) IS 'the payload of the pg_atx message at lsn, read from the WAL';

CREATE FUNCTION atx.verify_payload(payload bytea)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'atx_verify_payload'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION atx.verify_payload(bytea) IS 'decode and authenticate a payload without running it';

CREATE FUNCTION atx.retry_dead_letter(id bigint, OUT message_id uuid, OUT status text, OUT sqlstate text,
    OUT error text)
RETURNS record
AS 'MODULE_PATHNAME', 'atx_retry_dead_letter'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.retry_dead_letter(bigint) IS
    'run a dead letter''s message again: applied (the dead letter goes), already (it was applied before: not run, the dead letter goes) or failed (it stays, one more attempt)';

-- atx.current_message() gains the session user, the nesting depth and the parent.
DROP FUNCTION atx.current_message();
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

REVOKE ALL ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.apply(pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.dead_letter_message(pg_lsn, text, text, int, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.wake(uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.prune() FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.unapplied(pg_lsn[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.message_at(pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.verify_payload(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.retry_dead_letter(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.apply(pg_lsn) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.dead_letter_message(pg_lsn, text, text, int, timestamptz) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.wake(uuid[]) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.prune() TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.unapplied(pg_lsn[]) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.message_at(pg_lsn) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.retry_dead_letter(bigint) TO atx_applier;
GRANT SELECT ON atx.applied, atx.apply_horizon TO atx_applier;
-- The applier creates the slot of a database if it is missing (it needs REPLICATION too).
GRANT EXECUTE ON FUNCTION atx.ensure_slot() TO atx_applier;

-- Messages that cannot run inside a transaction block run as a top-level statement of a
-- background worker connected as their caller (ext/nonatomic.cc): started, then applied or
-- dead-lettered, never run twice (a started one is in doubt: 40003).
CREATE PROCEDURE atx.run_nonatomic(lsn pg_lsn, attempts int, first_failed timestamptz, timeout_ms int,
    INOUT status text DEFAULT NULL, INOUT sqlstate text DEFAULT NULL, INOUT error text DEFAULT NULL,
    INOUT command text DEFAULT NULL)
AS 'MODULE_PATHNAME', 'atx_run_nonatomic'
LANGUAGE C;
COMMENT ON PROCEDURE atx.run_nonatomic(pg_lsn, int, timestamptz, int, text, text, text, text) IS
    'run the pg_atx message at lsn as a top-level statement of a session of its caller (CALL it at top level)';
REVOKE ALL ON PROCEDURE atx.run_nonatomic(pg_lsn, int, timestamptz, int, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE atx.run_nonatomic(pg_lsn, int, timestamptz, int, text, text, text, text) TO atx_applier;
