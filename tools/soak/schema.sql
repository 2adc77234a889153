-- The soak's tables and functions (tools/soak/soak.py runs this in database soak as postgres).
-- Every autonomous statement inserts (call_id, sub): call_id names the client's call in the
-- history, sub the message of that call (0: the call's own; 1, 2: what it emitted in turn).
CREATE TABLE soak_applied (
    id bigserial PRIMARY KEY,   -- drawn at apply: increasing along a lane (per-caller order)
    call_id bigint NOT NULL,
    sub int NOT NULL,
    ref bigint,                 -- soak_nested_exec: the id atx_exec returned for sub 1
    who name NOT NULL DEFAULT current_user,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);                              -- no unique constraint: a duplicate must be countable
CREATE INDEX ON soak_applied (call_id);
CREATE TABLE soak_control (call_id bigint);   -- plain commits next to atx_log: the control
CREATE TABLE soak_audited (call_id bigint, note text);
SELECT atx.enable_audit('soak_audited');

-- A nested emit: the parent's own row first (so that a parent refused for privileges emits
-- nothing), then two children in the parent's lane.
CREATE FUNCTION soak_nested(c bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO soak_applied (call_id, sub) VALUES (c, 0);
    PERFORM atx_log('INSERT INTO soak_applied (call_id, sub) VALUES ($1, $2)', c, 1);
    PERFORM atx_log('INSERT INTO soak_applied (call_id, sub) VALUES ($1, $2)', c, 2);
END $$;

-- A running message that waits for a nested one (the nested session pool): the parent's row keeps
-- the id the child's atx_exec returned, which must be the child's row, also after retries.
CREATE FUNCTION soak_nested_exec(c bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
BEGIN
    r := atx_exec('INSERT INTO soak_applied (call_id, sub) VALUES ($1, $2) RETURNING id', c, 1);
    INSERT INTO soak_applied (call_id, sub, ref) VALUES (c, 0, (r -> 'result' -> 0 ->> 'id')::bigint);
END $$;

-- Needs a top-level statement (its COMMIT): atx.run_nonatomic, at most once.
CREATE PROCEDURE soak_nonatomic(c bigint) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO soak_applied (call_id, sub) VALUES (c, 0);
    COMMIT;
    INSERT INTO soak_applied (call_id, sub) VALUES (c, 1);
END $$;
