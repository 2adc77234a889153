
-- ===========================================================================
-- Audit trail and caller outcome (docs/audit.md)
-- ===========================================================================

-- Outcome of a caller's (top-level) transaction from its 64-bit id:
-- 'committed', 'aborted', 'in progress', 'no transaction' (xid NULL), or NULL
-- when the server cannot tell any more (older than the commit-log horizon,
-- or not an xid of this cluster: pg_xact_status would raise for a future one).
-- Plain SQL without SET so that it can be inlined into views.
CREATE FUNCTION atx.xact_outcome(caller_xid xid8)
RETURNS text
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$
SELECT CASE
    WHEN $1 IS NULL THEN 'no transaction'
    WHEN $1 OPERATOR(pg_catalog.>=) pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot()) THEN NULL
    ELSE pg_catalog.pg_xact_status($1)
END
$$;
COMMENT ON FUNCTION atx.xact_outcome(xid8) IS
    'committed | aborted | in progress | no transaction (NULL xid) | NULL (too old or unknown xid)';
GRANT EXECUTE ON FUNCTION atx.xact_outcome(xid8) TO PUBLIC;

-- The outcome to show for a row: the persisted final value, else the live one,
-- else 'unknown'.
CREATE FUNCTION atx.caller_outcome(caller_xid xid8, persisted text)
RETURNS text
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$
SELECT COALESCE($2, atx.xact_outcome($1), 'unknown')
$$;
COMMENT ON FUNCTION atx.caller_outcome(xid8, text) IS
    'persisted outcome if final, else atx.xact_outcome(caller_xid), else unknown';
GRANT EXECUTE ON FUNCTION atx.caller_outcome(xid8, text) TO PUBLIC;

-- The default audit table. A table of your own passed to atx.enable_audit
-- needs the same columns: CREATE TABLE s.t (LIKE atx.audit_log INCLUDING DEFAULTS).
CREATE TABLE atx.audit_log (
    id bigserial PRIMARY KEY,
    table_oid oid,
    table_name text NOT NULL,
    operation text NOT NULL,         -- INSERT, UPDATE, DELETE, TRUNCATE
    old_row jsonb,                   -- UPDATE, DELETE (excluded columns removed, masked ones '***')
    new_row jsonb,                   -- INSERT, UPDATE
    caller_role name NOT NULL,       -- current_user of the change (from the signed message)
    caller_session_user name,        -- the caller's session_user (a column named session_user
                                     -- would be shadowed by the SQL function of that name)
    application_name text,
    client_addr inet,                -- NULL over a unix socket
    caller_xid xid8,                 -- the caller's top-level transaction (from the signed message)
    emitted_at timestamptz NOT NULL, -- when the trigger wrote the message
    applied_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    message_id uuid NOT NULL,
    outcome text                     -- persisted final caller outcome; NULL: not yet known
        CHECK (outcome IN ('committed', 'aborted', 'no transaction'))
);
CREATE INDEX audit_log_unresolved ON atx.audit_log (id) WHERE outcome IS NULL;
CREATE INDEX audit_log_caller_xid ON atx.audit_log (caller_xid);
CREATE INDEX audit_log_message_id ON atx.audit_log (message_id);
COMMENT ON TABLE atx.audit_log IS
    'audit rows written through pg_atx by atx.audit_trigger(); they survive the caller''s ROLLBACK';

-- Which tables are audited, into which table, with which columns left out or masked.
CREATE TABLE atx.audit_config (
    target regclass PRIMARY KEY,
    audit_table regclass NOT NULL,
    exclude_columns text[] NOT NULL DEFAULT '{}',
    mask_columns text[] NOT NULL DEFAULT '{}',
    level text NOT NULL CHECK (level IN ('statement', 'row')),
    enabled_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Audit data must survive pg_dump / pg_restore.
SELECT pg_catalog.pg_extension_config_dump('atx.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('atx.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('atx.audit_config', '');

-- Audit rows with the caller's outcome. "Changes that were attempted and
-- rolled back": SELECT * FROM atx.audit_outcome WHERE caller_outcome = 'aborted'.
CREATE VIEW atx.audit_outcome AS
SELECT a.*, atx.caller_outcome(a.caller_xid, a.outcome) AS caller_outcome
  FROM atx.audit_log a;
COMMENT ON VIEW atx.audit_outcome IS
    'atx.audit_log with caller_outcome: committed | aborted | in progress | no transaction | unknown';

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

-- Runs inside the applied message (as the caller, through SECURITY DEFINER as
-- the extension owner): inserts the row images of one message into the audit
-- table configured for the target. What cannot be forged comes from the
-- signed message (caller role, caller xid, emit time, message id); the call is
-- refused outside an apply, for a table that is not audited, and for a caller
-- without the privilege the operation needs on that table.
CREATE FUNCTION atx._audit_insert(target oid, op text, rows jsonb,
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
REVOKE ALL ON FUNCTION atx._audit_insert(oid, text, jsonb, name, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx._audit_insert(oid, text, jsonb, name, text, inet) TO PUBLIC;
COMMENT ON FUNCTION atx._audit_insert(oid, text, jsonb, name, text, inet) IS
    'internal: the statement of an audit message; refused outside an apply';

-- The audit trigger. TG_ARGV[0]: columns to leave out, TG_ARGV[1]: columns to
-- mask (text[] literals). Statement level (the default of atx.enable_audit):
-- AFTER INSERT / UPDATE / DELETE with transition tables named atx_old and
-- atx_new, one message per chunk of at most 1000 rows and at most half of
-- atx.max_payload_size (a larger single row travels alone); AFTER TRUNCATE
-- without. Row level: AFTER ... FOR EACH ROW, one message (one WAL flush) per
-- row.
CREATE FUNCTION atx.audit_trigger()
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
COMMENT ON FUNCTION atx.audit_trigger() IS
    'audit trigger writing row images through atx_log; args: exclude_columns text[], mask_columns text[]; see atx.enable_audit';

-- Audits target into audit_table (default atx.audit_log): records the
-- configuration and (re)creates the triggers atx_audit_insert / _update /
-- _delete / _truncate (statement level, the default) or atx_audit_row +
-- atx_audit_truncate (level => 'row').
CREATE FUNCTION atx.enable_audit(target regclass, audit_table regclass DEFAULT NULL,
    exclude_columns text[] DEFAULT '{}', mask_columns text[] DEFAULT '{}', level text DEFAULT 'statement')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass := COALESCE(audit_table, 'atx.audit_log'::regclass);
    relkind "char";
    missing text;
    args text;
BEGIN
    IF level NOT IN ('statement', 'row') THEN
        RAISE EXCEPTION 'level must be ''statement'' or ''row'', not %', quote_nullable(level)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    exclude_columns := COALESCE(exclude_columns, '{}');
    mask_columns := COALESCE(mask_columns, '{}');
    SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = target;
    IF relkind NOT IN ('r', 'p') AND NOT (relkind = 'f' AND level = 'row') THEN
        RAISE EXCEPTION '% cannot be audited (a table, or with level => ''row'' a foreign table)', target
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT string_agg(quote_ident(c), ', ') INTO missing
      FROM unnest(exclude_columns || mask_columns) c
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = target AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'table % has no column(s) %', target, missing USING ERRCODE = 'undefined_column';
    END IF;
    IF exclude_columns && mask_columns THEN
        RAISE EXCEPTION 'a column cannot be both excluded and masked' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(quote_ident(c), ', ') INTO missing
      FROM unnest(ARRAY['table_oid', 'table_name', 'operation', 'old_row', 'new_row', 'caller_role',
                        'caller_session_user', 'application_name', 'client_addr', 'caller_xid', 'emitted_at',
                        'message_id', 'outcome']) c
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = tbl AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'audit table % lacks column(s) %', tbl, missing
            USING ERRCODE = 'undefined_column',
                  HINT = 'Create it with CREATE TABLE ... (LIKE atx.audit_log INCLUDING DEFAULTS).';
    END IF;

    PERFORM atx.disable_audit(target);
    INSERT INTO atx.audit_config (target, audit_table, exclude_columns, mask_columns, level)
    VALUES (target, tbl, exclude_columns, mask_columns, level);

    args := format('%L, %L', exclude_columns, mask_columns);
    IF level = 'row' THEN
        EXECUTE format('CREATE TRIGGER atx_audit_row AFTER INSERT OR UPDATE OR DELETE ON %s'
                       ' FOR EACH ROW EXECUTE FUNCTION atx.audit_trigger(%s)', target, args);
    ELSE
        -- Transition tables need one trigger per event.
        EXECUTE format('CREATE TRIGGER atx_audit_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS atx_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION atx.audit_trigger(%s)', target, args);
        EXECUTE format('CREATE TRIGGER atx_audit_update AFTER UPDATE ON %s'
                       ' REFERENCING OLD TABLE AS atx_old NEW TABLE AS atx_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION atx.audit_trigger(%s)', target, args);
        EXECUTE format('CREATE TRIGGER atx_audit_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS atx_old'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION atx.audit_trigger(%s)', target, args);
    END IF;
    IF relkind <> 'f' THEN
        EXECUTE format('CREATE TRIGGER atx_audit_truncate AFTER TRUNCATE ON %s'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION atx.audit_trigger(%s)', target, args);
    END IF;
END
$$;
COMMENT ON FUNCTION atx.enable_audit(regclass, regclass, text[], text[], text) IS
    'audit INSERT/UPDATE/DELETE/TRUNCATE on target through pg_atx into audit_table (default atx.audit_log)';

-- Drops the audit triggers of target and its configuration (the audit rows stay).
CREATE FUNCTION atx.disable_audit(target regclass)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t name;
    found_any boolean := false;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger
              WHERE tgrelid = target AND NOT tgisinternal
                AND tgfoid = 'atx.audit_trigger()'::regprocedure LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, target);
        found_any := true;
    END LOOP;
    DELETE FROM atx.audit_config c WHERE c.target = disable_audit.target;
    RETURN found_any OR FOUND;
END
$$;
COMMENT ON FUNCTION atx.disable_audit(regclass) IS
    'drop the pg_atx audit triggers of a table and its audit configuration; audit rows are kept';

-- The periodic job: persists the final outcome (committed / aborted / no
-- transaction) of rows whose outcome is still unknown, so that it stays known
-- after the commit log is truncated. NULL: every audit table in
-- atx.audit_config (plus atx.audit_log). Run as the audit table's owner
-- (needs UPDATE on it). Returns the number of rows resolved.
CREATE FUNCTION atx.resolve_outcomes(audit_table regclass DEFAULT NULL)
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
COMMENT ON FUNCTION atx.resolve_outcomes(regclass) IS
    'persist the final caller outcome of audit rows still unresolved; run periodically (returns rows resolved)';

REVOKE ALL ON FUNCTION atx.enable_audit(regclass, regclass, text[], text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.disable_audit(regclass) FROM PUBLIC;
-- SECURITY INVOKER: it updates only tables the caller may update.
GRANT EXECUTE ON FUNCTION atx.resolve_outcomes(regclass) TO PUBLIC;
REVOKE ALL ON FUNCTION atx.audit_trigger() FROM PUBLIC;

