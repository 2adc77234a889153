-- atx.current_message(): the metadata of the message being applied, to the
-- statement (as its caller); NULL outside an apply, also after a failed one.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;

CREATE TABLE cm_t (tag text, id uuid, caller_role name, role_ok boolean, caller_xid xid8,
                   emitted_at timestamptz, idempotency_key text, session_user_name name, depth int,
                   parent_id uuid);
GRANT INSERT ON cm_t TO regress_atx_user;

SELECT (atx.current_message()).id IS NULL AS null_outside, count(*) AS one_row FROM atx.current_message();

SET ROLE regress_atx_user;
BEGIN;
SELECT pg_current_xact_id() AS caller_xid \gset
SELECT atx_log_keyed('cm-1', 'INSERT INTO public.cm_t SELECT $1, id, caller_role, caller_role_oid = $2::regrole, caller_xid, emitted_at, idempotency_key, caller_session_user, depth, parent_id FROM atx.current_message()',
                     'keyed, rolled back'::text, 'regress_atx_user'::text) AS keyed_id \gset
ROLLBACK;
SELECT atx_log('INSERT INTO public.cm_t (tag, id, caller_xid) SELECT $1, id, caller_xid FROM atx.current_message()',
               'no xid'::text) AS plain_id \gset
SELECT atx_log('INSERT INTO public.cm_t (tag, id) SELECT $1, id FROM atx.current_message() WHERE 1/0 = 1', 'fails'::text) IS NOT NULL AS emitted;
-- A nested emit: its id is derived from the parent's, its lane is the parent.
SELECT atx_log($q$SELECT atx_log('INSERT INTO public.cm_t (tag, id, depth, parent_id) SELECT $1, id, depth, parent_id FROM atx.current_message()', 'nested'::text)$q$) AS parent_id \gset
RESET ROLE;

SELECT m.n, a.status, a.sqlstate FROM regress_take() m, LATERAL regress_apply(m.lsn) a ORDER BY m.n;
-- The nested message was emitted while its parent ran.
SELECT m.n, a.status, a.sqlstate FROM regress_take() m, LATERAL regress_apply(m.lsn) a ORDER BY m.n;
SELECT (atx.current_message()).id IS NULL AS null_after_apply;

SELECT tag, id = :'keyed_id'::uuid AS id_ok, caller_role, role_ok, caller_xid = :'caller_xid'::xid8 AS xid_ok,
       emitted_at <= now() AS emitted_ok, idempotency_key, session_user_name = session_user AS session_user_ok,
       depth, parent_id IS NULL AS top_level
  FROM cm_t WHERE tag = 'keyed, rolled back';
SELECT tag, depth, parent_id = :'parent_id'::uuid AS parent_ok, id <> :'parent_id'::uuid AS own_id FROM cm_t WHERE tag = 'nested';
SELECT tag, id = :'plain_id'::uuid AS id_ok, caller_xid IS NULL AS no_xid FROM cm_t WHERE tag = 'no xid';
SELECT count(*) AS failed_rows FROM cm_t WHERE tag = 'fails';

-- The caller outcome helpers.
SELECT atx.xact_outcome(:'caller_xid'::xid8) AS rolled_back, atx.xact_outcome(NULL) AS no_xid,
       atx.xact_outcome('999999999999'::xid8) AS future,
       atx.caller_outcome('999999999999'::xid8, NULL) AS unknown,
       atx.caller_outcome(:'caller_xid'::xid8, 'committed') AS persisted_wins;

SELECT pg_drop_replication_slot(regress_slot());
DROP TABLE cm_t;
TRUNCATE atx.idempotency_key;
