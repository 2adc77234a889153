-- An executed message runs as its caller: current_user, SECURITY DEFINER
-- owner, row-level security, captured GUCs; and it cannot escape.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;

CREATE TABLE who (tag text, usr name, search_path text, tz text, extra text);
GRANT INSERT ON who TO regress_atx_user, regress_atx_owner;

-- Captured search_path resolves unqualified names; TimeZone is in effect.
CREATE SCHEMA regress_s;
GRANT USAGE ON SCHEMA regress_s TO regress_atx_user;
CREATE TABLE regress_s.target (v int);
CREATE TABLE public.target (v int);
GRANT INSERT ON regress_s.target, public.target TO regress_atx_user;

SET ROLE regress_atx_user;
SET search_path = regress_s, public;
SET TimeZone = 'Asia/Tokyo';
SELECT atx_log($$INSERT INTO who VALUES ('plain', current_user, current_setting('search_path'),
                 current_setting('TimeZone'), to_char($1::timestamptz, 'HH24:MI TZH'))$$,
               '2024-01-01 00:00:00+00'::timestamptz) IS NOT NULL AS emitted;
SELECT atx_log('INSERT INTO target VALUES (1)') IS NOT NULL AS emitted;
RESET search_path;
RESET TimeZone;
-- Every setting the session changed travels, custom placeholders too (row-level security keyed
-- on app.tenant, say), without being listed anywhere.
SET work_mem = '5MB';
SET app.tenant = 'tenant-7';
SELECT atx_log($$INSERT INTO who (tag, usr, extra) VALUES ('changed settings', current_user,
                 current_setting('work_mem') || ' ' || current_setting('app.tenant'))$$) IS NOT NULL AS emitted;
RESET work_mem;
RESET app.tenant;
-- atx.capture_gucs adds parameters that travel although unchanged.
SET atx.capture_gucs = 'work_mem';
SELECT atx_log($$INSERT INTO who (tag, usr, extra) VALUES ('capture_gucs', current_user, current_setting('work_mem'))$$)
       IS NOT NULL AS emitted;
RESET atx.capture_gucs;
-- What never travels: timeouts and commit durability are the applier's.
SET statement_timeout = '1h';
SELECT atx_log($$INSERT INTO who (tag, usr, extra) VALUES ('denied settings', current_user,
                 current_setting('statement_timeout'))$$) IS NOT NULL AS emitted;
RESET statement_timeout;

-- Statements that try to leave the caller's identity.
SELECT atx_log('RESET ROLE') IS NOT NULL AS emitted;
SELECT atx_log('SET ROLE regress_atx_other') IS NOT NULL AS emitted;
SELECT atx_log('SET LOCAL ROLE regress_atx_other') IS NOT NULL AS emitted;
SELECT atx_log('SET SESSION AUTHORIZATION regress_atx_other') IS NOT NULL AS emitted;
SELECT atx_log('RESET SESSION AUTHORIZATION') IS NOT NULL AS emitted;
SELECT atx_log($$SELECT set_config('role', 'regress_atx_other', false)$$) IS NOT NULL AS emitted;
SELECT atx_log($$SELECT set_config('session_authorization', 'regress_atx_other', true)$$) IS NOT NULL AS emitted;
-- A SET inside the statement does not leak into the applier's session.
SELECT atx_log($$SELECT set_config('work_mem', '7MB', false)$$) IS NOT NULL AS emitted;
RESET ROLE;

-- SECURITY DEFINER: the message runs as the function's owner.
CREATE FUNCTION regress_secdef() RETURNS boolean LANGUAGE sql SECURITY DEFINER
AS $$ SELECT atx_log($q$INSERT INTO public.who (tag, usr) VALUES ('secdef', current_user)$q$) IS NOT NULL $$;
ALTER FUNCTION regress_secdef() OWNER TO regress_atx_owner;
SET ROLE regress_atx_user;
SELECT regress_secdef() AS emitted_via_secdef;
RESET ROLE;

-- Row-level security filters as for the caller.
CREATE TABLE rls_t (owner name, v int);
INSERT INTO rls_t VALUES ('regress_atx_user', 1), ('regress_atx_user', 2), ('regress_atx_other', 3);
ALTER TABLE rls_t ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON rls_t USING (owner = current_user);
GRANT SELECT ON rls_t TO regress_atx_user;
SET ROLE regress_atx_user;
SELECT atx_log($$INSERT INTO who (tag, usr, extra) SELECT 'rls', current_user, string_agg(v::text, ',' ORDER BY v) FROM rls_t$$)
       IS NOT NULL AS emitted;
RESET ROLE;

-- A deferred constraint trigger fires inside the switched context, as the caller.
CREATE FUNCTION regress_record_trigger() RETURNS trigger LANGUAGE plpgsql
AS $$ BEGIN INSERT INTO public.who (tag, usr) VALUES ('deferred trigger', current_user); RETURN NULL; END $$;
CREATE TABLE deferred_t (v int);
GRANT INSERT ON deferred_t TO regress_atx_user;
CREATE CONSTRAINT TRIGGER deferred_record AFTER INSERT ON deferred_t
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION regress_record_trigger();
SET ROLE regress_atx_user;
SELECT atx_log('INSERT INTO deferred_t VALUES (1)') IS NOT NULL AS emitted;
-- A statement that needs privileges the caller lacks fails at the call (the applier has them).
SELECT regress_try('SELECT atx_log(''DELETE FROM rls_t'')');
-- ... and, not validated, when it runs.
SET atx.validate = off;
SELECT atx_log('DELETE FROM rls_t') IS NOT NULL AS emitted;
RESET atx.validate;
RESET ROLE;

-- Apply everything as superuser in one transaction.
SHOW search_path;
BEGIN;
SELECT t.n, left(atx.decode(t.payload)->>'statement', 40) AS statement, a.status, a.sqlstate, a.error, a.command, a.rows
  FROM regress_take() t, LATERAL regress_apply(t.lsn) a ORDER BY t.n;
SELECT current_user = session_user AS identity_restored;
COMMIT;
SHOW search_path;
SHOW TimeZone;
SELECT current_setting('work_mem') <> '7MB' AS set_inside_did_not_leak;

SELECT * FROM who ORDER BY tag;
SELECT 'regress_s' AS schema, count(*) FROM regress_s.target UNION ALL SELECT 'public', count(*) FROM public.target;
SELECT count(*) AS rls_rows_left FROM rls_t;

SELECT pg_drop_replication_slot(regress_slot());
DROP TABLE who, regress_s.target, public.target, rls_t, deferred_t;
DROP SCHEMA regress_s;
DROP FUNCTION regress_secdef(), regress_record_trigger();
