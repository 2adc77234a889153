#!/usr/bin/env bash
# The apply path's exactly-once lookup stays a probe per message however large atx.applied grows.
# atx.applied gets a record per handled message and keeps it until atx.prune moves the horizon
# past it. A plan an apply session prepared while the table was small was a sequential scan that
# compared every id of a batch with every record, kept for the life of the session: a first drain
# of 60,000 messages took 24 s instead of 6. Here 20,000 messages (half with idempotency keys, whose table has the same risk) wait in the slot, the applier
# drains them from an empty table in batches of 100 and prunes only once an hour: the table must
# never be read through.
. "$(dirname "$0")/../lib/testlib.sh"

MESSAGES=20000

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q -c "SELECT atx.ensure_slot()" >/dev/null
q -c "CREATE TABLE numbers(n int)"
q -c "CREATE PROCEDURE emit(k int) LANGUAGE plpgsql AS \$\$
BEGIN FOR i IN 1..k LOOP
    IF i % 2 = 0 THEN PERFORM atx_log('INSERT INTO numbers VALUES (\$1)', i);
    ELSE PERFORM atx_log_keyed('key-' || i, 'INSERT INTO numbers VALUES (\$1)', i); END IF;
END LOOP; END \$\$"
q -c "CALL emit($MESSAGES)"

read_stats() { # records read sequentially and index scans, of atx.applied and of atx.idempotency_key
    q -c "SELECT string_agg(coalesce(seq_tup_read, 0) || ' ' || coalesce(idx_scan, 0), ' ' ORDER BY relname)
            FROM pg_stat_user_tables WHERE relid IN ('atx.applied'::regclass, 'atx.idempotency_key'::regclass)"
}
# Statistics reach the view when the backends report them (at most once a second).
q -c "SELECT pg_stat_force_next_flush()" >/dev/null 2>&1
read -r seq0 idx0 kseq0 kidx0 <<<"$(read_stats)"
applier_start --batch-size 100 --prune-interval-ms 3600000
check "drained" wait_for 120 eval "[ \"\$(q -c 'SELECT count(*) FROM numbers')\" = $MESSAGES ]"
applier_stop
# A backend reports its statistics as it exits, before it leaves pg_stat_activity.
wait_for 30 eval "[ \"\$(q -c \"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'atx-applier%'\")\" = 0 ]" ||
    note "applier backends still there"
read -r seq1 idx1 kseq1 kidx1 <<<"$(read_stats)"
read_rows=$((seq1 - seq0))
probes=$((idx1 - idx0))
note "atx.applied during the drain: $read_rows records read by sequential scans, $probes index scans"
check "the drain did not read atx.applied through ($read_rows records read sequentially, $MESSAGES in the table at the end)" \
    test "$read_rows" -lt "$MESSAGES"
check "it probed the primary key instead ($probes index scans for $MESSAGES messages)" test "$probes" -ge "$MESSAGES"
note "atx.idempotency_key during the drain: $((kseq1 - kseq0)) records read by sequential scans, $((kidx1 - kidx0)) index scans"
check "the keyed half did not read atx.idempotency_key through ($((kseq1 - kseq0)) records read sequentially, $((MESSAGES / 2)) keys)" \
    test $((kseq1 - kseq0)) -lt $((MESSAGES / 2))
check_eq "every message applied once" "$MESSAGES $MESSAGES" "$(q -c 'SELECT count(*) || $$ $$ || count(DISTINCT n) FROM numbers')"

done_testing
