#!/usr/bin/env bash
# An asynchronous apply commit counts as durable once the flush passes a WAL position read after
# it returned: the batch does not read where its commit ends (applier/progress.h). That position
# may lie past WAL of a transaction still open, which nothing asks the WAL writer to flush. Here
# a session writes a row every 5 ms in a transaction it keeps open while a message is applied,
# then stops writing and stays open. The slot must confirm the message within seconds: the
# applier commits a transaction of its own to get that WAL flushed (event=flush_nudged). Without
# that, the confirmation waited for the background writer's next snapshot of running
# transactions (every 15 s) or a checkpoint. Not a timing test of speed: a liveness bound.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q -c "SELECT atx.ensure_slot()" >/dev/null
q -c "CREATE TABLE t(v int); CREATE TABLE filler(v text)"
go_file="$TEST_DIR/data/atx_test_go"
APPLIER_LOG_LEVEL=debug applier_start --durability local --status-interval-ms 100
check "the applier streams" wait_for_slot

# The writer: a row every 5 ms until the go file exists, in one transaction; then open, quiet.
# Its signal is a file, not a commit: any commit after the message would flush the WAL before it.
q -c "DO \$\$
BEGIN
    WHILE pg_catalog.pg_stat_file('$go_file', true) IS NULL LOOP
        INSERT INTO filler VALUES (repeat('x', 60));
        PERFORM pg_catalog.pg_sleep(0.005);
    END LOOP;
    PERFORM pg_catalog.pg_sleep(120);
END \$\$" >/dev/null 2>&1 &
writer=$!
check "the writer writes" wait_for 30 eval "[ \"\$(q -c \"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DO %filler%' AND state = 'active'\")\" = 1 ]"

q -c "SELECT atx_log('INSERT INTO t VALUES (1)')" >/dev/null
check "the message is applied" wait_for 30 eval "[ \"\$(q -c 'SELECT count(*) FROM t')\" = 1 ]"
atx_as_server touch "$go_file"
msg_lsn=$(q -c "SELECT lsn FROM atx.applied")
note "message at $msg_lsn; the writer is quiet now, its transaction open"
confirmed_past() {
    [ "$(q -c "SELECT confirmed_flush_lsn > '$msg_lsn' FROM pg_replication_slots WHERE slot_name = atx.slot_name()")" = t ]
}
check "the slot confirms the message while the writer's transaction stays open (within 4 s)" wait_for 4 confirmed_past
note "flush nudges: $(grep -c 'event=flush_nudged' "$TEST_DIR/applier.log")"
check_eq "the writer's transaction is still open" 1 \
    "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DO %filler%' AND state = 'active'")"

kill "$writer" 2>/dev/null
q -c "SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'DO %filler%'" >/dev/null
wait "$writer" 2>/dev/null
applier_stop
check_eq "applied once" 1 "$(q -c 'SELECT count(*) FROM t')"
done_testing
