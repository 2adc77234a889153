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

