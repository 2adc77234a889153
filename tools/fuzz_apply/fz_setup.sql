-- The fuzzer's cast, made once in the template cluster by the superuser (fz_cluster.Template).
--
--   fz_applier          the applier's login role, as docs/setup.md sets it up
--   fz_victim           writes a steady stream and checks what it sees (schema victim)
--   fz_mal1, fz_mal2    attackers: ordinary login roles, each a member of two NOLOGIN groups
--   fz_g1a .. fz_g2b    the groups (an attacker emits as itself and after SET ROLE group)
--   fz_h                the harness's own functions (superuser only)
CREATE EXTENSION pg_walinspect;

CREATE ROLE fz_applier LOGIN REPLICATION;
GRANT atx_applier TO fz_applier;
CREATE ROLE fz_victim LOGIN;
CREATE ROLE fz_g1a NOLOGIN;
CREATE ROLE fz_g1b NOLOGIN;
CREATE ROLE fz_g2a NOLOGIN;
CREATE ROLE fz_g2b NOLOGIN;
CREATE ROLE fz_mal1 LOGIN IN ROLE fz_g1a, fz_g1b;
CREATE ROLE fz_mal2 LOGIN IN ROLE fz_g2a, fz_g2b;

-- ---------------------------------------------------------------------------------------------
-- The attackers' playground: everything here is theirs to use, as any role's own schema would be.
CREATE SCHEMA fz_att;
CREATE TABLE fz_att.t(id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
INSERT INTO fz_att.t SELECT i FROM generate_series(1, 20) i;
CREATE TABLE fz_att.sink(v text, at timestamptz DEFAULT clock_timestamp());
-- Exactly once: every tagged insert a generated message (or its nested emit) makes must land at
-- most once, and once when its message was applied.
CREATE TABLE fz_att.once(tag text NOT NULL, at timestamptz DEFAULT clock_timestamp());
-- A message that divides by the count of its gate fails until the operator opens the gate (row 11).
CREATE TABLE fz_att.gate(g int);
-- A deferred trigger: PostgreSQL refuses to queue one in a security-restricted operation, so the
-- apply side runs such a statement again with fewer restrictions; the trigger runs hostile code.
CREATE TABLE fz_att.dtab(id int);
CREATE FUNCTION fz_att.dtrig() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('rt.tenant', 'FZCANARY-deferred', false);
    PERFORM set_config('DateStyle', 'SQL, DMY', false);
    RAISE WARNING USING ERRCODE = '57P01', MESSAGE = 'terminating connection due to administrator command';
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER dtrig AFTER INSERT ON fz_att.dtab DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION fz_att.dtrig();
-- Values of types whose receive function always fails, readable by any role (row 1).
CREATE TABLE fz_att.mt(a int, b int);
INSERT INTO fz_att.mt SELECT i % 10, i % 10 FROM generate_series(1, 1000) i;
CREATE STATISTICS fz_att.mt_st (ndistinct, dependencies, mcv) ON a, b FROM fz_att.mt;
ANALYZE fz_att.mt;
CREATE TYPE fz_att.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE fz_att.pt AS (a int, b text);
CREATE DOMAIN fz_att.posint AS int CHECK (VALUE > 0);
-- The search_path trap: resolves before pg_catalog for a search_path that lists fz_att first.
CREATE FUNCTION fz_att.upper(text) RETURNS text LANGUAGE sql AS $$ SELECT 'FZCANARY-hijack'::text $$;
-- Sleeps for secs seconds, swallowing every cancel: the limit enforced from inside the statement
-- (statement_timeout, a cancel) cannot end it (row 3).
CREATE FUNCTION fz_att.stall(secs float8) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    WHILE clock_timestamp() < t0 + secs * interval '1 s' LOOP
        BEGIN
            PERFORM pg_sleep(0.2);
        EXCEPTION WHEN query_canceled THEN NULL;
        END;
    END LOOP;
END $$;
-- Row 7: a message that calls atx_exec on itself (caught, abandoned and applied later), then stalls.
CREATE FUNCTION fz_att.hog(secs float8) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('atx.exec_timeout', '1', true);
    PERFORM set_config('atx.exec_on_abandon', 'apply', true);
    BEGIN
        PERFORM atx_exec('SELECT fz_att.hog($1)', secs);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    PERFORM fz_att.stall(secs);
END $$;
-- Row 8: a procedure that atx_execs itself (caught), COMMITs (non-atomic), then stalls.
CREATE PROCEDURE fz_att.na_hog(secs float8) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('atx.exec_timeout', '1', false);
    PERFORM set_config('atx.exec_on_abandon', 'apply', false);
    BEGIN
        PERFORM atx_exec('CALL fz_att.na_hog($1)', secs);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    COMMIT;
    PERFORM fz_att.stall(secs);
END $$;
CREATE PROCEDURE fz_att.commit_loop(secs float8) LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    WHILE clock_timestamp() < t0 + secs * interval '1 s' LOOP
        INSERT INTO fz_att.sink VALUES ('commit_loop');
        COMMIT;
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;

DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['fz_mal1', 'fz_mal2', 'fz_g1a', 'fz_g1b', 'fz_g2a', 'fz_g2b'] LOOP
        EXECUTE format('GRANT USAGE, CREATE ON SCHEMA fz_att TO %I', r);
        EXECUTE format('GRANT ALL ON ALL TABLES IN SCHEMA fz_att TO %I', r);
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA fz_att TO %I', r);
        EXECUTE format('GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA fz_att TO %I', r);
        EXECUTE format('GRANT USAGE ON TYPE fz_att.mood, fz_att.pt, fz_att.posint TO %I', r);
    END LOOP;
END $$;
-- pg_stats_ext shows statistics values to roles that may read the columns; owner: an attacker.
ALTER TABLE fz_att.mt OWNER TO fz_mal1;

-- ---------------------------------------------------------------------------------------------
-- The victim.
CREATE SCHEMA victim AUTHORIZATION fz_victim;
-- Its functions are for everyone (victim.enqueue); its tables are its own.
GRANT USAGE ON SCHEMA victim TO PUBLIC;
GRANT SELECT ON atx.audit_log TO fz_victim;        -- for LIKE, below; revoked after
SET ROLE fz_victim;
-- Its stream: one row per message, numbered per lane; seen = what the statement saw.
CREATE TABLE victim.log(lane int NOT NULL, n int NOT NULL, kind text NOT NULL, t0 timestamptz NOT NULL,
                        t1 timestamptz NOT NULL DEFAULT clock_timestamp(), seen jsonb);
CREATE INDEX ON victim.log(lane, n);
-- A secret nobody else may touch (one NULL value, for transform_null_equals).
CREATE TABLE victim.secret(k int PRIMARY KEY, v text);
INSERT INTO victim.secret SELECT i, CASE WHEN i = 7 THEN NULL ELSE md5(i::text) END FROM generate_series(1, 100) i;
-- Row 5: statements whose result depends on the settings they were parsed under.
CREATE TABLE victim.probe(tag text NOT NULL, msg text, d date, ts timestamptz, b bool,
                          at timestamptz DEFAULT clock_timestamp());
-- Row 10: what the victim's SECURITY DEFINER emitter writes.
CREATE TABLE victim.queue(v text, at timestamptz DEFAULT clock_timestamp());
-- Row 14: an audit table whose rows the attackers may not see (RLS), but may SELECT/UPDATE.
CREATE TABLE victim.aud (LIKE atx.audit_log INCLUDING DEFAULTS);
INSERT INTO victim.aud(table_name, operation, caller_role, emitted_at, message_id, caller_xid)
    SELECT 'victim.secret', 'UPDATE', 'fz_victim', now(), gen_random_uuid(), pg_current_xact_id()
    FROM generate_series(1, 3);
ALTER TABLE victim.aud ENABLE ROW LEVEL SECURITY;
CREATE POLICY nobody ON victim.aud USING (false);
GRANT SELECT, UPDATE ON victim.aud TO fz_mal1, fz_mal2, fz_g1a, fz_g1b, fz_g2a, fz_g2b;
-- What a statement sees: the settings the fuzzer probes (the list is fz_victim.PROBED, put here
-- by fz_cluster) and functions resolved through search_path. NULL for a placeholder nobody set.
CREATE FUNCTION victim.probed() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$ SELECT ARRAY[@PROBED@]::text[] $$;
CREATE FUNCTION victim.seen() RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('current_user', current_user::text, 'upper', upper('a'),
                              'tne', (length('x') = NULL) IS NULL)
        || (SELECT jsonb_object_agg(n, current_setting(n, true)) FROM unnest(victim.probed()) n)
$$;
-- Row 10: a SECURITY DEFINER emitter, executable by PUBLIC.
CREATE FUNCTION victim.enqueue(v text) RETURNS uuid LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog, public AS $$
    SELECT public.atx_log('INSERT INTO victim.queue(v) VALUES ($1)', v)
$$;
GRANT EXECUTE ON FUNCTION victim.enqueue(text) TO PUBLIC;
-- A non-atomic message of the victim's (COMMIT inside: run as a top-level statement).
CREATE PROCEDURE victim.mark(lane int, n int, t0 timestamptz) LANGUAGE plpgsql AS $$
BEGIN
    COMMIT;
    INSERT INTO victim.log(lane, n, kind, t0, seen) VALUES (lane, n, 'nonatomic', t0, victim.seen());
END $$;
RESET ROLE;
REVOKE SELECT ON atx.audit_log FROM fz_victim;

-- ---------------------------------------------------------------------------------------------
-- The harness (superuser only): every genuine pg_atx message in a WAL range, named by the start
-- LSN of its record, with the head of its payload. atx.message_at checks provenance (the record
-- must be atx_log's), so a pg_logical_emit_message forgery never counts as a message.
CREATE SCHEMA fz_h;
REVOKE ALL ON SCHEMA fz_h FROM PUBLIC;
CREATE FUNCTION fz_h.messages(a pg_lsn, b pg_lsn, head int)
RETURNS TABLE(lsn pg_lsn, payload bytea) LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT w.start_lsn FROM pg_get_wal_records_info(a, b) w
              WHERE w.resource_manager = 'LogicalMessage'
                AND w.description LIKE 'non-transactional, prefix "pg\_atx"%' LOOP
        BEGIN
            lsn := r.start_lsn;
            payload := substr(atx.message_at(r.start_lsn), 1, head);
            RETURN NEXT;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
END $$;
