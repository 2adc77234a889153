-- atx_exec without an applier (the suite runs none): what needs no wait.
-- The usual suite cluster does not preload pg_atx: atx_exec refuses with 55000
-- (expected/exec.out). On a server with shared_preload_libraries = 'pg_atx'
-- the waits time out instead (expected/exec_1.out).
SELECT atx.ensure_slot() = regress_slot() AS slot_created;
SET atx.exec_timeout = 200;
SHOW atx.exec_timeout;
CREATE FUNCTION regress_mask(t text) RETURNS text LANGUAGE sql AS
$$ SELECT regexp_replace(t, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g') $$;

SELECT regress_mask(regress_try($$SELECT atx_exec('SELECT 1')$$));
SELECT regress_mask(regress_try($$SELECT atx_exec('INSERT INTO t VALUES ($1)', 1)$$));
SELECT regress_mask(regress_try($$SELECT atx_exec_noraise('SELECT 1')$$));
SELECT regress_mask(regress_try($$SELECT atx_exec('')$$));

-- The trigger that reports dead letters to waiters; a dead letter nobody
-- waits for passes through unchanged.
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'atx.dead_letter'::regclass AND NOT tgisinternal;
BEGIN;
INSERT INTO atx.dead_letter (message_id, payload, sqlstate, error, attempts, first_failed_at)
VALUES ('00000000-0000-4000-8000-000000000000', '\x00', '42P01', 'x', 1, now())
RETURNING sqlstate, error;
ROLLBACK;
DROP FUNCTION regress_mask(text);
SELECT pg_drop_replication_slot(regress_slot());
RESET atx.exec_timeout;
