-- Nothing one message leaves in the apply session reaches a later message of another role.
-- Both run in this backend, as they would in one apply session: a message of
-- regress_atx_other leaves state behind, a message of regress_atx_user looks for it.
SELECT atx.ensure_slot() = regress_slot() AS slot_created;

CREATE TABLE probe (kind text, seen text);
GRANT INSERT ON probe TO regress_atx_user, regress_atx_other;
CREATE TABLE secret_t (v text);
INSERT INTO secret_t VALUES ('only regress_atx_other may read this');
GRANT SELECT ON secret_t TO regress_atx_other;
CREATE SEQUENCE other_seq;
GRANT USAGE ON other_seq TO regress_atx_other;
-- A deferred constraint trigger owned by regress_atx_other that leaves what a restricted run
-- would refuse: a temporary table, a cursor WITH HOLD, a prepared statement, LISTEN.
CREATE TABLE deferred_other (v int);
GRANT INSERT ON deferred_other TO regress_atx_other;
CREATE FUNCTION leave_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE left_behind (v text);
    INSERT INTO left_behind VALUES ('temp row of regress_atx_other');
    EXECUTE 'DECLARE held CURSOR WITH HOLD FOR SELECT v FROM public.secret_t';
    EXECUTE 'PREPARE left_plan AS SELECT 1';
    EXECUTE 'LISTEN left_channel';
    RETURN NULL;
END $$;
ALTER FUNCTION leave_state() OWNER TO regress_atx_other;
CREATE CONSTRAINT TRIGGER leave_state AFTER INSERT ON deferred_other
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION leave_state();

SET ROLE regress_atx_other;
SELECT atx_log('SELECT pg_advisory_lock(4242)') IS NOT NULL AS lock;
SELECT atx_log('DECLARE other_cursor CURSOR FOR SELECT v FROM public.secret_t') IS NOT NULL AS cursor;
SELECT atx_log($$SELECT nextval('public.other_seq')$$) IS NOT NULL AS seq;
SELECT atx_log($$SELECT set_config('app.secret', 'secret of regress_atx_other', false)$$) IS NOT NULL AS placeholder;
SELECT atx_log('SELECT setseed(0.5)') IS NOT NULL AS seed;
SELECT atx_log('SET search_path = pg_temp') IS NOT NULL AS search_path;
-- Refused inside a restricted run (42501): each is dead-lettered.
SELECT atx_log('DECLARE held CURSOR WITH HOLD FOR SELECT 1') IS NOT NULL AS hold_cursor;
SELECT atx_log('PREPARE other_plan AS SELECT 1') IS NOT NULL AS prepare;
SELECT atx_log('LISTEN other_channel') IS NOT NULL AS listen;
SELECT atx_log('CREATE TEMP TABLE other_tmp (v int)') IS NOT NULL AS temp_table;
-- Unrestricted because of its deferred trigger; what the trigger left is cleared after it.
SELECT atx_log('INSERT INTO public.deferred_other VALUES (1)') IS NOT NULL AS deferred;
RESET ROLE;

SELECT setseed(0.5);
SELECT random() AS after_seed \gset

SET ROLE regress_atx_user;
SELECT atx_log($$INSERT INTO public.probe
  SELECT 'advisory locks', count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
  UNION ALL SELECT 'cursors', coalesce(string_agg(name, ','), 'none') FROM pg_cursors
  UNION ALL SELECT 'prepared statements', coalesce(string_agg(name, ','), 'none') FROM pg_prepared_statements
  UNION ALL SELECT 'placeholder', coalesce(nullif(current_setting('app.secret', true), ''), 'unset')
  UNION ALL SELECT 'search_path', current_setting('search_path')
  UNION ALL SELECT 'listening', coalesce(string_agg(c, ','), 'none') FROM pg_listening_channels() c
  UNION ALL SELECT 'temp tables', count(*)::text FROM pg_class WHERE relpersistence = 't' AND relkind = 'r'
  UNION ALL SELECT 'random', random()::text$$) IS NOT NULL AS probe;
SELECT atx_log($q$DO $b$ BEGIN
    PERFORM lastval();
    INSERT INTO public.probe VALUES ('lastval', 'defined');
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    INSERT INTO public.probe VALUES ('lastval', 'not defined');
END $b$$q$) IS NOT NULL AS probe_lastval;
SELECT atx_log('FETCH ALL FROM other_cursor') IS NOT NULL AS probe_fetch;
RESET ROLE;

SELECT t.n, a.status, a.sqlstate, left(a.error, 70) AS error
  FROM regress_take() t, LATERAL regress_apply(t.lsn) a ORDER BY t.n;

SELECT kind, seen = :'after_seed' AS seeded_by_other FROM probe WHERE kind = 'random';
SELECT kind, seen FROM probe WHERE kind <> 'random' ORDER BY kind;
-- And this (applying) session holds nothing either.
SELECT count(*) AS advisory FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
SELECT count(*) AS cursors FROM pg_cursors;
SELECT count(*) AS prepared FROM pg_prepared_statements;

SELECT pg_drop_replication_slot(regress_slot());
DROP TABLE probe, secret_t, deferred_other;
DROP SEQUENCE other_seq;
DROP FUNCTION leave_state();
DELETE FROM atx.dead_letter;
