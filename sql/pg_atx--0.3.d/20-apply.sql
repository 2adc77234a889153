
-- ===========================================================================
-- The apply path (docs/design.md): messages named by their WAL LSN and read
-- back from this server's WAL; atx.applied records every handled message in
-- the transaction that handles it.
-- ===========================================================================

-- Idempotency keys belong to a role: another role's key never suppresses a message. Keys
-- recorded by 0.1 (role 0) keep suppressing the key for every role. (The column order is the
-- one an upgraded installation has.)
CREATE TABLE atx.idempotency_key (
    key text NOT NULL,
    message_id uuid NOT NULL,
    applied_at timestamptz NOT NULL,
    role_oid oid NOT NULL,
    PRIMARY KEY (role_oid, key)
);
COMMENT ON COLUMN atx.idempotency_key.role_oid IS 'the role whose key it is; 0: recorded by pg_atx 0.1, any role';
GRANT SELECT ON atx.idempotency_key TO atx_applier;

-- Messages that will not succeed, with who called and the error; each role reads its own.
CREATE TABLE atx.dead_letter (
    id bigserial PRIMARY KEY,
    message_id uuid UNIQUE,
    source_lsn pg_lsn,
    caller_role name,
    caller_role_oid oid,
    caller_xid xid8,
    emitted_at timestamptz,
    statement text,
    params jsonb,
    idempotency_key text,
    payload bytea NOT NULL,
    sqlstate text NOT NULL,
    error text NOT NULL,
    attempts int NOT NULL,
    first_failed_at timestamptz NOT NULL,
    dead_at timestamptz NOT NULL DEFAULT now(),
    caller_session_user name,
    detail text,
    hint text
);
ALTER TABLE atx.dead_letter ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_messages ON atx.dead_letter FOR SELECT
    USING (caller_role_oid OPERATOR(pg_catalog.=)
           (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER));
CREATE POLICY applier_reads_all ON atx.dead_letter FOR SELECT TO atx_applier USING (true);
GRANT SELECT ON atx.dead_letter TO atx_applier;
GRANT SELECT ON atx.dead_letter TO PUBLIC;
-- Only the apply functions (SECURITY DEFINER) draw ids from it.
REVOKE ALL ON SEQUENCE atx.dead_letter_id_seq FROM PUBLIC;
COMMENT ON TABLE atx.dead_letter IS
    'messages that could not be applied; each role sees its own (row-level security); NOTIFY atx_dead_letter (no payload) for each new one';

-- Dead letters and applied keys are state, not configuration: pg_dump must carry them.
SELECT pg_catalog.pg_extension_config_dump('atx.dead_letter', '');
SELECT pg_catalog.pg_extension_config_dump('atx.dead_letter_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('atx.idempotency_key', '');

-- Every handled message: applied, duplicate (its key), dead (dead-lettered), cancelled (its
-- atx_exec caller stopped waiting; dead-lettered), started (a non-atomic run began), in the
-- transaction that handled it. A message id found here is never applied again (a cancelled one
-- only by a caller that waits for it again: it never ran; a parked one, below, by its own run);
-- records below the horizon are pruned (atx.prune), except those of nested emits whose parent is
-- dead-lettered, and such messages are refused as handled.
-- Parked: a message that waits behind a long-running statement of its own lane or role is copied
-- here (payload) by atx.park, so that the slot can move past it; it is then run from this copy,
-- and the transaction that handles it clears the payload. A record with a payload is never pruned.
CREATE TABLE atx.applied (
    message_id uuid PRIMARY KEY,
    lsn pg_lsn NOT NULL,
    status text NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    outcome jsonb,  -- what a waiting atx_exec was (or is to be) told
    parent_id uuid, -- a nested emit: the message that emitted it
    payload bytea,  -- parked: the message, until it is handled
    CONSTRAINT applied_status_check
        CHECK (status IN ('applied', 'duplicate', 'dead', 'cancelled', 'started', 'parked'))
);
CREATE INDEX applied_lsn ON atx.applied USING brin (lsn);
CREATE INDEX applied_parked ON atx.applied (lsn) WHERE payload IS NOT NULL;
COMMENT ON TABLE atx.applied IS 'pg_atx messages handled and not yet below atx.apply_horizon (exactly once)';

CREATE TABLE atx.apply_horizon (
    lsn pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    one boolean PRIMARY KEY DEFAULT true CHECK (one)
);
COMMENT ON TABLE atx.apply_horizon IS 'every pg_atx message starting before lsn was handled (the slot confirmed it)';
INSERT INTO atx.apply_horizon (lsn) VALUES ('0/0');
GRANT SELECT ON atx.applied, atx.apply_horizon TO atx_applier;

-- The apply entry points below are SECURITY DEFINER: they read the WAL, write atx.applied,
-- atx.dead_letter and atx.idempotency_key, none of which their callers (atx_applier members) may
-- touch themselves, and they run each message as its caller's role. Each pins its search_path
-- (SET clause, and again inside, in ext/apply_batch.cc); what a message runs gets the caller's
-- own settings back in a nested GUC level.
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

-- What an atx-applier of 0.2 calls: it is told to upgrade (docs/upgrade.md).
CREATE FUNCTION atx.apply_batch(lsns pg_lsn[], attempts int[], first_failed timestamptz[],
    max_attempts int, timeout_ms int, wake_at_commit boolean,
    OUT lsn pg_lsn, OUT message_id uuid, OUT status text, OUT sqlstate text, OUT error text,
    OUT failure text, OUT command text, OUT rows bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'atx_apply_batch_v2'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean) IS
    'the apply call of atx-applier 0.2: refused, with what to do';

-- The apply backends of this database, what each runs and until when; and atx-applier's way to
-- end one that overstays its message's limit (ext/apply_registry.cc).
CREATE FUNCTION atx.apply_activity(OUT pid int, OUT state text, OUT lsn pg_lsn, OUT message_id uuid,
    OUT role_oid oid, OUT started_at timestamptz, OUT deadline timestamptz, OUT exited_at timestamptz,
    OUT terminated boolean, OUT now timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'atx_apply_activity'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION atx.apply_activity() IS
    'apply backends of this database: the message each runs, since when and until when; exit records of those that died running one';

CREATE FUNCTION atx.terminate_overdue(pid int, lsn pg_lsn)
RETURNS boolean
AS 'MODULE_PATHNAME', 'atx_terminate_overdue'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION atx.terminate_overdue(int, pg_lsn) IS
    'end the apply backend pid if it still runs the message at lsn past its deadline';

CREATE FUNCTION atx.apply(lsn pg_lsn, OUT message_id uuid, OUT status text, OUT command text, OUT rows bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'atx_apply_one'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.apply(pg_lsn) IS 'apply one pg_atx message by hand; raises its error';

CREATE FUNCTION atx.dead_letter_message(lsn pg_lsn, verdict text, attempts int DEFAULT 1,
    first_failed timestamptz DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'atx_dead_letter_message'
LANGUAGE C VOLATILE SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.dead_letter_message(pg_lsn, text, int, timestamptz) IS
    'dead-letter the pg_atx message at lsn without running it, for a fixed verdict: timeout, backend_lost, in_doubt, operator (NULL: it was handled before)';

CREATE FUNCTION atx.wake(ids uuid[])
RETURNS int
AS 'MODULE_PATHNAME', 'atx_wake'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.wake(uuid[]) IS 'hand waiting atx_exec callers the stored outcomes of these messages';

CREATE FUNCTION atx.park(lsns pg_lsn[], OUT lsn pg_lsn, OUT status text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'atx_park'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.park(pg_lsn[]) IS
    'copy the pg_atx messages at these LSNs into atx.applied (status parked), so that the slot may move past them before they run';

CREATE FUNCTION atx.prune()
RETURNS pg_lsn
AS 'MODULE_PATHNAME', 'atx_prune'
LANGUAGE C VOLATILE SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.prune() IS 'move atx.apply_horizon to the slot''s confirmed position and forget older records';

CREATE FUNCTION atx.unapplied(lsns pg_lsn[])
RETURNS SETOF pg_lsn
AS 'MODULE_PATHNAME', 'atx_unapplied'
LANGUAGE C STABLE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.unapplied(pg_lsn[]) IS 'the LSNs among these of which this server has no handled record';

CREATE FUNCTION atx.message_at(lsn pg_lsn)
RETURNS bytea
AS 'MODULE_PATHNAME', 'atx_message_at'
LANGUAGE C STABLE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.message_at(pg_lsn) IS 'the payload of the pg_atx message at lsn, read from the WAL';

CREATE FUNCTION atx.retry_dead_letter(id bigint, timeout_ms int DEFAULT 60000, OUT message_id uuid, OUT status text,
    OUT sqlstate text, OUT error text)
RETURNS record
AS 'MODULE_PATHNAME', 'atx_retry_dead_letter'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION atx.retry_dead_letter(bigint, int) IS
    'run a dead letter''s message again (at most timeout_ms): applied (the dead letter goes), already (it was applied before: not run, the dead letter goes) or failed (it stays, one more attempt)';

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

REVOKE ALL ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean, text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.park(pg_lsn[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.apply_activity() FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.terminate_overdue(int, pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.apply(pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.dead_letter_message(pg_lsn, text, int, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.wake(uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.prune() FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.unapplied(pg_lsn[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.message_at(pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION atx.retry_dead_letter(bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean, text, int) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.apply_batch(pg_lsn[], int[], timestamptz[], int, int, boolean) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.park(pg_lsn[]) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.apply_activity() TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.terminate_overdue(int, pg_lsn) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.apply(pg_lsn) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.dead_letter_message(pg_lsn, text, int, timestamptz) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.wake(uuid[]) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.prune() TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.unapplied(pg_lsn[]) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.message_at(pg_lsn) TO atx_applier;
GRANT EXECUTE ON FUNCTION atx.retry_dead_letter(bigint, int) TO atx_applier;

-- Messages that cannot run inside a transaction block run as a top-level statement of a
-- background worker connected as their caller (ext/nonatomic.cc): started, then applied or
-- dead-lettered, never run twice (a started one is in doubt: 40003).
CREATE PROCEDURE atx.run_nonatomic(lsn pg_lsn, attempts int, first_failed timestamptz, timeout_ms int,
    INOUT status text DEFAULT NULL, INOUT sqlstate text DEFAULT NULL, INOUT error text DEFAULT NULL,
    INOUT command text DEFAULT NULL)
AS 'MODULE_PATHNAME', 'atx_run_nonatomic'
LANGUAGE C;
COMMENT ON PROCEDURE atx.run_nonatomic(pg_lsn, int, timestamptz, int, text, text, text, text) IS
    'run the pg_atx message at lsn as a top-level statement of a session of its caller (CALL it at top level)';
REVOKE ALL ON PROCEDURE atx.run_nonatomic(pg_lsn, int, timestamptz, int, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE atx.run_nonatomic(pg_lsn, int, timestamptz, int, text, text, text, text) TO atx_applier;

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
