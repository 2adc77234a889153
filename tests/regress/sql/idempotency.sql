-- A keyed message runs once: a second message with an applied key is a duplicate.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;

CREATE TABLE idem_t (v text);
GRANT INSERT ON idem_t TO regress_atx_user;

SET ROLE regress_atx_user;
SELECT atx_log_keyed('invoice-1', 'INSERT INTO idem_t VALUES ($1)', 'first') AS first_id \gset
SELECT atx_log_keyed('invoice-1', 'INSERT INTO idem_t VALUES ($1)', 'second, same key') IS NOT NULL AS emitted;
SELECT atx_log_keyed('invoice-2', 'INSERT INTO idem_t VALUES ($1)') IS NOT NULL AS emitted;  -- fails: $1 has no value
SELECT atx_log_keyed('invoice-2', 'INSERT INTO idem_t VALUES ($1)', 'retry of invoice-2') IS NOT NULL AS emitted;
SELECT atx_log_keyed('invoice-3', 'INSERT INTO idem_t VALUES (''no params'')') IS NOT NULL AS emitted;
RESET ROLE;

CREATE TABLE idem_msg AS SELECT * FROM regress_take();

-- As the applier would: failed messages leave no key behind.
SELECT m.n, a.status, a.sqlstate, a.command, a.rows
  FROM idem_msg m, LATERAL atx.apply_message(m.payload) a ORDER BY m.n;
SELECT * FROM idem_t ORDER BY v;
SELECT key, message_id = CASE key WHEN 'invoice-1' THEN :'first_id'::uuid ELSE message_id END AS first_message_wins
  FROM atx.idempotency_key ORDER BY key;

-- Applying the whole batch again changes nothing.
SELECT m.n, a.status FROM idem_msg m, LATERAL atx.apply_message(m.payload) a ORDER BY m.n;
SELECT count(*) FROM idem_t;

-- atx.apply on a duplicate: a notice, no command.
SELECT a.command, a.rows FROM idem_msg m, LATERAL atx.apply(m.payload) a WHERE m.n = 1;

SELECT pg_drop_replication_slot(regress_slot());
DROP TABLE idem_t, idem_msg;
TRUNCATE atx.idempotency_key;
