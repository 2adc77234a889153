-- Parameters round-trip through emit and apply, NULLs included.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;

CREATE TYPE regress_mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN regress_posint AS int CHECK (VALUE > 0);
CREATE TYPE regress_pair AS (a int, b text);

CREATE TABLE rt_orig (
    i int, b bigint, n numeric, t text, by bytea, ts timestamptz, j jsonb, a int[], ta text[],
    d regress_posint, e regress_mood, p regress_pair, nul text, f float8, iv interval, u uuid
);
INSERT INTO rt_orig VALUES (
    -2147483648, 9223372036854775807, 123456789012345678901234567890.000000000001,
    E'unicode ü ∑ 😀, quotes '' " and a backslash \\ and\na newline',
    '\x00ff0000017f'::bytea, '2024-02-29 23:59:59.123456+05:30', '{"a": [1, 2.5, null, {"b": "ü"}], "c": true}',
    ARRAY[1, NULL, 3], ARRAY['x', NULL, 'with,comma', '"quoted"', ''],
    42, 'happy', ROW(7, 'seven'), NULL, 'NaN', '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
INSERT INTO rt_orig (i, n, f, t) VALUES (0, 'NaN', '-Infinity', '');
CREATE TABLE rt (LIKE rt_orig);
GRANT SELECT ON rt_orig TO regress_atx_user;
GRANT INSERT ON rt TO regress_atx_user;

-- Emitted by a non-superuser, one message per row, the columns as typed parameters.
SET ROLE regress_atx_user;
SELECT count(atx_log('INSERT INTO public.rt VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)',
                     i, b, n, t, by, ts, j, a, ta, d, e, p, nul, f, iv, u)) AS emitted
  FROM rt_orig;
RESET ROLE;

-- How the text format shows them: built-in types as text, user-defined
-- (domain, enum, composite) binary values as hex.
SELECT regexp_replace(data, '^.*params=', 'params=')
  FROM pg_logical_slot_peek_changes(regress_slot(), NULL, NULL, 'format', 'text');

SELECT t.n, a.command, a.rows FROM regress_take() t, LATERAL atx.apply(t.lsn) a ORDER BY t.n;

-- Every column equal (IS NOT DISTINCT FROM), row by row.
SELECT o.i,
       o.b IS NOT DISTINCT FROM r.b AS b, o.n IS NOT DISTINCT FROM r.n AS n, o.t IS NOT DISTINCT FROM r.t AS t,
       o.by IS NOT DISTINCT FROM r.by AS by, o.ts IS NOT DISTINCT FROM r.ts AS ts, o.j IS NOT DISTINCT FROM r.j AS j,
       o.a IS NOT DISTINCT FROM r.a AS a, o.ta IS NOT DISTINCT FROM r.ta AS ta, o.d IS NOT DISTINCT FROM r.d AS d,
       o.e IS NOT DISTINCT FROM r.e AS e, o.p IS NOT DISTINCT FROM r.p AS p, r.nul IS NULL AS nul,
       o.f IS NOT DISTINCT FROM r.f AS f, o.iv IS NOT DISTINCT FROM r.iv AS iv, o.u IS NOT DISTINCT FROM r.u AS u
  FROM rt_orig o JOIN rt r ON r.i = o.i ORDER BY o.i;
SELECT (SELECT count(*) FROM rt) AS applied_rows,
       (SELECT count(*) FROM (SELECT * FROM rt_orig EXCEPT ALL SELECT * FROM rt) x) AS differences;
SELECT * FROM rt ORDER BY i;

-- An explicit VARIADIC array is expanded into parameters of its element
-- type; unknown literals become text; a type without send/receive (aclitem)
-- travels as text and comes back through its input function.
TRUNCATE rt;
SET ROLE regress_atx_user;
SELECT atx_log('INSERT INTO public.rt (i, t, ta) VALUES ($1::int, $2, ARRAY[$3])', VARIADIC ARRAY['5', 'five', 'x'])
       IS NOT NULL AS emitted;
SELECT atx_log('INSERT INTO public.rt (i, t) VALUES ($1::int, $2)', '6', 'unknown literal') IS NOT NULL AS emitted;
SELECT atx_log('INSERT INTO public.rt (i, t) VALUES (7, $1::text)', '=r/regress_atx_user'::aclitem) IS NOT NULL AS emitted;
RESET ROLE;
SELECT regexp_replace(data, '^.*params=', 'params=')
  FROM pg_logical_slot_peek_changes(regress_slot(), NULL, NULL, 'format', 'text');
CREATE TEMP TABLE rt_msg AS SELECT * FROM regress_take();
SELECT atx.decode(payload)->'params'->0 AS param FROM rt_msg WHERE n = 3;
SELECT t.n, a.command, a.rows FROM rt_msg t, LATERAL atx.apply(t.lsn) a ORDER BY t.n;
SELECT i, t, ta FROM rt ORDER BY i;

-- The caller's client_encoding and the applying session's are not the values'
-- encoding: send and receive run in the database's encoding. Text with é (U+00E9),
-- a composite and an array holding it, emitted under LATIN1, UTF8 and WIN1252
-- and each applied under another of them, arrive as the caller's value.
TRUNCATE rt;
SET ROLE regress_atx_user;
SET client_encoding = 'LATIN1';
SELECT atx_log('INSERT INTO public.rt (i, t, ta, p) VALUES ($1, $2, $3, $4)', 8, U&'caf\00E9', ARRAY[U&'\00E9t\00E9'],
               ROW(8, U&'na\00EFve')::regress_pair) IS NOT NULL AS emitted;
RESET client_encoding;
SELECT atx_log('INSERT INTO public.rt (i, t) VALUES ($1, $2)', 9, U&'caf\00E9') IS NOT NULL AS emitted;
SET client_encoding = 'WIN1252';
SELECT atx_log('INSERT INTO public.rt (i, t) VALUES ($1, $2)', 10, U&'caf\00E9') IS NOT NULL AS emitted;
RESET client_encoding;
RESET ROLE;
CREATE TEMP TABLE rt_enc AS SELECT * FROM regress_take();
SET client_encoding = 'WIN1252';
SELECT t.n, a.command, a.rows FROM rt_enc t, LATERAL atx.apply(t.lsn) a WHERE t.n = 1;
SET client_encoding = 'LATIN1';
SELECT t.n, a.command, a.rows FROM rt_enc t, LATERAL atx.apply(t.lsn) a WHERE t.n = 2;
RESET client_encoding;
SELECT t.n, a.command, a.rows FROM rt_enc t, LATERAL atx.apply(t.lsn) a WHERE t.n = 3;
SELECT i, t = U&'caf\00E9' AS t_ok,
       i <> 8 OR (ta = ARRAY[U&'\00E9t\00E9'] AND p = ROW(8, U&'na\00EFve')::regress_pair) AS array_composite_ok
  FROM rt ORDER BY i;

SELECT pg_drop_replication_slot(regress_slot());
DROP TABLE rt, rt_orig;
DROP TYPE regress_pair;
DROP DOMAIN regress_posint;
DROP TYPE regress_mood;
