-- Oracle / EDB PRAGMA AUTONOMOUS_TRANSACTION rewritten with atx_log.
--
-- Run with psql against a database with pg_atx installed and atx-applier running:
--   psql -v ON_ERROR_STOP=1 -f docs/examples/oracle_pragma_autonomous.sql
-- The checks at the end wait for the applier (up to 10 s) and raise if anything is off.
-- Checked by tests/integration/examples.sh. See docs/migrations.md.
CREATE EXTENSION IF NOT EXISTS pg_atx;
DROP SCHEMA IF EXISTS ex_oracle CASCADE;
CREATE SCHEMA ex_oracle;

CREATE TABLE ex_oracle.orders (id int PRIMARY KEY, item text, qty int);
CREATE TABLE ex_oracle.app_log (
    id bigserial PRIMARY KEY,
    logged_at timestamptz NOT NULL,
    who name NOT NULL,
    action text NOT NULL,
    detail text
);

-------------------------------------------------------------------------------
-- 1. A procedure that logs an action, whatever the caller does afterwards.
--
-- Oracle / EDB original:
--
--   CREATE OR REPLACE PROCEDURE log_action(p_action VARCHAR2, p_detail VARCHAR2) IS
--       PRAGMA AUTONOMOUS_TRANSACTION;
--   BEGIN
--       INSERT INTO app_log (logged_at, who, action, detail)
--       VALUES (SYSTIMESTAMP, USER, p_action, p_detail);
--       COMMIT;
--   END;
--
-- With pg_atx: the INSERT becomes the statement of a message. atx_log returns once the message is
-- flushed to the WAL; atx-applier runs it (as the same current_user, with the caller's settings)
-- exactly once, also when the caller rolls back. No COMMIT: the applier commits it.
-- The time is the moment of the call (the message's emit time), not the moment of the apply.
-------------------------------------------------------------------------------
CREATE PROCEDURE ex_oracle.log_action(p_action text, p_detail text)
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM atx_log(
        'INSERT INTO ex_oracle.app_log (logged_at, who, action, detail)'
        ' VALUES ((atx.current_message()).emitted_at, current_user, $1, $2)',
        p_action, p_detail);
END
$$;

-- Called from a transaction that rolls back: the order is gone, the log entry stays.
BEGIN;
INSERT INTO ex_oracle.orders VALUES (1, 'widget', 5);
CALL ex_oracle.log_action('order placed', 'order 1: 5 x widget');
ROLLBACK;

-------------------------------------------------------------------------------
-- 2. A trigger declared autonomous.
--
-- Oracle original:
--
--   CREATE OR REPLACE TRIGGER orders_audit
--   AFTER INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW
--   DECLARE
--       PRAGMA AUTONOMOUS_TRANSACTION;
--   BEGIN
--       INSERT INTO app_log (logged_at, who, action, detail)
--       VALUES (SYSTIMESTAMP, USER, 'orders ' || CASE WHEN INSERTING THEN 'INSERT'
--               WHEN UPDATING THEN 'UPDATE' ELSE 'DELETE' END, :new.id || '/' || :old.id);
--       COMMIT;
--   END;
--
-- With pg_atx: the trigger function emits the INSERT. (For whole-table auditing with old and new
-- images, masking and the caller's outcome, use atx.enable_audit instead: docs/audit.md. It also
-- batches the rows of a statement into few messages; this trigger writes one message per row.)
-------------------------------------------------------------------------------
CREATE FUNCTION ex_oracle.orders_audit()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM atx_log(
        'INSERT INTO ex_oracle.app_log (logged_at, who, action, detail)'
        ' VALUES ((atx.current_message()).emitted_at, current_user, $1, $2)',
        'orders ' || TG_OP,
        CASE TG_OP WHEN 'DELETE' THEN OLD.id::text ELSE NEW.id::text END);
    RETURN NULL;
END
$$;
CREATE TRIGGER orders_audit AFTER INSERT OR UPDATE OR DELETE ON ex_oracle.orders
    FOR EACH ROW EXECUTE FUNCTION ex_oracle.orders_audit();

BEGIN;
INSERT INTO ex_oracle.orders VALUES (2, 'gadget', 1), (3, 'gizmo', 2);
UPDATE ex_oracle.orders SET qty = qty + 1 WHERE id = 2;
ROLLBACK;   -- no orders; three log entries

-------------------------------------------------------------------------------
-- 3. An autonomous block whose own ROLLBACK undoes only its own work.
--
-- Oracle original:
--
--   CREATE OR REPLACE PROCEDURE reserve_stock(p_item VARCHAR2, p_qty NUMBER) IS
--       PRAGMA AUTONOMOUS_TRANSACTION;
--       v_left NUMBER;
--   BEGIN
--       UPDATE stock SET qty = qty - p_qty WHERE item = p_item RETURNING qty INTO v_left;
--       INSERT INTO reservation (item, qty) VALUES (p_item, p_qty);
--       IF v_left < 0 THEN
--           ROLLBACK;            -- undoes the UPDATE and the INSERT above, not the caller's work
--           INSERT INTO app_log (logged_at, who, action, detail)
--           VALUES (SYSTIMESTAMP, USER, 'reservation refused', p_item);
--       END IF;
--       COMMIT;
--   END;
--
-- With pg_atx: the whole autonomous block becomes ONE statement of a message, here a CALL of a
-- procedure (a DO block works the same, without parameters). atx-applier runs every message in
-- its own subtransaction, so:
--   * a PL/pgSQL block with an EXCEPTION clause inside it is the "ROLLBACK of its own work": it
--     undoes only what the block did, and the procedure can go on (here: log the refusal);
--   * a statement that fails as a whole is rolled back alone and dead-lettered in
--     atx.dead_letter with its SQLSTATE. The caller never sees that error: it may already have
--     committed or rolled back, and its own work is untouched either way.
--   * a statement that cannot work at all (a missing table or function, a type mismatch, a
--     missing privilege) is refused at the call, where the caller can still handle it.
-- COMMIT and ROLLBACK inside a message make it run non-atomically, as a top-level statement of a
-- session of the caller, like a CALL from a client (docs/migrations.md, "Atomic and non-atomic
-- messages"): an Oracle ROLLBACK can then stay as it is.
-------------------------------------------------------------------------------
CREATE TABLE ex_oracle.stock (item text PRIMARY KEY, qty int NOT NULL);
CREATE TABLE ex_oracle.reservation (item text NOT NULL, qty int);
INSERT INTO ex_oracle.stock VALUES ('widget', 10);

-- The autonomous work (unchanged logic; runs in the applier's subtransaction, as the caller).
CREATE PROCEDURE ex_oracle.reserve_stock_work(p_item text, p_qty int)
LANGUAGE plpgsql
AS $$
DECLARE
    v_left int;
BEGIN
    BEGIN
        UPDATE ex_oracle.stock SET qty = qty - p_qty WHERE item = p_item RETURNING qty INTO v_left;
        INSERT INTO ex_oracle.reservation (item, qty) VALUES (p_item, p_qty);
        IF v_left < 0 THEN
            RAISE EXCEPTION 'not enough %', p_item USING ERRCODE = 'check_violation';
        END IF;
    EXCEPTION WHEN check_violation THEN
        -- The block's work (UPDATE, INSERT) is rolled back here; log the refusal instead.
        INSERT INTO ex_oracle.app_log (logged_at, who, action, detail)
        VALUES ((atx.current_message()).emitted_at, current_user, 'reservation refused', p_item);
    END;
END
$$;

-- What the caller calls: emits the CALL.
CREATE PROCEDURE ex_oracle.reserve_stock(p_item text, p_qty int)
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM atx_log('CALL ex_oracle.reserve_stock_work($1, $2)', p_item, p_qty);
END
$$;

BEGIN;
INSERT INTO ex_oracle.orders VALUES (4, 'widget', 4);
CALL ex_oracle.reserve_stock('widget', 4);    -- applied: stock 6, one reservation
CALL ex_oracle.reserve_stock('widget', 50);   -- its own work rolled back, refusal logged
-- An autonomous statement that fails as a whole when it runs (reservation.item is NOT NULL):
-- dead-lettered with 23502, the caller goes on.
CALL ex_oracle.reserve_stock(NULL, 1);
-- One that cannot work at all is refused at the call already (atx.validate, on by default):
-- no procedure takes a text quantity.
DO $$
BEGIN
    PERFORM atx_log('CALL ex_oracle.reserve_stock_work($1, $2)', 'widget', 'many'::text);
    RAISE EXCEPTION 'not refused at the call';
EXCEPTION WHEN undefined_function THEN
    RAISE NOTICE 'refused at the call: %', SQLERRM;
END
$$;
INSERT INTO ex_oracle.orders VALUES (5, 'widget', 1);
COMMIT;

-------------------------------------------------------------------------------
-- Checks (wait for atx-applier, then assert).
-------------------------------------------------------------------------------
-- This run's dead letters (each role reads its own rows of atx.dead_letter).
CREATE VIEW ex_oracle.dead_letters AS
SELECT d.* FROM atx.dead_letter d
 WHERE d.statement LIKE 'CALL ex_oracle.reserve_stock_work%'
   AND d.emitted_at >= (SELECT min(logged_at) FROM ex_oracle.app_log);

DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT count(*) FROM ex_oracle.app_log) >= 7
              AND EXISTS (SELECT 1 FROM ex_oracle.dead_letters);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;

DO $$
DECLARE
    actions text;
BEGIN
    SELECT string_agg(action || ':' || detail, ', ' ORDER BY id) INTO actions FROM ex_oracle.app_log;
    ASSERT actions = 'order placed:order 1: 5 x widget, orders INSERT:2, orders INSERT:3, orders UPDATE:2, '
                     'orders INSERT:4, reservation refused:widget, orders INSERT:5',
        format('app_log is %s', actions);
    ASSERT (SELECT string_agg(id::text, ',' ORDER BY id) FROM ex_oracle.orders) = '4,5', 'orders 4 and 5 committed';
    ASSERT (SELECT qty FROM ex_oracle.stock WHERE item = 'widget') = 6, 'stock: only the first reservation';
    ASSERT (SELECT count(*) FROM ex_oracle.reservation) = 1, 'one reservation';
    ASSERT (SELECT string_agg(sqlstate, ',') FROM ex_oracle.dead_letters) = '23502',
        'the failing autonomous statement is dead-lettered (NULL item)';
    ASSERT (SELECT bool_and(who = current_user) FROM ex_oracle.app_log), 'logged as the caller';
END
$$;
-------------------------------------------------------------------------------
-- Second form: the Oracle bodies as they are (COMMIT and ROLLBACK included), each made
-- autonomous with one statement, in schema ex_oracle_auto.
--
-- atx.make_autonomous keeps the procedure's name, signature and grants; every call then runs its
-- body in a transaction of its own through atx-applier, as the caller, and waits for it, as
-- Oracle's caller does (atx_log above does not wait). A body with COMMIT or ROLLBACK runs as a
-- top-level CALL of its own, so they work as in Oracle. SYSTIMESTAMP becomes clock_timestamp()
-- and USER current_user.
-------------------------------------------------------------------------------
DROP SCHEMA IF EXISTS ex_oracle_auto CASCADE;
CREATE SCHEMA ex_oracle_auto;
CREATE TABLE ex_oracle_auto.orders (id int PRIMARY KEY, item text, qty int);
CREATE TABLE ex_oracle_auto.app_log (
    id bigserial PRIMARY KEY,
    logged_at timestamptz NOT NULL,
    who name NOT NULL,
    action text NOT NULL,
    detail text
);
CREATE TABLE ex_oracle_auto.stock (item text PRIMARY KEY, qty int NOT NULL);
CREATE TABLE ex_oracle_auto.reservation (item text NOT NULL, qty int);
INSERT INTO ex_oracle_auto.stock VALUES ('widget', 10);

CREATE PROCEDURE ex_oracle_auto.log_action(p_action text, p_detail text)
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO ex_oracle_auto.app_log (logged_at, who, action, detail)
    VALUES (clock_timestamp(), current_user, p_action, p_detail);
    COMMIT;
END
$$;
SELECT atx.make_autonomous('ex_oracle_auto.log_action(text, text)');

-- The row trigger's autonomous body; the trigger passes what only it knows (TG_OP, the ids).
CREATE PROCEDURE ex_oracle_auto.orders_audit_row(p_op text, p_new int, p_old int)
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO ex_oracle_auto.app_log (logged_at, who, action, detail)
    VALUES (clock_timestamp(), current_user, 'orders ' || p_op, concat(p_new, '/', p_old));  -- Oracle's || skips NULLs
    COMMIT;
END
$$;
SELECT atx.make_autonomous('ex_oracle_auto.orders_audit_row(text, int, int)');
CREATE FUNCTION ex_oracle_auto.orders_audit()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    CALL ex_oracle_auto.orders_audit_row(TG_OP, CASE WHEN TG_OP <> 'DELETE' THEN NEW.id END,
                                         CASE WHEN TG_OP <> 'INSERT' THEN OLD.id END);
    RETURN NULL;
END
$$;
CREATE TRIGGER orders_audit AFTER INSERT OR UPDATE OR DELETE ON ex_oracle_auto.orders
    FOR EACH ROW EXECUTE FUNCTION ex_oracle_auto.orders_audit();

CREATE PROCEDURE ex_oracle_auto.reserve_stock(p_item text, p_qty int)
LANGUAGE plpgsql
AS $$
DECLARE
    v_left int;
BEGIN
    UPDATE ex_oracle_auto.stock SET qty = qty - p_qty WHERE item = p_item RETURNING qty INTO v_left;
    INSERT INTO ex_oracle_auto.reservation (item, qty) VALUES (p_item, p_qty);
    IF v_left < 0 THEN
        ROLLBACK;            -- undoes the UPDATE and the INSERT above, not the caller's work
        INSERT INTO ex_oracle_auto.app_log (logged_at, who, action, detail)
        VALUES (clock_timestamp(), current_user, 'reservation refused', p_item);
    END IF;
    COMMIT;
END
$$;
SELECT atx.make_autonomous('ex_oracle_auto.reserve_stock(text, int)');

BEGIN;
INSERT INTO ex_oracle_auto.orders VALUES (1, 'widget', 5);
CALL ex_oracle_auto.log_action('order placed', 'order 1: 5 x widget');
INSERT INTO ex_oracle_auto.orders VALUES (2, 'gadget', 1);
UPDATE ex_oracle_auto.orders SET qty = qty + 1 WHERE id = 2;
CALL ex_oracle_auto.reserve_stock('widget', 4);    -- stock 6, one reservation
CALL ex_oracle_auto.reserve_stock('widget', 50);   -- its own work rolled back, refusal logged
-- Each call returned once its work was committed: this transaction sees it already.
DO $$
BEGIN
    ASSERT (SELECT count(*) FROM ex_oracle_auto.app_log) = 5, 'the autonomous rows, seen before the ROLLBACK';
END
$$;
ROLLBACK;

DO $$
DECLARE
    actions text;
BEGIN
    SELECT string_agg(action || ':' || detail, ', ' ORDER BY id) INTO actions FROM ex_oracle_auto.app_log;
    ASSERT actions = 'orders INSERT:1/, order placed:order 1: 5 x widget, orders INSERT:2/, orders UPDATE:2/2, '
                     'reservation refused:widget',
        format('make_autonomous: app_log is %s', actions);
    ASSERT (SELECT count(*) FROM ex_oracle_auto.orders) = 0, 'make_autonomous: the orders are rolled back';
    ASSERT (SELECT qty FROM ex_oracle_auto.stock WHERE item = 'widget') = 6, 'make_autonomous: only the first reservation';
    ASSERT (SELECT count(*) FROM ex_oracle_auto.reservation) = 1, 'make_autonomous: one reservation';
    ASSERT (SELECT bool_and(who = current_user) FROM ex_oracle_auto.app_log), 'make_autonomous: logged as the caller';
END
$$;
SELECT 'oracle_pragma_autonomous with make_autonomous: ok' AS result;
SELECT 'oracle_pragma_autonomous: ok' AS result;
