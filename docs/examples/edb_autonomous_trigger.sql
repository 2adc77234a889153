-- EDB's autonomous transaction trigger (emp_audit_trig), rewritten with pg_atx.
--
-- Original: the EDB Postgres Advanced Server documentation of PRAGMA AUTONOMOUS_TRANSACTION,
-- "Autonomous transaction trigger". A statement-level trigger on emp logs every INSERT, UPDATE
-- and DELETE into empauditlog in an autonomous transaction; the session inserts two employees,
-- sees both audit rows, rolls back, and the audit rows stay:
--
--   CREATE OR REPLACE TRIGGER emp_audit_trig
--       AFTER INSERT OR UPDATE OR DELETE ON emp
--   DECLARE
--       PRAGMA AUTONOMOUS_TRANSACTION;
--       v_action        VARCHAR2(20);
--   BEGIN
--       IF INSERTING THEN
--           v_action := 'Added employee(s)';
--       ELSIF UPDATING THEN
--           v_action := 'Updated employee(s)';
--       ELSIF DELETING THEN
--           v_action := 'Deleted employee(s)';
--       END IF;
--       INSERT INTO empauditlog VALUES (SYSDATE, USER, v_action);
--   END;
--
-- How it maps: a trigger function (FOR EACH STATEMENT, as the SPL trigger has no FOR EACH ROW)
-- whose INSERT is the statement of an atx_exec message. atx_exec, not atx_log, because EDB's
-- session sees the audit rows before its ROLLBACK: atx_exec returns once the applier committed
-- the row, so the caller's next statement sees it (READ COMMITTED).
--   SYSDATE -> (atx.current_message()).emitted_at: the time of the call, not of the apply.
--   USER    -> (atx.current_message()).caller_session_user: the caller's login, also when the
--              trigger function is SECURITY DEFINER (current_user inside is the caller's
--              current_user at the call).
--
-- Differs from EDB: each audited statement waits for one round trip through atx-applier (a
-- millisecond or so). A trigger that need not see its rows at once should use atx_log (no wait),
-- and whole-table auditing with row images is atx.enable_audit (docs/audit.md).
--
-- Needs shared_preload_libraries = 'pg_atx' (atx_exec) and atx-applier running for the database.
-- Run: psql -v ON_ERROR_STOP=1 -f docs/examples/edb_autonomous_trigger.sql
-- Checked by tests/integration/examples.sh. See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_edb_trigger CASCADE;
CREATE SCHEMA ex_edb_trigger;
SET search_path = ex_edb_trigger, public;
SET atx.exec_timeout = '10s';   -- the bounded wait for atx-applier of every audited statement

CREATE TABLE emp (
    empno numeric(4) PRIMARY KEY,
    ename varchar(10),
    job varchar(9),
    mgr numeric(4),
    hiredate timestamp(0),
    sal numeric(7,2),
    comm numeric(7,2),
    deptno numeric(2)
);

CREATE TABLE empauditlog (
    audit_date      timestamp(0),   -- Oracle's DATE has a time of day
    audit_user      varchar(20),
    audit_desc      varchar(20)
);

CREATE FUNCTION emp_audit_trig()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_action        varchar(20);
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_action := 'Added employee(s)';
    ELSIF TG_OP = 'UPDATE' THEN
        v_action := 'Updated employee(s)';
    ELSIF TG_OP = 'DELETE' THEN
        v_action := 'Deleted employee(s)';
    END IF;
    PERFORM atx_exec(
        'INSERT INTO empauditlog VALUES ((atx.current_message()).emitted_at,'
        ' (atx.current_message()).caller_session_user, $1)',
        v_action);
    RETURN NULL;
END
$$;
CREATE TRIGGER emp_audit_trig
    AFTER INSERT OR UPDATE OR DELETE ON emp
    FOR EACH STATEMENT EXECUTE FUNCTION emp_audit_trig();

-- EDB's session.
BEGIN;
INSERT INTO emp VALUES (9001,'SMITH','ANALYST',7782,LOCALTIMESTAMP(0),NULL,NULL,10);
INSERT INTO emp VALUES (9002,'JONES','CLERK',7782,LOCALTIMESTAMP(0),NULL,NULL,10);
SELECT * FROM emp WHERE empno > 9000;
SELECT TO_CHAR(AUDIT_DATE,'DD-MON-YY HH24:MI:SS') AS "audit date",
    audit_user, audit_desc FROM empauditlog ORDER BY 1 ASC;
-- Both audit rows are visible to the session before its ROLLBACK, as in EDB.
DO $$
BEGIN
    ASSERT (SELECT count(*) FROM emp WHERE empno > 9000) = 2, 'two new employees in the open transaction';
    ASSERT (SELECT count(*) FROM empauditlog) = 2, 'both audit rows seen before the ROLLBACK';
END
$$;
ROLLBACK;

SELECT * FROM emp WHERE empno > 9000;
SELECT TO_CHAR(AUDIT_DATE,'DD-MON-YY HH24:MI:SS') AS "audit date",
    audit_user, audit_desc FROM empauditlog ORDER BY 1 ASC;

DO $$
BEGIN
    ASSERT (SELECT count(*) FROM emp) = 0, 'the employees are rolled back';
    ASSERT (SELECT string_agg(audit_user || ' ' || audit_desc, ', ') FROM empauditlog)
           = session_user || ' Added employee(s), ' || session_user || ' Added employee(s)',
           'the two audit rows stay, by the session user';
    ASSERT (SELECT bool_and(audit_date BETWEEN localtimestamp(0) - interval '1 minute' AND localtimestamp(0))
              FROM empauditlog), 'dated at the call';
END
$$;
-------------------------------------------------------------------------------
-- Second form: EDB's trigger body as it is, made autonomous with one statement.
--
-- A trigger function itself cannot be made autonomous (NEW, OLD and TG_OP belong to the firing
-- statement), so the trigger keeps what only it can know (which operation fired it) and calls
-- EDB's autonomous part, unchanged, as a procedure that atx.make_autonomous makes autonomous:
-- the INSERT runs in its own transaction and the session sees the row at once, as in EDB.
-- SYSDATE becomes LOCALTIMESTAMP(0) and USER current_user (the caller's, also inside the body).
-------------------------------------------------------------------------------
TRUNCATE empauditlog;
CREATE PROCEDURE emp_audit(v_action varchar)
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO empauditlog VALUES (LOCALTIMESTAMP(0), current_user, v_action);
END
$$;
SELECT atx.make_autonomous('emp_audit(varchar)');

CREATE OR REPLACE FUNCTION emp_audit_trig()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_action        varchar(20);
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_action := 'Added employee(s)';
    ELSIF TG_OP = 'UPDATE' THEN
        v_action := 'Updated employee(s)';
    ELSIF TG_OP = 'DELETE' THEN
        v_action := 'Deleted employee(s)';
    END IF;
    CALL emp_audit(v_action);
    RETURN NULL;
END
$$;

BEGIN;
INSERT INTO emp VALUES (9001,'SMITH','ANALYST',7782,LOCALTIMESTAMP(0),NULL,NULL,10);
INSERT INTO emp VALUES (9002,'JONES','CLERK',7782,LOCALTIMESTAMP(0),NULL,NULL,10);
DO $$
BEGIN
    ASSERT (SELECT count(*) FROM empauditlog) = 2, 'make_autonomous: both audit rows seen before the ROLLBACK';
END
$$;
ROLLBACK;
DO $$
BEGIN
    ASSERT (SELECT count(*) FROM emp) = 0, 'make_autonomous: the employees are rolled back';
    ASSERT (SELECT string_agg(audit_user || ' ' || audit_desc, ', ') FROM empauditlog)
           = current_user || ' Added employee(s), ' || current_user || ' Added employee(s)',
           'make_autonomous: the audit rows stay, by the session''s user';
    ASSERT (SELECT bool_and(audit_date BETWEEN localtimestamp(0) - interval '1 minute' AND localtimestamp(0))
              FROM empauditlog), 'make_autonomous: dated at the call';
END
$$;
SELECT 'edb_autonomous_trigger with make_autonomous: ok' AS result;
SELECT 'edb_autonomous_trigger: ok' AS result;
