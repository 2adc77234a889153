-- The plan cache of the apply path is keyed by statement text, parameter types, role and
-- search_path, and follows catalog invalidations: one statement text applied as two roles, with
-- row-level security and different search_paths, and again after a grant is revoked, must
-- behave each time as it would in that role's own session.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;
CREATE SCHEMA pc_a;
CREATE SCHEMA pc_b;
CREATE TABLE pc_a.t(owner name DEFAULT current_user, v int);
CREATE TABLE pc_b.t(owner name DEFAULT current_user, v int);
ALTER TABLE pc_a.t ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON pc_a.t FOR ALL USING (owner = current_user) WITH CHECK (owner = current_user);
GRANT USAGE ON SCHEMA pc_a, pc_b TO regress_atx_user, regress_atx_other;
GRANT SELECT, INSERT, UPDATE ON pc_a.t, pc_b.t TO regress_atx_user, regress_atx_other;
INSERT INTO pc_a.t VALUES ('regress_atx_user', 1), ('regress_atx_other', 2);
-- One text; the schema it names comes from each caller's search_path.
SET ROLE regress_atx_user;
SET search_path = pc_a;
SELECT public.atx_log('UPDATE t SET v = v + 10') IS NOT NULL AS emitted;
SET search_path = pc_b;
SELECT public.atx_log('INSERT INTO t(v) VALUES (100)') IS NOT NULL AS emitted;
RESET ROLE;
SET ROLE regress_atx_other;
SET search_path = pc_a;
SELECT public.atx_log('UPDATE t SET v = v + 10') IS NOT NULL AS emitted;
RESET ROLE;
RESET search_path;
SELECT n, a.status, a.command, a.rows FROM regress_take() t, LATERAL regress_apply(t.lsn) a ORDER BY n;
-- Each UPDATE touched only its own role's row (RLS as that role), in pc_a.
SELECT owner, v FROM pc_a.t ORDER BY owner;
SELECT owner, v FROM pc_b.t ORDER BY owner;
-- The same text again after the other role lost its privilege: refused, not run from a cached plan.
REVOKE UPDATE ON pc_a.t FROM regress_atx_other;
SET ROLE regress_atx_other;
SET search_path = pc_a;
SET atx.validate = off;   -- let it reach the apply path
SELECT public.atx_log('UPDATE t SET v = v + 10') IS NOT NULL AS emitted;
RESET atx.validate;
RESET ROLE;
RESET search_path;
SELECT n, a.status, a.sqlstate FROM regress_take() t, LATERAL regress_apply(t.lsn) a ORDER BY n;
SELECT owner, v FROM pc_a.t ORDER BY owner;
DROP SCHEMA pc_a, pc_b CASCADE;
SELECT pg_drop_replication_slot(regress_slot());
