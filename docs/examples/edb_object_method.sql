-- EDB's autonomous object type method (insert_dept_typ.insert_dept), rewritten with pg_atx.
--
-- Original: the EDB Postgres Advanced Server documentation of PRAGMA AUTONOMOUS_TRANSACTION,
-- "Autonomous transaction object type method":
--
--   CREATE OR REPLACE TYPE insert_dept_typ AS OBJECT (
--       deptno          NUMBER(2),
--       dname           VARCHAR2(14),
--       loc             VARCHAR2(13),
--       MEMBER PROCEDURE insert_dept
--   );
--   CREATE OR REPLACE TYPE BODY insert_dept_typ AS
--       MEMBER PROCEDURE insert_dept
--       IS
--           PRAGMA AUTONOMOUS_TRANSACTION;
--       BEGIN
--           INSERT INTO dept VALUES (SELF.deptno,SELF.dname,SELF.loc);
--           COMMIT;
--       END;
--   END;
--
--   BEGIN;
--   DECLARE
--       v_dept          INSERT_DEPT_TYP :=
--                         insert_dept_typ(60,'FINANCE','CHICAGO');
--   BEGIN
--       INSERT INTO dept VALUES (50,'HR','DENVER');
--       v_dept.insert_dept;
--       ROLLBACK;
--   END;
--
-- Department 60, inserted by the autonomous method, stays; 50 is rolled back.
--
-- How it maps: PostgreSQL has composite types but no methods. The object type becomes a composite
-- type, the member procedure a procedure whose first parameter is the object (SELF), and the call
-- v_dept.insert_dept becomes CALL insert_dept(v_dept). The autonomous body is ora2pg's _atx half,
-- unchanged, COMMIT included; insert_dept runs it with atx_exec, passing the object as a bound
-- parameter of its composite type (no quoting, no text). Its COMMIT makes the message run
-- non-atomically (a top-level CALL of a background worker connected as the caller; before
-- PostgreSQL 17 the caller's role needs LOGIN).
--
-- Differs from EDB: the leading BEGIN; is dropped. A PostgreSQL DO block inside a transaction
-- block cannot ROLLBACK (2D000, see edb_autonomous_dept.sql, 1c); run on its own, the DO block is
-- a transaction of its own whose ROLLBACK undoes 50, as EDB's does.
--
-- Needs shared_preload_libraries = 'pg_atx' (atx_exec) and atx-applier running for the database.
-- Run: psql -v ON_ERROR_STOP=1 -f docs/examples/edb_object_method.sql
-- Checked by tests/integration/examples.sh. See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_edb_method CASCADE;
CREATE SCHEMA ex_edb_method;
SET search_path = ex_edb_method, public;
SET atx.exec_timeout = '10s';   -- the bounded wait for atx-applier

CREATE TABLE dept (deptno numeric(2) PRIMARY KEY, dname varchar(14), loc varchar(13));
INSERT INTO dept VALUES (10, 'ACCOUNTING', 'NEW YORK'), (20, 'RESEARCH', 'DALLAS'),
                        (30, 'SALES', 'CHICAGO'), (40, 'OPERATIONS', 'BOSTON');

CREATE TYPE insert_dept_typ AS (
    deptno          numeric(2),
    dname           varchar(14),
    loc             varchar(13)
);

-- The method's body, as EDB writes it.
CREATE PROCEDURE insert_dept_atx(self insert_dept_typ)
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO dept VALUES (self.deptno, self.dname, self.loc);
    COMMIT;
END
$$;

-- The method: runs its body autonomously and waits for it, as EDB's caller does.
CREATE PROCEDURE insert_dept(self insert_dept_typ)
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM atx_exec('CALL insert_dept_atx($1)', self);
END
$$;

DO $$
DECLARE
    v_dept          insert_dept_typ :=
                      ROW(60,'FINANCE','CHICAGO');
BEGIN
    INSERT INTO dept VALUES (50,'HR','DENVER');
    CALL insert_dept(v_dept);
    ROLLBACK;
END
$$;

SELECT * FROM dept ORDER BY 1;

DO $$
BEGIN
    ASSERT (SELECT string_agg(deptno || ' ' || dname || ' ' || loc, ', ' ORDER BY deptno) FROM dept)
           = '10 ACCOUNTING NEW YORK, 20 RESEARCH DALLAS, 30 SALES CHICAGO, 40 OPERATIONS BOSTON, 60 FINANCE CHICAGO',
           format('dept is %s', (SELECT string_agg(deptno::text, ',' ORDER BY deptno) FROM dept));
END
$$;
-------------------------------------------------------------------------------
-- Second form: EDB's method body as it is, made autonomous with one statement.
--
-- The member procedure keeps EDB's body, COMMIT included, and its name; atx.make_autonomous
-- turns every call of it into an autonomous transaction that the caller waits for (the body
-- runs as the caller, through atx-applier; its COMMIT makes it a top-level CALL of its own).
-------------------------------------------------------------------------------
DELETE FROM dept WHERE deptno >= 50;
DROP PROCEDURE insert_dept(insert_dept_typ);
CREATE PROCEDURE insert_dept(self insert_dept_typ)
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO dept VALUES (self.deptno, self.dname, self.loc);
    COMMIT;
END
$$;
SELECT atx.make_autonomous('insert_dept(insert_dept_typ)');

DO $$
DECLARE
    v_dept          insert_dept_typ :=
                      ROW(60,'FINANCE','CHICAGO');
BEGIN
    INSERT INTO dept VALUES (50,'HR','DENVER');
    CALL insert_dept(v_dept);
    ROLLBACK;
END
$$;

DO $$
BEGIN
    ASSERT (SELECT string_agg(deptno || ' ' || dname || ' ' || loc, ', ' ORDER BY deptno) FROM dept)
           = '10 ACCOUNTING NEW YORK, 20 RESEARCH DALLAS, 30 SALES CHICAGO, 40 OPERATIONS BOSTON, 60 FINANCE CHICAGO',
           format('make_autonomous: dept is %s', (SELECT string_agg(deptno::text, ',' ORDER BY deptno) FROM dept));
END
$$;
SELECT 'edb_object_method with make_autonomous: ok' AS result;
SELECT 'edb_object_method: ok' AS result;
