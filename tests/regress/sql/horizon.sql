-- What the server remembers of handled messages: atx.applied, the horizon that atx.prune()
-- moves to the slot's confirmed position, atx.unapplied() (the failover check), and the same
-- message named twice in one batch.
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
DROP TABLE hz, hz_msg;
SELECT pg_drop_replication_slot(regress_slot());
