-- atx_exec where the suite's cluster runs it: not preloaded (tests/integration/atx_exec.sh
-- covers the preloaded case). Every call refuses with 55000 and writes nothing.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;
SET atx.exec_timeout = 200;
SHOW atx.exec_timeout;
SHOW atx.exec_on_abandon;
SELECT regress_try($$SELECT atx_exec('SELECT 1')$$);
SELECT regress_try($$SELECT atx_exec('INSERT INTO t VALUES ($1)', 1)$$);
SELECT regress_try($$SELECT atx_exec_noraise('SELECT 1')$$);
SELECT regress_try($$SELECT atx_exec('')$$);
SELECT count(*) AS nothing_written FROM pg_logical_slot_peek_binary_changes(regress_slot(), NULL, NULL);
SELECT regress_try($$SET atx.exec_on_abandon = 'later'$$);
SELECT pg_drop_replication_slot(regress_slot());
RESET atx.exec_timeout;
