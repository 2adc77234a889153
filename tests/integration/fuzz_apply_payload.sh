#!/usr/bin/env bash
# Mutation fuzzing of what the server does with payload bytes, in real processes. A genuine
# signed payload is mutated (bit flips, byte overwrites, truncation, extension, splicing)
# thousands of times, seeded:
#  (a) each mutant goes through atx.verify_payload (decode + authentication, in a backend): the
#      backend never crashes and every changed mutant is refused with 22P03, 28000 or 0A000;
#  (b) mutants are written to the WAL *with the pg_atx origin* (a superuser can) and read back by
#      a real walsender in the text format (pg_recvlogical): no mutant makes the walsender raise
#      (which would stop every text reader of the slot), each is one line, none is converted;
#  (c) the same records through atx.apply_batch: a changed one never executed, the genuine one once.
. "$(dirname "$0")/../lib/testlib.sh"

SEED=${ATX_SEED:-$RANDOM}
N=${ATX_FUZZ_MUTANTS:-20000}
W=${ATX_FUZZ_WALSENDER_MUTANTS:-2000}
note "seed $SEED, $N mutants, $W through a walsender (rerun with ATX_SEED=$SEED)"
atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE TABLE target(v text, j jsonb);
SELECT atx.ensure_slot();
SELECT atx_log('INSERT INTO target VALUES ($1, $2)', 'genuine'::text, '{"a": [1, 2.5]}'::jsonb);
CREATE TABLE seedpayload AS
SELECT substr(data, 10) AS p FROM pg_logical_slot_get_binary_changes(atx.slot_name(), NULL, NULL, 'format', 'binary');
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
-- The outcome of verify_payload: 'ok' or the SQLSTATE.
CREATE FUNCTION verdict(p bytea) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atx.verify_payload(p);
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;
CREATE TABLE results(i int, verdict text, same bool, h text);
SQL
check_eq "the genuine payload authenticates" ok "$(q -c "SELECT verdict((SELECT p FROM seedpayload))")"

# (a) In chunks, so that a crash is attributable and the run is bounded.
chunk=1000
for ((start = 0; start < N; start += chunk)); do
    q <<SQL >/dev/null 2>"$TEST_DIR/fuzz.err" || { not_ok "chunk at $start failed: $(head -c 300 "$TEST_DIR/fuzz.err")"; break; }
SELECT setseed(($SEED + $start) % 100000 / 100000.0);
INSERT INTO results
SELECT i, verdict(mm.m), mm.m = (SELECT p FROM seedpayload), md5(mm.m)
  FROM generate_series($start, $start + $chunk - 1) i,
       LATERAL (SELECT mutate((SELECT p FROM seedpayload), i) AS m) mm;
SQL
done
read -r total refused same bad_state < <(q -F ' ' -c "SELECT count(*), count(*) FILTER (WHERE verdict <> 'ok'),
    count(*) FILTER (WHERE same), count(*) FILTER (WHERE verdict NOT IN ('ok', '22P03', '28000', '0A000'))
    FROM results")
note "mutants $total, refused $refused, identical to the original $same; by SQLSTATE: $(q -c "SELECT string_agg(verdict || ':' || c, ' ') FROM (SELECT verdict, count(*) c FROM results GROUP BY 1 ORDER BY 1) s")"
check_eq "every mutant was checked" "$N" "$total"
distinct=$(q -c "SELECT count(DISTINCT h) FROM results")
check "most mutants are distinct ($distinct of $N)" test "$distinct" -gt $((N / 2))
check_eq "every changed mutant was refused" "$((total - same))" "$refused"
check_eq "refusals carry a payload SQLSTATE" 0 "$bad_state"

# (b) Through a real walsender, text format. The mutants carry the pg_atx origin: only a
# superuser could write them, but the plugin must survive whatever it decodes.
q -c "SELECT pg_create_logical_replication_slot('fuzzslot', 'pg_atx')" >/dev/null
q <<SQL >/dev/null
SELECT pg_replication_origin_session_setup('pg_atx');
SELECT setseed($SEED % 100000 / 100000.0);
SELECT count(pg_logical_emit_message(false, 'pg_atx', mutate((SELECT p FROM seedpayload), i)))
  FROM generate_series(1, $W) i;
SELECT pg_replication_origin_session_reset();
SQL
end_lsn=$(q -c "SELECT pg_current_wal_insert_lsn()")   # the walsender waits until it is flushed
"$ATX_PG_BINDIR/pg_recvlogical" -d "$PGDATABASE" --slot fuzzslot --start -o format=text --endpos "$end_lsn" \
    -f "$TEST_DIR/recv.out" --no-loop >"$TEST_DIR/recv.err" 2>&1
rc=$?
check_eq "pg_recvlogical (a walsender, text format) read every mutant without an error" 0 "$rc"
check_eq "... one line per mutant" "$W" "$(grep -c '^pg_atx message' "$TEST_DIR/recv.out")"
converted=$(grep -c '^pg_atx message id=' "$TEST_DIR/recv.out")
unchanged=$(q -c "SELECT count(*) FROM (SELECT setseed($SEED % 100000 / 100000.0)) s, LATERAL (SELECT count(*) FILTER (WHERE mutate((SELECT p FROM seedpayload), i) = (SELECT p FROM seedpayload)) AS c FROM generate_series(1, $W) i) x WHERE x.c > 0")
note "walsender: $(grep -c 'unauthenticated' "$TEST_DIR/recv.out") unauthenticated, $(grep -c 'undecodable' "$TEST_DIR/recv.out") undecodable, $converted authenticated (unchanged mutants)"
check "... only authentic payloads had their values converted ($converted)" test "$converted" -le "$((W / 20 + unchanged))"
check_eq "the walsender raised nothing" 0 "$(grep -c 'ERROR' "$TEST_DIR/server.log")"

# (c) The same records named to atx.apply_batch. They carry the pg_atx origin, so they pass the
# provenance check (only a superuser could have written them): a changed one is dead-lettered
# or refused, never run; an unchanged copy is the genuine message, run once (later copies:
# 'already').
# One apply_batch per record, each its own transaction, as the applier would send them.
q <<'SQL' >/dev/null
CREATE TABLE forged AS
SELECT substr(data, 10) AS p, '0/0'::pg_lsn + ('x' || encode(substr(data, 2, 8), 'hex'))::bit(64)::bigint::numeric AS l
  FROM pg_logical_slot_get_binary_changes(atx.slot_name(), NULL, NULL);
CREATE TABLE verdicts(l pg_lsn, same bool, status text);
SQL
q -c "SELECT format('INSERT INTO verdicts SELECT %L, (SELECT p FROM forged WHERE l = %L) = (SELECT p FROM seedpayload), status FROM atx.apply_batch(ARRAY[%L::pg_lsn], ''{1}'', ''{NULL}'', 1, 0, true, ''test'');', l, l, l) FROM forged ORDER BY l" |
    psql -qAtX >/dev/null 2>"$TEST_DIR/apply.err"
check_eq "apply_batch raised nothing" "" "$(head -c 300 "$TEST_DIR/apply.err")"
q -c "SELECT same, status, count(*) FROM verdicts GROUP BY 1, 2 ORDER BY 1, 2" >"$TEST_DIR/apply.out" 2>&1
check_eq "... one verdict per record" "$(q -c 'SELECT count(*) FROM forged')" "$(q -c 'SELECT count(*) FROM verdicts')"
note "apply_batch on the forged records (same|status|count): $(tr '\n' ' ' <"$TEST_DIR/apply.out")"
check "... every changed one dead-lettered or refused" bash -c \
    "! grep -v -E '^f\|(dead|rejected)\|[0-9]+\$|^t\|' '$TEST_DIR/apply.out' && grep -q '^f|' '$TEST_DIR/apply.out'"
copies=$(awk -F"|" '$1 == "t" { s += $3 } END { print s + 0 }' "$TEST_DIR/apply.out")
copies=${copies:-0}
check_eq "... an unchanged copy runs once, later copies are 'already'" \
    "$([ "$copies" -gt 0 ] && echo "applied 1, already $((copies - 1))" || echo none)" \
    "$([ "$copies" -gt 0 ] && echo "applied $(sed -n 's/^t|applied|//p' "$TEST_DIR/apply.out"), already $(sed -n 's/^t|already|//p' "$TEST_DIR/apply.out" | grep . || echo 0)" || echo none)"
check_eq "nothing else executed" "$([ "$copies" -gt 0 ] && echo 1 || echo 0)" "$(q -c 'SELECT count(*) FROM target')"
q -c "SELECT pg_drop_replication_slot('fuzzslot')" >/dev/null
echo "# reliability: fuzzed payloads (seed $SEED) | $N seeded mutants of a genuine signed payload (bit flips, overwrites, truncation, extension, splicing) through atx.verify_payload; $W written with the pg_atx origin and read by a walsender in the text format, then named to atx.apply_batch | refused $refused of $((total - same)) changed, wrong SQLSTATE $bad_state; walsender errors $(grep -c 'ERROR' "$TEST_DIR/server.log"); rows from unchanged copies $(q -c 'SELECT count(*) FROM target'); backend crashes $(grep -c 'terminated by signal' "$TEST_DIR/server.log") | $([ "$T_FAILED" = 0 ] && echo pass || echo '**FAIL**')"
done_testing
