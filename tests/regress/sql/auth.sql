-- atx.apply_message / atx.apply refuse what atx_log did not write, and
-- callers that are not appliers.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;

CREATE TABLE auth_t (v text, who name);
GRANT INSERT, SELECT ON auth_t TO regress_atx_user;

SET ROLE regress_atx_user;
SELECT atx_log('INSERT INTO auth_t VALUES ($1, current_user)', 'authentic') IS NOT NULL AS emitted;
RESET ROLE;

CREATE TABLE msg AS SELECT payload AS p FROM regress_take();
GRANT SELECT ON msg TO PUBLIC;
SELECT count(*) FROM msg;

-- Offsets in the payload: 0 magic, 3 version, 4 flags, 5 id, 21 database oid,
-- 25 role oid; the last 32 bytes are the MAC.
CREATE FUNCTION body(p bytea) RETURNS bytea LANGUAGE sql AS $$ SELECT substr(p, 1, length(p) - 32) $$;
-- Re-signs a body with the cluster's own key (superuser only: it reads the key file).
CREATE FUNCTION resign(b bytea) RETURNS bytea LANGUAGE sql
AS $$ SELECT b || hmac(b, pg_read_binary_file('pg_atx.key'), 'sha256') $$;
CREATE FUNCTION set_u32(p bytea, off int, v bigint) RETURNS bytea LANGUAGE sql
AS $$ SELECT set_byte(set_byte(set_byte(set_byte(p, off, ((v >> 24) & 255)::int), off + 1, ((v >> 16) & 255)::int),
                       off + 2, ((v >> 8) & 255)::int), off + 3, (v & 255)::int) $$;

-- Sanity: our re-signing reproduces the MAC atx_log wrote.
SELECT resign(body(p)) = p AS resign_reproduces_mac FROM msg;

-- One byte of the statement changed ("auth_t" -> "Auth_t").
CREATE TABLE bad (label text, p bytea);
INSERT INTO bad
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
SELECT 'trailing byte (re-signed)', resign(body(p) || '\x00'::bytea) FROM msg
UNION ALL
SELECT 'format version 2', set_byte(p, 3, 2) FROM msg
UNION ALL
SELECT 'other database (re-signed)', resign(set_u32(body(p), 21, 4000000000)) FROM msg
UNION ALL
SELECT 'role does not exist (re-signed)', resign(set_u32(body(p), 25, 4000000000)) FROM msg;

SELECT b.label, a.status, a.sqlstate, regexp_replace(regexp_replace(a.error, 'database \([0-9]+\)', 'database (<oid>)'),
                                             '[0-9]+ bytes at offset [0-9]+, have [0-9]+', 'N bytes at offset N, have N') AS error,
       a.message_id IS NOT DISTINCT FROM (atx.decode(m.p)->>'id')::uuid AS id_reported
  FROM bad b, msg m, LATERAL atx.apply_message(b.p) a ORDER BY b.label;
-- atx.apply raises the same errors.
SELECT label, regexp_replace(regexp_replace(regress_try(format('SELECT atx.apply(%L)', p)),
                                            'database \([0-9]+\)', 'database (<oid>)'),
                             '[0-9]+ bytes at offset [0-9]+, have [0-9]+', 'N bytes at offset N, have N') AS result
  FROM bad ORDER BY label;
-- Nothing ran.
SELECT count(*) FROM auth_t;

-- A role that is not an applier: no EXECUTE ...
SET ROLE regress_atx_other;
SELECT regress_try(format('SELECT atx.apply_message(%L)', p)) FROM msg;
SELECT regress_try(format('SELECT atx.apply(%L)', p)) FROM msg;
RESET ROLE;
-- ... and with EXECUTE granted, still refused by the function itself.
GRANT USAGE ON SCHEMA atx TO regress_atx_other;
GRANT EXECUTE ON FUNCTION atx.apply_message(bytea), atx.apply(bytea) TO regress_atx_other;
SET ROLE regress_atx_other;
SELECT regress_try(format('SELECT atx.apply_message(%L)', p)) FROM msg;
SELECT regress_try(format('SELECT atx.apply(%L)', p)) FROM msg;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION atx.apply_message(bytea), atx.apply(bytea) FROM regress_atx_other;
REVOKE USAGE ON SCHEMA atx FROM regress_atx_other;
-- The message's own role is no applier either.
SET ROLE regress_atx_user;
SELECT regress_try(format('SELECT atx.apply_message(%L)', p)) FROM msg;
RESET ROLE;
SELECT count(*) FROM auth_t;

-- A member of atx_applier (not a superuser) applies the authentic message.
SET ROLE regress_atx_applier;
SELECT a.status, a.sqlstate, a.command, a.rows FROM msg, LATERAL atx.apply_message(p) a;
RESET ROLE;
SELECT * FROM auth_t;

-- A dropped role is an error, not a fallback to the applier.
CREATE ROLE regress_atx_gone;
GRANT INSERT ON auth_t TO regress_atx_gone;
SET ROLE regress_atx_gone;
SELECT atx_log('INSERT INTO auth_t VALUES ($1, current_user)', 'from a dropped role') IS NOT NULL AS emitted;
RESET ROLE;
REVOKE INSERT ON auth_t FROM regress_atx_gone;
DROP ROLE regress_atx_gone;
SELECT a.status, a.sqlstate, regexp_replace(a.error, 'OID [0-9]+', 'OID n') AS error
  FROM regress_take() t, LATERAL atx.apply_message(t.payload) a;
SELECT count(*) FROM auth_t;

SELECT pg_drop_replication_slot(regress_slot());
DROP TABLE auth_t, msg, bad;
DROP FUNCTION body(bytea), resign(bytea), set_u32(bytea, int, bigint);
