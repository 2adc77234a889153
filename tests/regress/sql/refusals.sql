-- Every refusal of atx_log, with its SQLSTATE; nothing is emitted by any.
-- Not testable in one cluster: wal_level < logical (55000) and a standby (25006).

-- No pg_atx slot for this database: a message now would be lost.
SELECT regress_try($$SELECT atx_log('SELECT 1')$$);

SELECT atx.ensure_slot() = regress_slot() AS slot_created;
SELECT atx.ensure_slot() = regress_slot() AS ensure_is_idempotent;
SELECT plugin, slot_type, database = current_database() AS this_db
  FROM pg_replication_slots WHERE slot_name = regress_slot();

-- Bad statements and keys.
SELECT regress_try($$SELECT atx_log('')$$);
SELECT regress_try($$SELECT atx_log(E'  \n\t ')$$);
SELECT regress_try($$SELECT atx_log(NULL)$$);
SELECT regress_try($$SELECT atx_log(NULL::text, 1)$$);
SELECT regress_try($$SELECT atx_log_keyed('', 'SELECT 1')$$);
SELECT regress_try($$SELECT atx_log_keyed(NULL, 'SELECT 1')$$);

-- Too large.
SET atx.max_payload_size = '1kB';
-- (the size depends on the role name and GUC values)
SELECT regexp_replace(regress_try($$SELECT atx_log('SELECT $1', repeat('x', 2000))$$), 'too large: [0-9]+ bytes', 'too large: N bytes');
RESET atx.max_payload_size;
SHOW atx.max_payload_size;
SET ROLE regress_atx_user;
SELECT regress_try($$SET atx.max_payload_size = '100MB'$$);
RESET ROLE;

-- Too many parameters (an explicit VARIADIC array).
SELECT regress_try($$SELECT atx_log('SELECT 1', VARIADIC array_fill(1, ARRAY[65536]))$$);

-- A value the receiving side could not rebuild.
SELECT regress_try($$SELECT atx_log('SELECT $1', row(1, 'a'))$$);

-- atx.capture_gucs takes known parameters and custom ones (with a dot), never role-changing ones;
-- ALTER ROLE may set it.
SELECT regress_try($$SET atx.capture_gucs = 'no_such_parameter'$$);
SELECT regress_try($$SET atx.capture_gucs = 'work_mem, not_a_guc'$$);
SELECT regress_try($$SET atx.capture_gucs = 'role'$$);
SELECT regress_try($$SET atx.capture_gucs = 'session_authorization'$$);
SET atx.capture_gucs = 'work_mem, statement_timeout, app.tenant';
SHOW atx.capture_gucs;
RESET atx.capture_gucs;
SELECT regress_try($$ALTER ROLE regress_atx_user SET atx.capture_gucs = 'app.tenant'$$);
ALTER ROLE regress_atx_user RESET atx.capture_gucs;

-- A read-only transaction promised not to write: no autonomous statement either (25006),
-- unless a superuser allows it.
BEGIN READ ONLY;
SELECT regress_try($$SELECT atx_log('SELECT 1')$$);
ROLLBACK;
SET default_transaction_read_only = on;
SELECT regress_try($$SELECT atx_log('SELECT 1')$$);
RESET default_transaction_read_only;
SET ROLE regress_atx_user;
SELECT regress_try($$SET atx.allow_in_read_only = on$$);
RESET ROLE;
BEGIN READ ONLY;
SET LOCAL atx.allow_in_read_only = on;
SELECT atx_log('SELECT 1') IS NOT NULL AS allowed_by_superuser;
ROLLBACK;

-- What can never run fails at the call, with its own SQLSTATE and position (atx.validate).
SELECT regress_try($$SELECT atx_log('INSERT INTO no_such_table VALUES (1)')$$);
SELECT regress_try($$SELECT atx_log('SELEKT 1')$$);
SELECT regress_try($$SELECT atx_log('SELECT no_such_column FROM pg_class')$$);
SELECT regress_try($$SELECT atx_log('SELECT $1 + 1', 'x'::text)$$);
SELECT regress_try($$SELECT atx_log('CALL no_such_procedure()')$$);
CREATE TABLE refusals_secret (v int);
REVOKE ALL ON refusals_secret FROM PUBLIC;
SET ROLE regress_atx_user;
SELECT regress_try($$SELECT atx_log('INSERT INTO refusals_secret VALUES (1)')$$);
SELECT regress_try($$SELECT atx_log('SELECT v FROM refusals_secret')$$);
RESET ROLE;
-- The caller's temporary tables are not visible to the apply session.
CREATE TEMP TABLE refusals_tmp (v int);
SELECT regress_try($$SELECT atx_log('INSERT INTO refusals_tmp VALUES (1)')$$);
-- DDL first: the statements after it are not analyzed (they may use what it creates).
SELECT atx_log('CREATE TABLE refusals_later (v int); INSERT INTO refusals_later VALUES (1)') IS NOT NULL AS emitted;
-- Off: written as is.
SET atx.validate = off;
SELECT atx_log('INSERT INTO no_such_table VALUES (1)') IS NOT NULL AS emitted;
RESET atx.validate;
DROP TABLE refusals_secret;
SELECT regress_try($$SET atx.no_such_setting = 1$$);

-- Output plugin options.
SELECT regress_try($$SELECT * FROM pg_logical_slot_peek_changes(regress_slot(), NULL, NULL, 'format', 'xml')$$);
SELECT regress_try($$SELECT * FROM pg_logical_slot_peek_changes(regress_slot(), NULL, NULL, 'verbose', 'on')$$);
-- The binary format is not text.
SELECT regress_try($$SELECT * FROM pg_logical_slot_peek_changes(regress_slot(), NULL, NULL)$$);

-- Nothing was emitted by any refusal (the three accepted above are there).
SELECT count(*) AS messages FROM pg_logical_slot_peek_binary_changes(regress_slot(), NULL, NULL);

-- The slot holds WAL: drop it.
SELECT pg_drop_replication_slot(regress_slot());
SELECT regress_try($$SELECT atx_log('SELECT 1')$$);
