-- A keyed message runs once per role and key: a second message with a key its role applied is
-- a duplicate; another role's key never suppresses it.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;

CREATE TABLE idem_t (v text);
GRANT INSERT ON idem_t TO regress_atx_user, regress_atx_other;

SET ROLE regress_atx_user;
SELECT atx_log_keyed('invoice-1', 'INSERT INTO idem_t VALUES ($1)', 'first') AS first_id \gset
SELECT atx_log_keyed('invoice-1', 'INSERT INTO idem_t VALUES ($1)', 'second, same key') IS NOT NULL AS emitted;
-- Fails at the call: $1 has no value (nothing is written, so no key is taken).
SELECT regress_try('SELECT atx_log_keyed(''invoice-2'', ''INSERT INTO idem_t VALUES ($1)'')');
-- Fails when it runs (not validated): no key is left behind.
SET atx.validate = off;
SELECT atx_log_keyed('invoice-2', 'INSERT INTO idem_t VALUES ($1::int)', 'not a number') IS NOT NULL AS emitted;
RESET atx.validate;
SELECT atx_log_keyed('invoice-2', 'INSERT INTO idem_t VALUES ($1)', 'retry of invoice-2') IS NOT NULL AS emitted;
SELECT atx_log_keyed('invoice-3', 'INSERT INTO idem_t VALUES (''no params'')') IS NOT NULL AS emitted;
RESET ROLE;
-- Another role, the same key: its own.
SET ROLE regress_atx_other;
SELECT atx_log_keyed('invoice-1', 'INSERT INTO idem_t VALUES ($1)', 'other role, same key') IS NOT NULL AS emitted;
RESET ROLE;
-- A key recorded by pg_atx 0.1 (role 0) stays taken for every role.
INSERT INTO atx.idempotency_key (role_oid, key, message_id, applied_at) VALUES (0, 'legacy-1', gen_random_uuid(), now());
SET ROLE regress_atx_other;
SELECT atx_log_keyed('legacy-1', 'INSERT INTO idem_t VALUES ($1)', 'legacy key') IS NOT NULL AS emitted;
RESET ROLE;

CREATE TABLE idem_msg AS SELECT * FROM regress_take();

SELECT m.n, a.status, a.sqlstate, a.command, a.rows
  FROM idem_msg m, LATERAL regress_apply(m.lsn) a ORDER BY m.n;
SELECT * FROM idem_t ORDER BY v;
SELECT role_oid::regrole AS role, key,
       message_id = CASE WHEN key = 'invoice-1' AND role_oid = 'regress_atx_user'::regrole THEN :'first_id'::uuid
                         ELSE message_id END AS first_message_wins
  FROM atx.idempotency_key WHERE role_oid <> 0 ORDER BY key, role;

-- Applying the whole batch again changes nothing: every message was handled.
SELECT m.n, a.status FROM idem_msg m, LATERAL regress_apply(m.lsn) a ORDER BY m.n;
SELECT count(*) FROM idem_t;

-- atx.apply on a handled message refuses.
SELECT regexp_replace(regress_try(format('SELECT atx.apply(%L)', lsn)), '[0-9a-f-]{36} at [0-9A-F]+/[0-9A-F]+', '<id> at <lsn>')
  FROM idem_msg WHERE n = 1;

SELECT pg_drop_replication_slot(regress_slot());
DROP TABLE idem_t, idem_msg;
TRUNCATE atx.idempotency_key, atx.dead_letter;
