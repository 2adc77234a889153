#!/usr/bin/env bash
# A failover to a standby whose logical slot is a fresh copy (Patroni on PostgreSQL 15 copies the
# slot's state file, not the decoding snapshot saved next to it). Found by tools/atx soak (seed
# 2025, pair): decoding from such a copy must first rebuild its snapshot from running-transaction
# records, and until it is consistent PostgreSQL skips non-transactional logical messages
# (decode.c, logicalmsg_decode). Every pg_atx message from the slot's position up to that point
# was never sent to the applier, and six acknowledged calls were lost. The applier now reads those
# messages from the new primary's WAL itself after a timeline change (event=messages_unsent) and
# parks the ones with no record, up to the first message the stream sends.
#
# Made deterministic here: a transaction with an xid stays open while the slot's restart point is
# taken, so the copy's decoding cannot be consistent until two more running-transaction records
# after the promotion; messages are written before the promotion and right after it.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster "max_wal_senders = 10" "wal_sender_timeout = 0" || { not_ok "cluster start"; done_testing; }
PRIMARY=$TEST_DIR
STANDBY=$(atx_cluster_mkdir standby)
HOLDER=""
cleanup_standby() {
    [ -n "$HOLDER" ] && kill "$HOLDER" 2>/dev/null
    atx_cluster_stop "$STANDBY" immediate >/dev/null 2>&1
    [ "$T_FAILED" = 0 ] && [ -z "${ATX_KEEP:-}" ] && rm -rf "$STANDBY"
}
trap 'cleanup_standby; _testlib_cleanup' EXIT
standby_start "$STANDBY"
qs() { psql -qAtX -v ON_ERROR_STOP=1 -h "$STANDBY" -p "$(cat "$STANDBY/port")" -U postgres -d postgres "$@"; }
wait_for 30 eval '[ "$(q -c "SELECT count(*) FROM pg_stat_replication WHERE state = '"'streaming'"'")" = 1 ]' ||
    { not_ok "the standby streams"; done_testing; }

q -c "CREATE TABLE t(v int)" >/dev/null
applier_start
wait_for_slot || not_ok "applier created the slot"
SLOT=$(q -c "SELECT atx.slot_name()")

# A transaction with an xid and no WAL of its own stays open: every running-transaction record
# lists it, so the slot's restart point does too.
(psql -qAtX -c "BEGIN" -c "SELECT txid_current()" -c "SELECT pg_sleep(600)" >/dev/null 2>&1) &
HOLDER=$!
wait_for 30 eval '[ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND query LIKE '"'SELECT pg_sleep%'"'")" = 1 ]' ||
    not_ok "the open transaction has its xid"
for v in 0 1; do
    q -c "CHECKPOINT" -c "SELECT atx_log('INSERT INTO t VALUES ($v)')" >/dev/null
    wait_for 30 eval '[ "$(q -c "SELECT count(*) FROM t WHERE v = '$v'")" = 1 ]'
    wait_settled 30 || note "not settled after message $v"
done
applier_stop
check_eq "applied on the primary first" "0 1" "$(q -c "SELECT string_agg(v::text, ' ' ORDER BY v) FROM t")"

# Patroni's copy: the slot's state file, written into the stopped standby's pg_replslot.
atx_cluster_stop "$STANDBY" fast
install -d -o postgres -g postgres -m 0700 "$STANDBY/data/pg_replslot/$SLOT"
q -c "SELECT encode(pg_read_binary_file('pg_replslot/$SLOT/state'), 'base64')" | base64 -d >"$STANDBY/data/pg_replslot/$SLOT/state"
chown postgres: "$STANDBY/data/pg_replslot/$SLOT/state"
chmod 0600 "$STANDBY/data/pg_replslot/$SLOT/state"
atx_cluster_start "$STANDBY" || { not_ok "standby restart with the slot copy"; done_testing; }
check_eq "the standby holds the copy" "$SLOT" "$(qs -c "SELECT slot_name FROM pg_replication_slots")"

# Written on the primary, not applied yet (the applier is stopped), replicated.
for v in 2 3 4; do
    q -c "SELECT atx_log('INSERT INTO t VALUES ($v)')" >/dev/null
done
lsn=$(q -c "SELECT pg_current_wal_flush_lsn()")
wait_for 30 eval '[ "$(qs -c "SELECT pg_last_wal_replay_lsn() >= '"'$lsn'"'")" = t ]' ||
    not_ok "the standby replayed the messages"
kill "$HOLDER" 2>/dev/null
HOLDER=""
atx_cluster_stop "$PRIMARY" immediate
atx_as_server "$ATX_PG_BINDIR/pg_ctl" -D "$STANDBY/data" -w promote >/dev/null || { not_ok "promote"; done_testing; }
# Right after the promotion, before its decoding of the slot can be consistent.
qs -c "SELECT atx_log('INSERT INTO t VALUES (5)')" >/dev/null

eval "$(atx_cluster_env "$STANDBY")"
conninfo() { atx_cluster_conninfo "$STANDBY"; }
applier_start
# A later message: the stream sends it once decoding is consistent (running-transaction records
# come every 15 s at most; a checkpoint writes one at once).
for _ in 1 2 3; do q -c "CHECKPOINT" >/dev/null; sleep 1; done
q -c "SELECT atx_log('INSERT INTO t VALUES (6)')" >/dev/null
check "every acknowledged message applied on the new primary" \
    wait_for 60 eval '[ "$(q -c "SELECT count(DISTINCT v) FROM t")" = 7 ]'
wait_settled 30 || note "not settled after 30 s"
check_eq "each once" "0 1 2 3 4 5 6" "$(q -c "SELECT string_agg(v::text, ' ' ORDER BY v) FROM t")"
check "the applier found the messages the stream did not send (event=messages_unsent)" \
    grep -q "event=messages_unsent" "$TEST_DIR/applier.log"
check_eq "no dead letter" 0 "$(q -c "SELECT count(*) FROM atx.dead_letter")"
check "no message reported lost" bash -c "! grep -q 'event=messages_lost' '$TEST_DIR/applier.log'"
applier_stop
done_testing
