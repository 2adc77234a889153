-- Installs pg_atx and the helpers and roles the other tests use.
CREATE EXTENSION pg_atx;
CREATE EXTENSION pgcrypto;

-- What the script created.
-- Who may execute, besides the owner (a NULL acl is the default: PUBLIC).
SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) AS args,
       CASE WHEN p.proacl IS NULL THEN 'PUBLIC (default)'
            ELSE array_to_string(ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                                         FROM aclexplode(p.proacl) a WHERE a.grantee <> p.proowner ORDER BY 1), ',')
       END AS executable_by
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.oid IN (SELECT objid FROM pg_depend
                  WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
                    AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_atx'))
 ORDER BY 1, 2, 3;
SELECT c.oid::regclass,
       array_to_string(ARRAY(SELECT a.grantee::regrole::text || ':' || a.privilege_type
                               FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner ORDER BY 1), ',') AS granted
  FROM pg_class c
 WHERE c.relnamespace = 'atx'::regnamespace AND c.relkind IN ('r', 'S') ORDER BY 1::text;
SELECT roname FROM pg_replication_origin WHERE roname = 'pg_atx';
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = 'atx_applier';
SELECT extrelocatable, extnamespace::regnamespace FROM pg_extension WHERE extname = 'pg_atx';
-- The applier role can set up no replication origin (it could tag records as atx_log's).
SELECT has_function_privilege('atx_applier', 'pg_replication_origin_session_setup(text)', 'EXECUTE') AS origin_setup,
       has_function_privilege('atx_applier', 'pg_replication_origin_xact_setup(pg_lsn, timestamptz)', 'EXECUTE') AS xact_setup;
-- ... and writes none of the tables the server trusts.
SELECT t, has_table_privilege('atx_applier', t, 'INSERT') AS ins, has_table_privilege('atx_applier', t, 'UPDATE') AS upd,
       has_table_privilege('atx_applier', t, 'DELETE') AS del
  FROM unnest(ARRAY['atx.applied', 'atx.dead_letter', 'atx.idempotency_key', 'atx.apply_horizon']) t ORDER BY t;

-- Roles used by the tests (cluster-wide; dropped by the cleanup test).
CREATE ROLE regress_atx_user;          -- emits messages
CREATE ROLE regress_atx_other;         -- somebody else
CREATE ROLE regress_atx_owner;         -- owns a SECURITY DEFINER function
CREATE ROLE regress_atx_applier IN ROLE atx_applier;   -- a non-superuser applier

-- Helpers. The slot of this database (the name is the extension's to give).
CREATE FUNCTION regress_slot() RETURNS name LANGUAGE sql AS $$ SELECT atx.slot_name() $$;
SELECT regress_slot() = ('pg_atx_' || oid)::name AS slot_named_by_oid FROM pg_database WHERE datname = current_database();

-- The text lines in the slot, with the varying parts masked (an xid of 0,
-- meaning "none", stays visible).
CREATE FUNCTION regress_peek_text() RETURNS SETOF text LANGUAGE sql
AS $$
SELECT regexp_replace(
         regexp_replace(
           replace(data, ' db=' || (SELECT oid FROM pg_database WHERE datname = current_database()) || ' ',
                   ' db=<this db> '),
           'id=[0-9a-f-]{36} start=[0-9A-F]+/[0-9A-F]+ lsn=[0-9A-F]+/[0-9A-F]+', 'id=<uuid> start=<lsn> lsn=<lsn>'),
         'xid=[1-9][0-9]*', 'xid=<xid>')
  FROM pg_logical_slot_peek_changes(regress_slot(), NULL, NULL, 'format', 'text')
$$;

-- Consumes the slot: each message's start LSN and raw payload, in order (binary format: 'M',
-- the start LSN in 8 bytes, the payload).
CREATE FUNCTION regress_take() RETURNS TABLE (n bigint, lsn pg_lsn, payload bytea) LANGUAGE sql
AS $$
SELECT row_number() OVER (),
       '0/0'::pg_lsn + ('x' || encode(substr(data, 2, 8), 'hex'))::bit(64)::bigint::numeric,
       substr(data, 10)
  FROM pg_logical_slot_get_binary_changes(regress_slot(), NULL, NULL, 'format', 'binary')
$$;

-- Applies one message as atx-applier does (one attempt, no time limit of its own).
CREATE FUNCTION regress_apply(lsn pg_lsn)
RETURNS TABLE (status text, sqlstate text, error text, failure text, command text, rows bigint) LANGUAGE sql
AS $$
SELECT status, sqlstate, error, failure, command, rows
  FROM atx.apply_batch(ARRAY[lsn], '{1}', '{NULL}', 1, 0, true, 'regress')
$$;

-- Runs a statement and shows SQLSTATE, message, detail and hint of its error.
CREATE FUNCTION regress_try(sql text) RETURNS text LANGUAGE plpgsql
AS $$
DECLARE
    st text; msg text; detail text; hint text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RETURN st || ': ' || msg || coalesce(' (detail: ' || nullif(detail, '') || ')', '')
                             || coalesce(' (hint: ' || nullif(hint, '') || ')', '');
END
$$;
GRANT EXECUTE ON FUNCTION regress_try(text) TO PUBLIC;
