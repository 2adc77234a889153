-- What the server remembers of handled messages: atx.applied, the horizon that atx.prune()
-- moves to the slot's confirmed position, atx.unapplied() (the failover check), the same
-- message named twice in one batch, and parked messages.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;
CREATE TABLE hz(v int);
GRANT INSERT ON hz TO regress_atx_user;
SET ROLE regress_atx_user;
SELECT count(atx_log('INSERT INTO hz VALUES ($1)', g)) FROM generate_series(1, 3) g;
RESET ROLE;
CREATE TABLE hz_msg AS SELECT n, lsn FROM regress_take();
-- The first two are applied; the same LSN twice in one batch runs once.
SELECT a.status FROM atx.apply_batch((SELECT array_agg(lsn ORDER BY n) FROM hz_msg WHERE n <= 2) ||
                                     (SELECT lsn FROM hz_msg WHERE n = 2),
                                     '{1,1,1}', '{NULL,NULL,NULL}', 1, 0, true, 'regress') a;
SELECT array_agg(v ORDER BY v) FROM hz;
-- The third is not handled: atx.unapplied names it, in FROM and in the select list.
SELECT (SELECT n FROM hz_msg WHERE lsn = u) AS unapplied
  FROM atx.unapplied((SELECT array_agg(lsn) FROM hz_msg)) u;
SELECT count(*) AS unapplied FROM (SELECT atx.unapplied((SELECT array_agg(lsn) FROM hz_msg))) x;
-- Only the applier may ask.
SET ROLE regress_atx_user;
SELECT regress_try($$SELECT atx.unapplied('{0/0}')$$);
SELECT regress_try($$SELECT atx.prune()$$);
RESET ROLE;
-- prune(): the horizon follows the slot's confirmed position (regress_take consumed the slot,
-- so it stands past all three); the records below it go.
SELECT atx.prune() = (SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = regress_slot()) AS horizon_is_slot;
SELECT count(*) AS records_left FROM atx.applied WHERE lsn < (SELECT lsn FROM atx.apply_horizon);
-- Below the horizon a message counts as handled: also the third, which never ran (the
-- applier confirms nothing it has not handled; whoever moved the slot by hand skipped it).
SELECT a.status FROM atx.apply_batch((SELECT array_agg(lsn ORDER BY n) FROM hz_msg), '{1,1,1}',
                                     '{NULL,NULL,NULL}', 1, 0, true, 'regress') a;
SELECT count(*) AS unapplied_below_horizon FROM atx.unapplied((SELECT array_agg(lsn) FROM hz_msg));
SELECT regexp_replace(regress_try(format('SELECT atx.apply(%L)', (SELECT lsn FROM hz_msg WHERE n = 1))),
                      '[0-9A-F]+/[0-9A-F]+', '<lsn>', 'g') AS refused;
SELECT array_agg(v ORDER BY v) FROM hz;

-- Parked (atx.park): a message copied into its atx.applied record so that the slot may pass it
-- before it runs. It runs from that copy, below the horizon, once; prune keeps the copy until
-- then; a handled message is not parked; an operator can dead-letter a parked one.
CREATE TABLE pk(v int);
GRANT INSERT ON pk TO regress_atx_user;
SET ROLE regress_atx_user;
SELECT count(atx_log('INSERT INTO pk VALUES ($1)', g)) FROM generate_series(1, 4) g;
RESET ROLE;
CREATE TABLE pk_msg AS SELECT n, lsn FROM regress_take();
SELECT a.status FROM atx.apply_batch(ARRAY[(SELECT lsn FROM pk_msg WHERE n = 1)], '{1}', '{NULL}', 1, 0, true,
                                     'regress') a;
SELECT (SELECT n FROM pk_msg m WHERE m.lsn = p.lsn) AS n, p.status
  FROM atx.park((SELECT array_agg(lsn ORDER BY n) FROM pk_msg)) p ORDER BY 1;
-- Asked again (an applier that lost the answer): the copies are there, still parked.
SELECT (SELECT n FROM pk_msg m WHERE m.lsn = p.lsn) AS n, p.status
  FROM atx.park((SELECT array_agg(lsn ORDER BY n) FROM pk_msg)) p ORDER BY 1;
SELECT m.n, a.status, a.payload IS NOT NULL AS has_copy FROM atx.applied a JOIN pk_msg m USING (lsn) ORDER BY m.n;
-- The slot stands past all four (regress_take): prune moves the horizon past them and keeps the
-- parked records only.
SELECT atx.prune() IS NOT NULL AS pruned;
SELECT m.n, a.status FROM atx.applied a JOIN pk_msg m USING (lsn) ORDER BY m.n;
-- An operator dead-letters the fourth without running it; the second and third run from their
-- copies, the first counts as handled before.
SELECT atx.dead_letter_message((SELECT lsn FROM pk_msg WHERE n = 4), 'operator') IS NOT NULL AS dead_lettered;
SELECT (SELECT n FROM pk_msg m WHERE m.lsn = a.lsn) AS n, a.status
  FROM atx.apply_batch((SELECT array_agg(lsn ORDER BY n) FROM pk_msg), '{1,1,1,1}', '{NULL,NULL,NULL,NULL}', 1, 0,
                       true, 'regress') a ORDER BY 1;
SELECT array_agg(v ORDER BY v) AS applied_once FROM pk;
SELECT m.n, a.status, a.payload IS NOT NULL AS has_copy FROM atx.applied a JOIN pk_msg m USING (lsn) ORDER BY m.n;
SELECT sqlstate, statement FROM atx.dead_letter WHERE source_lsn = (SELECT lsn FROM pk_msg WHERE n = 4);
-- Once more: everything was handled, nothing runs again.
SELECT a.status
  FROM atx.apply_batch((SELECT array_agg(lsn ORDER BY n) FROM pk_msg), '{1,1,1,1}', '{NULL,NULL,NULL,NULL}', 1, 0,
                       true, 'regress') a;
SELECT array_agg(v ORDER BY v) AS applied_once FROM pk;
-- A crash takes the slot's confirmed position back (it is saved at checkpoints), and the slot
-- sends these again, long after prune deleted their records. The applier may park them (their
-- lane waits behind a stall): below the horizon they are handled, not parked, and do not run
-- again from a copy.
SET ROLE regress_atx_user;
SELECT atx_log('SELECT 1') IS NOT NULL AS emitted;
RESET ROLE;
SELECT count(*) AS taken FROM regress_take();
SELECT atx.prune() IS NOT NULL AS pruned;
SELECT count(*) AS records_left FROM atx.applied a JOIN pk_msg m USING (lsn);
SELECT (SELECT n FROM pk_msg m WHERE m.lsn = p.lsn) AS n, p.status
  FROM atx.park((SELECT array_agg(lsn ORDER BY n) FROM pk_msg)) p ORDER BY 1;
SELECT count(*) AS parked_again FROM atx.applied a JOIN pk_msg m USING (lsn);
SELECT a.status
  FROM atx.apply_batch((SELECT array_agg(lsn ORDER BY n) FROM pk_msg), '{1,1,1,1}', '{NULL,NULL,NULL,NULL}', 1, 0,
                       true, 'regress') a;
SELECT array_agg(v ORDER BY v) AS applied_once FROM pk;
-- A message that runs may be parked, so that the slot passes it while it runs. A non-atomic one
-- is recorded 'started' (without its copy) before it runs: parking gives the record its copy and
-- leaves it started, so that after a crash the applier loads it and dead-letters it in doubt,
-- never runs it again.
SET ROLE regress_atx_user;
SELECT atx_log('INSERT INTO pk VALUES (5)') IS NOT NULL AS emitted;
RESET ROLE;
CREATE TABLE pk_run AS SELECT lsn FROM regress_take();
SELECT status FROM atx.park((SELECT array_agg(lsn) FROM pk_run));
-- As the non-atomic worker's claim leaves it (ext/nonatomic.cc):
UPDATE atx.applied SET status = 'started', payload = NULL WHERE lsn = (SELECT lsn FROM pk_run);
SELECT status FROM atx.park((SELECT array_agg(lsn) FROM pk_run));
SELECT status, payload IS NOT NULL AS has_copy FROM atx.applied WHERE lsn = (SELECT lsn FROM pk_run);
SELECT status FROM atx.park((SELECT array_agg(lsn) FROM pk_run));  -- parked before: still parked
SELECT a.status, a.sqlstate
  FROM atx.apply_batch((SELECT array_agg(lsn) FROM pk_run), '{1}', '{NULL}', 1, 0, true, 'regress') a;
SELECT count(*) AS never_ran FROM pk WHERE v = 5;
SELECT status, payload IS NOT NULL AS has_copy FROM atx.applied WHERE lsn = (SELECT lsn FROM pk_run);
DELETE FROM atx.dead_letter WHERE source_lsn = (SELECT lsn FROM pk_run);
DROP TABLE pk_run;
-- Only the applier parks.
SET ROLE regress_atx_user;
SELECT regress_try($$SELECT atx.park('{0/0}')$$);
RESET ROLE;
DROP TABLE pk, pk_msg;

-- An operator's retry of a dead-lettered parent writes its nested emits again under the same
-- ids; their first copies were applied, and their records must outlive every prune until the
-- applier has seen the new copies (the retried parent's record stands past them).
CREATE TABLE rn_gate(g int);
CREATE TABLE rn_once(v text);
GRANT SELECT ON rn_gate TO regress_atx_user;
GRANT INSERT ON rn_once TO regress_atx_user;
SET ROLE regress_atx_user;
SELECT atx_log($p$DO $d$BEGIN PERFORM atx_log('INSERT INTO public.rn_once VALUES (''nested'')');
                         PERFORM 1 / (SELECT count(*) FROM public.rn_gate)::int; END$d$$p$) IS NOT NULL AS emitted;
RESET ROLE;
CREATE TABLE rn_msg AS SELECT n, lsn FROM regress_take();
SELECT a.status, a.sqlstate FROM atx.apply_batch((SELECT array_agg(lsn ORDER BY n) FROM rn_msg), '{1}', '{NULL}',
                                                 1, 0, true, 'regress') a;
CREATE TABLE rn_child AS SELECT n, lsn FROM regress_take();
SELECT a.status FROM atx.apply_batch((SELECT array_agg(lsn ORDER BY n) FROM rn_child), '{1}', '{NULL}', 1, 0, true,
                                     'regress') a;
SELECT atx.prune() IS NOT NULL AS pruned;
SELECT count(*) AS child_records_kept FROM atx.applied WHERE parent_id IS NOT NULL;
-- The cause is fixed and the parent retried: its nested emit is written again.
INSERT INTO rn_gate VALUES (1);
SELECT status FROM atx.retry_dead_letter((SELECT id FROM atx.dead_letter WHERE statement LIKE '%rn_gate%'));
SELECT atx.prune() IS NOT NULL AS pruned;
SELECT count(*) AS child_records_kept FROM atx.applied WHERE parent_id IS NOT NULL;
CREATE TABLE rn_again AS SELECT n, lsn FROM regress_take();
-- Parked behind a stalled lane, the new copy is 'handled': its run can only find the record, so
-- the applier lets the slot pass it. With a cancelled record, which a waited copy takes over, it
-- may still run: 'exists'.
SELECT status FROM atx.park((SELECT array_agg(lsn ORDER BY n) FROM rn_again));
UPDATE atx.applied SET status = 'cancelled' WHERE parent_id IS NOT NULL;
SELECT status FROM atx.park((SELECT array_agg(lsn ORDER BY n) FROM rn_again));
UPDATE atx.applied SET status = 'applied' WHERE parent_id IS NOT NULL;
SELECT a.status FROM atx.apply_batch((SELECT array_agg(lsn ORDER BY n) FROM rn_again), '{1}', '{NULL}', 1, 0, true,
                                     'regress') a;
SELECT v, count(*) AS applied FROM rn_once GROUP BY v;
-- Once the slot passed the new copies, the records go.
SELECT atx.prune() IS NOT NULL AS pruned;
SELECT count(*) AS child_records_kept FROM atx.applied WHERE parent_id IS NOT NULL;
DROP TABLE rn_gate, rn_once, rn_msg, rn_child, rn_again;
DROP TABLE hz, hz_msg;
SELECT pg_drop_replication_slot(regress_slot());
