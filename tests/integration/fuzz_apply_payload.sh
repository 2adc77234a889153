#!/usr/bin/env bash
# Mutation fuzzing of the extension's payload verification, in a real backend: a genuine signed
# payload is mutated (bit flips, byte overwrites, truncation, extension, splicing) thousands of
# times, seeded, and each mutant goes through atx.apply_message. The backend must never crash, no
# mutant may execute, and every refusal must carry a payload SQLSTATE (22P03, 28000, 0A000).
. "$(dirname "$0")/../lib/testlib.sh"

SEED=${ATX_SEED:-$RANDOM}
N=${ATX_FUZZ_MUTANTS:-20000}
note "seed $SEED, $N mutants (rerun with ATX_SEED=$SEED)"
atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE TABLE target(v text);
SELECT atx.ensure_slot();
SELECT atx_log('INSERT INTO target VALUES ($1)', 'genuine'::text);
CREATE TABLE seedpayload AS
SELECT substr(data, 2) AS p FROM pg_logical_slot_get_binary_changes(
    (SELECT slot_name FROM pg_replication_slots WHERE plugin = 'pg_atx'), NULL, NULL, 'format', 'binary');
-- One mutant of p, chosen by the random generator (seeded by the caller).
CREATE FUNCTION mutate(p bytea, i int) RETURNS bytea LANGUAGE plpgsql AS $$  -- i: one call per row
DECLARE
    n int := length(p);
    k int := 1 + floor(random() * 4)::int;
    pos int;
BEGIN
    FOR j IN 1..k LOOP
        pos := floor(random() * n)::int;
        CASE floor(random() * 5)::int
            WHEN 0 THEN p := set_byte(p, pos, get_byte(p, pos) # (1 << floor(random() * 8)::int));
            WHEN 1 THEN p := set_byte(p, pos, floor(random() * 256)::int);
            WHEN 2 THEN p := substr(p, 1, pos);
            WHEN 3 THEN p := p || decode(md5(random()::text), 'hex');
            ELSE p := substr(p, 1, pos) || substr(p, pos + 1 + floor(random() * 8)::int);
        END CASE;
        n := length(p);
        EXIT WHEN n = 0;
    END LOOP;
    RETURN p;
END $$;
CREATE TABLE results(i int, status text, sqlstate text, same bool, h text);
SQL
check_eq "the genuine payload applies" applied \
    "$(q -c "SELECT status FROM atx.apply_message((SELECT p FROM seedpayload))")"
q -c "TRUNCATE target" >/dev/null

# In chunks, so that a crash is attributable and the run is bounded.
chunk=500
for ((start = 0; start < N; start += chunk)); do
    q <<SQL >/dev/null 2>"$TEST_DIR/fuzz.err" || { not_ok "chunk at $start failed: $(head -c 300 "$TEST_DIR/fuzz.err")"; break; }
SELECT setseed(($SEED + $start) % 100000 / 100000.0);
INSERT INTO results
SELECT i, r.status, r.sqlstate, mm.m = (SELECT p FROM seedpayload), md5(mm.m)
  FROM generate_series($start, $start + $chunk - 1) i,
       LATERAL (SELECT mutate((SELECT p FROM seedpayload), i) AS m) mm,
       LATERAL atx.apply_message(mm.m) r;
SQL
done
read -r total failed same bad_state < <(q -F ' ' -c "SELECT count(*), count(*) FILTER (WHERE status = 'failed'),
    count(*) FILTER (WHERE same), count(*) FILTER (WHERE status = 'failed' AND sqlstate NOT IN ('22P03', '28000', '0A000'))
    FROM results")
note "mutants $total, refused $failed, identical to the original $same; by SQLSTATE: $(q -c "SELECT string_agg(sqlstate || ':' || c, ' ') FROM (SELECT sqlstate, count(*) c FROM results WHERE status = 'failed' GROUP BY 1 ORDER BY 1) s")"
check_eq "every mutant went through apply_message" "$N" "$total"
distinct=$(q -c "SELECT count(DISTINCT h) FROM results")
note "distinct mutants: $distinct"
check "most mutants are distinct ($distinct of $N)" test "$distinct" -gt $((N / 2))
check_eq "every changed mutant was refused" "$((total - same))" "$((failed))"
check_eq "refusals carry a payload SQLSTATE" 0 "$bad_state"
check_eq "nothing executed (target empty but for unchanged mutants)" "$same" "$(q -c 'SELECT count(*) FROM target')"
check_eq "no backend crashed" 0 "$(grep -c 'terminated by signal' "$TEST_DIR/server.log")"
echo "# reliability: fuzzed payloads through atx.apply_message (seed $SEED) | $N seeded mutants of a genuine signed payload (bit flips, overwrites, truncation, extension, splicing) applied in a real backend | refused $failed, unchanged $same, wrong SQLSTATE $bad_state, executed $(q -c 'SELECT count(*) FROM target'), backend crashes $(grep -c 'terminated by signal' "$TEST_DIR/server.log") | $([ "$T_FAILED" = 0 ] && echo pass || echo '**FAIL**')"
done_testing
