-- Invariants of the apply path (issue 21; docs/security.md): every message reaches a final state
-- in bounded time whatever its code does, and nothing crosses roles in the apply sessions.

-- atx.applied: cancelled messages (their atx_exec caller stopped waiting) are recorded as such, so
-- that a caller waiting for the same message again (a nested emit of a parent's new attempt) can
-- have it run; nested emits name their parent, so that atx.prune keeps their records while the
-- parent is dead-lettered (an operator's retry of the parent writes them again).
-- Messages that wait behind a long-running statement of their lane or role are parked here
-- (payload), so that the slot moves past them (atx.park).
ALTER TABLE atx.applied DROP CONSTRAINT applied_status_check;
ALTER TABLE atx.applied ADD COLUMN parent_id uuid;
ALTER TABLE atx.applied ADD COLUMN payload bytea;
ALTER TABLE atx.applied ADD CONSTRAINT applied_status_check
    CHECK (status IN ('applied', 'duplicate', 'dead', 'cancelled', 'started', 'parked'));
CREATE INDEX applied_parked ON atx.applied (lsn) WHERE payload IS NOT NULL;

COMMENT ON TABLE atx.dead_letter IS
    'messages that could not be applied; each role sees its own (row-level security); NOTIFY atx_dead_letter (no payload) for each new one';

-- The apply call gains the applier's version (an applier of 0.2 calls the old signature and is
-- told to upgrade) and reports the apply backend's memory (the applier recycles a session above
-- its bound).
CREATE OR REPLACE FUNCTION atx.apply_batch(lsns pg_lsn[], attempts int[], first_failed timestamptz[],
    max_attempts int, timeout_ms int, wake_at_commit boolean,
    OUT lsn pg_lsn, OUT message_id uuid, OUT status text, OUT sqlstate text, OUT error text,
    OUT failure text, OUT command text, OUT rows bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'atx_apply_batch_v2'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean) IS
    'the apply call of atx-applier 0.2: refused, with what to do';

CREATE FUNCTION atx.apply_batch(lsns pg_lsn[], attempts int[], first_failed timestamptz[],
    max_attempts int, timeout_ms int, wake_at_commit boolean, applier text, budget_ms int DEFAULT 0,
    OUT lsn pg_lsn, OUT message_id uuid, OUT status text, OUT sqlstate text, OUT error text,
    OUT failure text, OUT command text, OUT rows bigint, OUT backend_bytes bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'atx_apply_batch'
LANGUAGE C VOLATILE SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean, text, int) IS
    'apply the pg_atx messages starting at these LSNs, in order, each once (what atx-applier calls); after budget_ms (0: none) it takes no further message';
REVOKE ALL ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean, text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean, text, int) TO atx_applier;

CREATE FUNCTION atx.messages_between(from_lsn pg_lsn, upto_lsn pg_lsn, max_count int,
    OUT lsns pg_lsn[], OUT next_lsn pg_lsn)
RETURNS record
AS 'MODULE_PATHNAME', 'atx_messages_between'
LANGUAGE C STABLE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.messages_between(pg_lsn, pg_lsn, int) IS
    'where the pg_atx messages of this database start in [from_lsn, upto_lsn), read from the WAL (at most max_count), and where to go on: the failover check after a copied slot skipped some';
REVOKE ALL ON FUNCTION atx.messages_between(pg_lsn, pg_lsn, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.messages_between(pg_lsn, pg_lsn, int) TO atx_applier;

CREATE FUNCTION atx.park(lsns pg_lsn[], OUT lsn pg_lsn, OUT status text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'atx_park'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.park(pg_lsn[]) IS
    'copy the pg_atx messages at these LSNs into atx.applied (status parked), so that the slot may move past them before they run';
REVOKE ALL ON FUNCTION atx.park(pg_lsn[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.park(pg_lsn[]) TO atx_applier;

CREATE FUNCTION atx.apply_activity(OUT pid int, OUT state text, OUT lsn pg_lsn, OUT message_id uuid,
    OUT role_oid oid, OUT started_at timestamptz, OUT deadline timestamptz, OUT exited_at timestamptz,
    OUT terminated boolean, OUT now timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'atx_apply_activity'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION atx.apply_activity() IS
    'apply backends of this database: the message each runs, since when and until when; exit records of those that died running one';
REVOKE ALL ON FUNCTION atx.apply_activity() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.apply_activity() TO atx_applier;

CREATE FUNCTION atx.terminate_overdue(pid int, lsn pg_lsn)
RETURNS boolean
AS 'MODULE_PATHNAME', 'atx_terminate_overdue'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION atx.terminate_overdue(int, pg_lsn) IS
    'end the apply backend pid if it still runs the message at lsn past its deadline';
REVOKE ALL ON FUNCTION atx.terminate_overdue(int, pg_lsn) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.terminate_overdue(int, pg_lsn) TO atx_applier;

-- The applier's own verdicts have fixed texts: no free text of the applier role reaches a waiting
-- atx_exec caller.
DROP FUNCTION atx.dead_letter_message(pg_lsn, text, text, int, timestamptz);
CREATE FUNCTION atx.dead_letter_message(lsn pg_lsn, verdict text, attempts int DEFAULT 1,
    first_failed timestamptz DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'atx_dead_letter_message'
LANGUAGE C VOLATILE SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.dead_letter_message(pg_lsn, text, int, timestamptz) IS
    'dead-letter the pg_atx message at lsn without running it, for a fixed verdict: timeout, backend_lost, in_doubt, operator (NULL: it was handled before)';
REVOKE ALL ON FUNCTION atx.dead_letter_message(pg_lsn, text, int, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.dead_letter_message(pg_lsn, text, int, timestamptz) TO atx_applier;

-- An operator's retry runs the message under a time limit too.
DROP FUNCTION atx.retry_dead_letter(bigint);
CREATE FUNCTION atx.retry_dead_letter(id bigint, timeout_ms int DEFAULT 60000, OUT message_id uuid, OUT status text,
    OUT sqlstate text, OUT error text)
RETURNS record
AS 'MODULE_PATHNAME', 'atx_retry_dead_letter'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.retry_dead_letter(bigint, int) IS
    'run a dead letter''s message again (at most timeout_ms): applied (the dead letter goes), already (it was applied before: not run, the dead letter goes) or failed (it stays, one more attempt)';
REVOKE ALL ON FUNCTION atx.retry_dead_letter(bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.retry_dead_letter(bigint, int) TO atx_applier;

-- --durability standby-flush needs the flush position of the physical standbys; the applier's
-- role (docs/setup.md: LOGIN REPLICATION, member of atx_applier) sees only NULLs in
-- pg_stat_replication without pg_read_all_stats, which would make every commit look durable.
-- This gives it that one figure and nothing else of the view.
CREATE FUNCTION atx.standby_flush_lsn()
RETURNS pg_lsn
LANGUAGE sql STABLE SECURITY DEFINER PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    -- Physical standbys only: a logical walsender (the applier's own) is not a failover target.
    SELECT min(s.flush_lsn) FROM pg_catalog.pg_stat_replication s
     WHERE s.state = 'streaming'
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots l
                        WHERE l.active_pid = s.pid AND l.slot_type = 'logical')
$$;
COMMENT ON FUNCTION atx.standby_flush_lsn() IS
    'the lowest flush position of the streaming physical standbys (NULL: none), for atx-applier --durability standby-flush';
REVOKE ALL ON FUNCTION atx.standby_flush_lsn() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.standby_flush_lsn() TO atx_applier;
