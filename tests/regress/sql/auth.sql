-- The apply functions run only what atx_log wrote, each message once, and only for appliers.
-- The applier names a message by the start LSN of its WAL record; the server reads it back
-- from its own WAL and checks the record: a genuine boundary, a non-transactional logical
-- message of this database with prefix pg_atx and the pg_atx replication origin.
CREATE EXTENSION pg_walinspect;
SELECT atx.ensure_slot() = regress_slot() AS slot_created;

CREATE TABLE auth_t (v text, who name);
GRANT INSERT, SELECT ON auth_t TO regress_atx_user;

SET ROLE regress_atx_user;
SELECT atx_log('INSERT INTO auth_t VALUES ($1, current_user)', 'authentic') IS NOT NULL AS emitted;
-- A forgery: the same payload, written by pg_logical_emit_message (executable by PUBLIC).
RESET ROLE;
CREATE TABLE msg AS SELECT lsn, payload AS p FROM regress_take();
GRANT SELECT ON msg TO PUBLIC;
SET ROLE regress_atx_user;
SELECT pg_logical_emit_message(false, 'pg_atx', p) IS NOT NULL AS forged FROM msg;
INSERT INTO auth_t VALUES ('plain DML', current_user);
RESET ROLE;
SELECT count(*) FROM msg;

-- Where the forged record and the INSERT start, from the WAL itself.
CREATE TABLE rec AS
SELECT start_lsn, resource_manager, record_type
  FROM pg_get_wal_records_info((SELECT lsn FROM msg), pg_current_wal_flush_lsn())
 WHERE resource_manager IN ('LogicalMessage', 'Heap');
SELECT count(*) FILTER (WHERE resource_manager = 'LogicalMessage') AS messages,
       count(*) FILTER (WHERE resource_manager = 'Heap') > 0 AS heap FROM rec;

CREATE TABLE bad (label text, l pg_lsn);
INSERT INTO bad
SELECT 'forged copy (pg_logical_emit_message)', start_lsn FROM rec
 WHERE resource_manager = 'LogicalMessage' AND start_lsn > (SELECT lsn FROM msg)
UNION ALL
SELECT 'an INSERT record', min(start_lsn) FROM rec WHERE resource_manager = 'Heap'
UNION ALL
SELECT 'inside the message record', (SELECT lsn FROM msg) + 8
UNION ALL
SELECT 'not flushed yet', '0/0'::pg_lsn + (floor((pg_current_wal_insert_lsn() - '0/0') / 8192) + 100) * 8192 + 100
UNION ALL
SELECT 'page header', '0/2000000'::pg_lsn;
SELECT b.label, a.status, a.sqlstate,
       regexp_replace(a.error, '[0-9A-F]+/[0-9A-F]+', '<lsn>', 'g') AS error
  FROM bad b, LATERAL regress_apply(b.l) a ORDER BY b.label;
-- atx.apply raises the same.
SELECT label, regexp_replace(regress_try(format('SELECT atx.apply(%L)', l)), '[0-9A-F]+/[0-9A-F]+', '<lsn>', 'g')
  FROM bad ORDER BY label;
-- Nothing ran.
SELECT count(*) FROM auth_t WHERE v = 'authentic';
-- The failover check's WAL scan (atx.messages_between) finds the genuine message and none of the
-- others: not the forged copy, not the INSERT.
SELECT lsns = ARRAY[(SELECT lsn FROM msg)] AS found, next_lsn > (SELECT lsn FROM msg) AS goes_on
  FROM atx.messages_between((SELECT lsn FROM msg), pg_current_wal_flush_lsn(), 100);
SELECT cardinality(lsns) AS at_most_one, next_lsn > (SELECT lsn FROM msg) AS after_it
  FROM atx.messages_between((SELECT lsn FROM msg) - 100, pg_current_wal_flush_lsn(), 1);
-- WAL that is gone: an error that says so, never an empty answer.
SELECT regress_try('SELECT count(*) FROM atx.messages_between(''0/10'', ''0/20'', 1)');

-- A role that is not an applier: no EXECUTE ...
SET ROLE regress_atx_other;
SELECT regress_try(format('SELECT * FROM atx.apply_batch(ARRAY[%L]::pg_lsn[], ''{1}'', ''{NULL}'', 1, 0, true, ''regress'')', lsn)) FROM msg;
SELECT regress_try(format('SELECT atx.apply(%L)', lsn)) FROM msg;
RESET ROLE;
-- ... and with EXECUTE granted, still refused by the function itself.
GRANT USAGE ON SCHEMA atx TO regress_atx_other;
GRANT EXECUTE ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean, text, int), atx.apply(pg_lsn)
    TO regress_atx_other;
SET ROLE regress_atx_other;
SELECT regress_try(format('SELECT * FROM atx.apply_batch(ARRAY[%L]::pg_lsn[], ''{1}'', ''{NULL}'', 1, 0, true, ''regress'')', lsn)) FROM msg;
SELECT regress_try(format('SELECT atx.apply(%L)', lsn)) FROM msg;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean, text, int), atx.apply(pg_lsn)
    FROM regress_atx_other;
REVOKE USAGE ON SCHEMA atx FROM regress_atx_other;
SELECT count(*) FROM auth_t WHERE v = 'authentic';

-- A member of atx_applier (not a superuser) applies the authentic message, once: a second
-- apply of the same LSN (a replay) is refused as handled before.
SET ROLE regress_atx_applier;
SELECT a.status, a.sqlstate, a.command, a.rows FROM msg, LATERAL regress_apply(msg.lsn) a;
SELECT a.status, a.sqlstate, a.command, a.rows FROM msg, LATERAL regress_apply(msg.lsn) a;
SELECT regexp_replace(regress_try(format('SELECT atx.apply(%L)', lsn)), '[0-9a-f-]{36} at [0-9A-F]+/[0-9A-F]+', '<id> at <lsn>')
  FROM msg;
-- It may read, not write, what the server trusts.
SELECT regress_try($$INSERT INTO atx.applied VALUES (gen_random_uuid(), '0/1', 'applied')$$);
SELECT regress_try($$INSERT INTO atx.dead_letter (payload, sqlstate, error, attempts, first_failed_at) VALUES ('\x00', 'x', 'x', 1, now())$$);
SELECT regress_try($$DELETE FROM atx.applied$$);
RESET ROLE;
SELECT v, who FROM auth_t ORDER BY v;
SELECT status, lsn = (SELECT lsn FROM msg) AS same_lsn FROM atx.applied;

-- Tampered payloads never authenticate (atx.verify_payload: superuser only, runs nothing).
-- Offsets: 0 magic, 3 version, 4 flags, 5 id, 21 lane, 37 depth, 38 database oid; the last
-- 32 bytes are the MAC.
CREATE FUNCTION body(p bytea) RETURNS bytea LANGUAGE sql AS $$ SELECT substr(p, 1, length(p) - 32) $$;
CREATE TABLE tampered (label text, p bytea);
INSERT INTO tampered
SELECT 'one byte changed', set_byte(p, position('auth_t'::bytea IN p) - 1, ascii('A')) FROM msg
UNION ALL
SELECT 'MAC byte changed', set_byte(p, length(p) - 1, get_byte(p, length(p) - 1) # 1) FROM msg
UNION ALL
SELECT 'signed with another key', body(p) || hmac(body(p), 'not the cluster key', 'sha256') FROM msg
UNION ALL
SELECT 'MAC missing', body(p) FROM msg
UNION ALL
SELECT 'truncated', substr(p, 1, 20) FROM msg
UNION ALL
SELECT 'bad magic', set_byte(p, 0, ascii('B')) FROM msg
UNION ALL
SELECT 'format version 4', set_byte(p, 3, 4) FROM msg;
SELECT label, regexp_replace(regress_try(format('SELECT atx.verify_payload(%L)', p)),
                             '[0-9]+ bytes at offset [0-9]+, have [0-9]+', 'N bytes at offset N, have N') AS result
  FROM tampered ORDER BY label;
SELECT (atx.verify_payload(p)->>'statement') AS authentic FROM msg;
SET ROLE regress_atx_applier;
SELECT regress_try(format('SELECT atx.verify_payload(%L)', p)) FROM msg;
RESET ROLE;

-- Messages that share a WAL page, applied out of order: each is found at its own record
-- boundary, and a position inside one of them is refused, whatever the backend read before it.
CREATE TABLE page_t (v int);
GRANT INSERT ON page_t TO regress_atx_user;
SET ROLE regress_atx_user;
SELECT count(atx_log('INSERT INTO page_t VALUES ($1)', g)) AS emitted FROM generate_series(1, 5) g;
RESET ROLE;
CREATE TABLE five AS SELECT n, lsn FROM regress_take();
GRANT SELECT ON five TO regress_atx_applier;
SELECT count(*) AS messages, count(DISTINCT floor((lsn - '0/0') / 8192)) <= 2 AS one_or_two_pages FROM five;
SET ROLE regress_atx_applier;
SELECT a.status FROM five, LATERAL regress_apply(five.lsn) a WHERE n = 4;
-- Inside the second, and just before the fifth (in the fourth, or in a page header when the
-- fifth opens a page: the error then does not add "not a record boundary").
SELECT f.n, a.status, a.sqlstate,
       regexp_replace(a.error, '[0-9A-F]+/[0-9A-F]+( \(not a record boundary\))?', '<lsn>') AS error
  FROM five f, LATERAL regress_apply(f.lsn + CASE f.n WHEN 2 THEN 8 ELSE -8 END) a
 WHERE f.n IN (2, 5) ORDER BY f.n;
-- All five in one batch, last first: the fourth was handled above.
SELECT string_agg(a.status, ', ' ORDER BY f.n DESC) AS statuses
  FROM atx.apply_batch((SELECT array_agg(lsn ORDER BY n DESC) FROM five), '{1,1,1,1,1}', '{NULL,NULL,NULL,NULL,NULL}',
                       1, 0, true, 'regress') a
  JOIN five f ON f.lsn = a.lsn;
RESET ROLE;
SELECT string_agg(v::text, ',' ORDER BY v) AS applied FROM page_t;
DROP TABLE page_t, five;

-- A dropped role is an error (dead-lettered), not a fallback to the applier.
CREATE ROLE regress_atx_gone;
GRANT INSERT ON auth_t TO regress_atx_gone;
SET ROLE regress_atx_gone;
SELECT atx_log('INSERT INTO auth_t VALUES ($1, current_user)', 'from a dropped role') IS NOT NULL AS emitted;
RESET ROLE;
REVOKE INSERT ON auth_t FROM regress_atx_gone;
DROP ROLE regress_atx_gone;
SELECT a.status, a.sqlstate, regexp_replace(a.error, 'OID [0-9]+', 'OID n') AS error
  FROM regress_take() t, LATERAL regress_apply(t.lsn) a;
SELECT count(*) FROM auth_t WHERE v = 'from a dropped role';
SELECT sqlstate, caller_role, statement FROM atx.dead_letter;

SELECT pg_drop_replication_slot(regress_slot());
DROP TABLE auth_t, msg, bad, rec, tampered;
DELETE FROM atx.dead_letter;
DROP FUNCTION body(bytea);
DROP EXTENSION pg_walinspect;
