-- pg_durable's audit example (row-level security keyed on a custom setting), rewritten with pg_atx.
--
-- Original scenario (pg_durable, which runs autonomous work on a loopback connection of its own):
-- a multi-tenant application sets a custom setting, app.tenant, in its session; every table,
-- the audit log included, has a row-level security policy that compares the row's tenant with
-- current_setting('app.tenant'); an audit row is written autonomously, so it survives the
-- business transaction's ROLLBACK. The autonomous work runs in another session, so it only works
-- if app.tenant is there too.
--
-- How it maps: the audit INSERT is the statement of an atx_log message (atx_exec where the caller
-- wants to know at once). Every setting the caller's session changed from its default is carried
-- with the message, custom placeholders such as app.tenant included (a short deny list, such as
-- role and session_authorization, is never carried): nothing to configure, atx.capture_gucs stays
-- empty. The statement runs as the caller's role, so the policy applies to it as to the caller:
--   * the audit row gets the caller's tenant (a column DEFAULT reading the setting);
--   * a tenant cannot write a row for another tenant: atx_exec raises the policy's 42501 in the
--     caller, atx_log's message is dead-lettered with 42501 where the caller's role reads it;
--   * a tenant cannot change another tenant's rows: they are invisible to the statement too.
--
-- The role ex_tenant_app (the application's; no LOGIN needed) is created once and kept.
-- Needs shared_preload_libraries = 'pg_atx' (atx_exec) and atx-applier running for the database.
-- Run as a superuser: psql -v ON_ERROR_STOP=1 -f docs/examples/pg_durable_tenant_audit.sql
-- Checked by tests/integration/examples.sh. See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_tenant CASCADE;
CREATE SCHEMA ex_tenant;
DO $$
BEGIN
    CREATE ROLE ex_tenant_app NOLOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA ex_tenant TO ex_tenant_app;

CREATE TABLE ex_tenant.invoice (
    id int PRIMARY KEY,
    tenant text NOT NULL DEFAULT current_setting('app.tenant'),
    amount numeric NOT NULL
);
CREATE TABLE ex_tenant.audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant text NOT NULL DEFAULT current_setting('app.tenant'),
    at timestamptz NOT NULL DEFAULT (atx.current_message()).emitted_at,
    who name NOT NULL DEFAULT current_user,
    action text NOT NULL,
    detail text
);
-- The application's tenant isolation, the same policy on every table.
ALTER TABLE ex_tenant.invoice ENABLE ROW LEVEL SECURITY;
ALTER TABLE ex_tenant.audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON ex_tenant.invoice
    USING (tenant = current_setting('app.tenant', true))
    WITH CHECK (tenant = current_setting('app.tenant', true));
CREATE POLICY tenant_rows ON ex_tenant.audit_log
    USING (tenant = current_setting('app.tenant', true))
    WITH CHECK (tenant = current_setting('app.tenant', true));
GRANT SELECT, INSERT, UPDATE ON ex_tenant.invoice, ex_tenant.audit_log TO ex_tenant_app;

-- The audit call: atx_log, fire and forget.
CREATE FUNCTION ex_tenant.audit(p_action text, p_detail text)
RETURNS uuid
LANGUAGE sql
AS $$
    SELECT atx_log('INSERT INTO ex_tenant.audit_log (action, detail) VALUES ($1, $2)', p_action, p_detail);
$$;

-------------------------------------------------------------------------------
-- The application: tenant acme creates an invoice, audits it, and rolls back; tenant globex
-- does the same and commits. No pg_atx setting anywhere.
-------------------------------------------------------------------------------
SET ROLE ex_tenant_app;
SET atx.exec_timeout = '10s';

SET app.tenant = 'acme';
BEGIN;
INSERT INTO ex_tenant.invoice (id, amount) VALUES (1, 100);
SELECT ex_tenant.audit('invoice created', 'invoice 1, 100') IS NOT NULL AS audited;
ROLLBACK;   -- the invoice is gone, the audit row is written anyway, for acme

SET app.tenant = 'globex';
BEGIN;
SELECT set_config('app.tenant', 'globex', true);   -- the per-transaction form works the same
INSERT INTO ex_tenant.invoice (id, amount) VALUES (2, 250);
SELECT ex_tenant.audit('invoice created', 'invoice 2, 250') IS NOT NULL AS audited;
COMMIT;

-------------------------------------------------------------------------------
-- The policy at work: acme tries to write for globex and to change globex's rows.
-------------------------------------------------------------------------------
SET app.tenant = 'acme';
DO $$
DECLARE
    r jsonb;
BEGIN
    -- Waiting form: the policy's error is raised in the caller.
    BEGIN
        PERFORM atx_exec('INSERT INTO ex_tenant.audit_log (tenant, action) VALUES ($1, $2)', 'globex', 'forged');
        RAISE EXCEPTION 'a row for another tenant was written';
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'refused: %', SQLERRM;
    END;
    -- Another tenant's rows are invisible to the autonomous statement: nothing to update.
    r := atx_exec('UPDATE ex_tenant.audit_log SET detail = $1 WHERE tenant = $2', 'tampered', 'globex');
    ASSERT (r ->> 'rows')::int = 0, format('globex rows changed by acme: %s', r);
END
$$;
-- Fire and forget: dead-lettered with 42501, readable by the role that emitted it.
SELECT atx_log('INSERT INTO ex_tenant.audit_log (tenant, action) VALUES ($1, $2)', 'globex', 'forged too')
    AS forged_id \gset
SELECT set_config('ex_tenant.forged_id', :'forged_id', false) IS NOT NULL AS kept;

DO $$
BEGIN
    FOR i IN 1..100 LOOP   -- wait up to 10 s for atx-applier
        EXIT WHEN EXISTS (SELECT 1 FROM atx.dead_letter WHERE message_id = current_setting('ex_tenant.forged_id')::uuid)
              AND EXISTS (SELECT 1 FROM ex_tenant.audit_log);
        PERFORM pg_sleep(0.1);
    END LOOP;
    -- What acme sees: its own audit row, and its own dead letter.
    ASSERT (SELECT string_agg(tenant || ' ' || action || ' ' || detail || ' ' || who, ', ') FROM ex_tenant.audit_log)
           = 'acme invoice created invoice 1, 100 ex_tenant_app', 'acme sees its own audit row only';
    ASSERT (SELECT sqlstate || ' ' || error FROM atx.dead_letter
             WHERE message_id = current_setting('ex_tenant.forged_id')::uuid)
           = '42501 new row violates row-level security policy for table "audit_log"',
           'the forged row is dead-lettered with the policy''s error';
    ASSERT (SELECT count(*) FROM ex_tenant.invoice) = 0, 'acme''s invoice was rolled back; globex''s is hidden';
END
$$;

SET app.tenant = 'globex';
DO $$
BEGIN
    ASSERT (SELECT string_agg(tenant || ' ' || action || ' ' || detail, ', ') FROM ex_tenant.audit_log)
           = 'globex invoice created invoice 2, 250', 'globex sees its own audit row, untampered';
END
$$;
RESET ROLE;
RESET app.tenant;

-- The whole table, as its owner (no policy applies): one row per tenant, nothing forged.
DO $$
BEGIN
    ASSERT (SELECT string_agg(tenant || ' ' || detail, ', ' ORDER BY tenant) FROM ex_tenant.audit_log)
           = 'acme invoice 1, 100, globex invoice 2, 250', 'one audit row per tenant, nothing forged';
    ASSERT current_setting('atx.capture_gucs') = '', 'no setting configured for the messages';
END
$$;
SELECT 'pg_durable_tenant_audit: ok' AS result;
