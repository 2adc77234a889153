#!/usr/bin/env bash
# Reproduction (found by tools/atx soak, seed 5, pair mode, 2026-12-06): with the least-privilege
# applier role of docs/setup.md (LOGIN REPLICATION, member of atx_applier), pg_stat_replication
# shows that role NULL in every column but pid (pg_read_all_stats is needed to see them), so
# atx-applier --durability standby-flush finds no streaming standby and counts an apply commit
# durable once it is flushed locally: the slot is confirmed (and atx_exec callers are woken) past
# commits the standby does not have, and a failover then loses them.
#
#   PG_CONFIG=... bash tools/soak/repro/standby_flush_unprivileged.sh
# Prints what atx_app and postgres see, then the applier's own durability query as atx_app.
set -uo pipefail
. "$(dirname "$0")/../../../tests/lib/testlib.sh"
atx_test_cluster "max_wal_senders = 10" || exit 2
standby=$(atx_cluster_mkdir standby)
atx_as_server "$ATX_PG_BINDIR/pg_basebackup" -h "$TEST_DIR" -p "$(cat "$TEST_DIR/port")" -U postgres \
    -D "$standby/data" -R -X stream >/dev/null || exit 2
port=$((20000 + RANDOM % 20000))
echo "port = $port" >>"$standby/data/postgresql.conf"
echo "unix_socket_directories = '$standby'" >>"$standby/data/postgresql.conf"
atx_cluster_start "$standby" || exit 2
trap 'atx_cluster_stop "$standby" immediate; rm -rf "$standby"; _testlib_cleanup' EXIT
q -c "CREATE ROLE atx_app LOGIN REPLICATION" -c "GRANT atx_applier TO atx_app" >/dev/null
wait_for 20 bash -c "[ \"\$(psql -qAtX -c \"SELECT state FROM pg_stat_replication\")\" = streaming ]"
echo "as postgres: $(q -c "SELECT pid, state, flush_lsn FROM pg_stat_replication")"
echo "as atx_app:  $(q -U atx_app -c "SELECT pid, state, flush_lsn FROM pg_stat_replication")"
# applier/database_worker.cc poll_durability, standby-flush: NULL = "no streaming standby".
echo "applier's standby-flush query as atx_app: local flush $(q -U atx_app -c "SELECT pg_catalog.pg_current_wal_flush_lsn()::text, (SELECT pg_catalog.min(s.flush_lsn) FROM pg_catalog.pg_stat_replication s WHERE s.state OPERATOR(pg_catalog.=) 'streaming' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots l WHERE l.active_pid OPERATOR(pg_catalog.=) s.pid AND l.slot_type OPERATOR(pg_catalog.=) 'logical'))::text" | sed 's/|/, standbys /; s/standbys $/standbys NULL/')"
