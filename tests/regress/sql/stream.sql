-- What the slot delivers: only atx_log's messages, also after ROLLBACK; never
-- a forged pg_logical_emit_message, never ordinary DML.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;
-- The statements name tables that do not exist: only the stream matters here.
SET atx.validate = off;

CREATE TABLE stream_t (id int, note text);
GRANT INSERT, SELECT ON stream_t TO regress_atx_user;

SET ROLE regress_atx_user;
-- The audit statement survives the ROLLBACK of the transaction that wrote it.
BEGIN;
INSERT INTO stream_t VALUES (999, 'rolled back');
SELECT atx_log('INSERT INTO audit_log(msg, who) VALUES ($1, current_user)', 'tried to add 999') IS NOT NULL AS emitted;
ROLLBACK;
-- Without a transaction id (xid=0), with a key and with mixed parameters.
SELECT atx_log('SELECT 1') IS NOT NULL AS emitted;
SELECT atx_log_keyed('order-42', 'UPDATE t SET v = $1 WHERE k = $2', 3.14::numeric, 'k''"ü', NULL::int,
                     ARRAY['a', NULL, 'c'], '{"x": [1, null]}'::jsonb, 'literal') IS NOT NULL AS emitted;
-- An explicit VARIADIC array is expanded into parameters.
SELECT atx_log('SELECT $1 + $2 + $3', VARIADIC ARRAY[1, 2, 3]) IS NOT NULL AS emitted;

-- Forgeries by a non-superuser: any prefix, transactional or not.
SELECT pg_logical_emit_message(false, 'pg_atx', 'forged') IS NOT NULL AS forged;
SELECT pg_logical_emit_message(true, 'pg_atx', 'forged') IS NOT NULL AS forged;
SELECT pg_logical_emit_message(false, 'other', 'forged') IS NOT NULL AS forged;
BEGIN;
SELECT pg_logical_emit_message(false, 'pg_atx', 'forged in a rolled back transaction') IS NOT NULL AS forged;
ROLLBACK;
-- Ordinary DML.
INSERT INTO stream_t VALUES (1, 'plain DML');
RESET ROLE;
-- Even a superuser's pg_logical_emit_message carries no pg_atx origin.
SELECT pg_logical_emit_message(false, 'pg_atx', 'superuser forgery') IS NOT NULL AS forged;

-- Only the four messages, in order, with their parameters.
SELECT * FROM regress_peek_text();

-- The id in the stream is the one atx_log returned.
SET ROLE regress_atx_user;
SELECT atx_log('SELECT 2') AS id \gset
RESET ROLE;
SELECT (regexp_match(data, 'id=(\S+)'))[1]::uuid = :'id' AS same_id
  FROM pg_logical_slot_peek_changes(regress_slot(), NULL, NULL, 'format', 'text') OFFSET 4;

-- Binary format: 'M', the record's start LSN (8 bytes; the frame's own LSN is its end), the
-- payload, which starts with "ATX" and version 2.
SELECT get_byte(data, 0) = ascii('M') AS tag_m, substr(data, 10, 4) AS magic_and_version,
       '0/0'::pg_lsn + ('x' || encode(substr(data, 2, 8), 'hex'))::bit(64)::bigint::numeric < lsn AS starts_before_end
  FROM pg_logical_slot_peek_binary_changes(regress_slot(), NULL, NULL, 'format', 'binary');

-- The payload's fields, as shown for dead letters (no MAC check).
SELECT jsonb_pretty(atx.decode(payload) - 'id' - 'emitted_at' - 'caller_xid' - 'database_oid' - 'role_oid' - 'lane')
  FROM regress_take() WHERE n = 3;

-- The key file: 32 bytes in the data directory.
SELECT size FROM pg_stat_file('pg_atx.key');

SELECT count(*) AS left_in_slot FROM pg_logical_slot_peek_binary_changes(regress_slot(), NULL, NULL);
SELECT pg_drop_replication_slot(regress_slot());
DROP TABLE stream_t;
RESET atx.validate;
