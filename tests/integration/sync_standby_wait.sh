#!/usr/bin/env bash
# Synchronous standbys, on one server (synchronous_standby_names names a standby that never
# connects, so every wait for it shows): atx_log waits for the standbys exactly when a COMMIT
# would, also in a session that began before synchronous_standby_names was set (a backend reads
# the configuration file again only between commands; a procedure that started while Patroni had
# the standby out must not go on acknowledging messages the standby never got). And the
# applier's --durability auto follows the setting while it runs: its apply commits wait for the
# standbys from the moment the setting appears, and stop waiting when it goes.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q -c "SELECT atx.ensure_slot()" >/dev/null
q -c "CREATE TABLE a(n int); CREATE TABLE t(n int); CREATE TABLE go(x int); CREATE TABLE probe(x int)"

# Sessions of the test itself never wait: they commit with synchronous_commit = local.
ql() { PGOPTIONS="-c synchronous_commit=local" q "$@"; }

# standbys_required: a COMMIT that wrote WAL now waits for a synchronous standby (the
# checkpointer has taken in synchronous_standby_names). The probe's wait is cancelled.
standbys_required() {
    PGAPPNAME=atx_probe psql -qAtX -c "INSERT INTO probe VALUES (1)" >/dev/null 2>&1 &
    local p=$! rc=0
    wait_for 3 waiting_in_syncrep atx_probe || rc=1
    ql -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'atx_probe'" >/dev/null
    wait "$p"
    return "$rc"
}
commit_does_not_wait() { timeout 5 psql -qAtX -c "INSERT INTO probe VALUES (1)" >/dev/null 2>&1; }
set_standbys() { # set_standbys VALUE: ALTER SYSTEM and reload
    ql -c "ALTER SYSTEM SET synchronous_standby_names = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}
waiting_in_syncrep() { # waiting_in_syncrep APPLICATION_NAME_PATTERN
    [ "$(ql -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '$1' AND wait_event = 'SyncRep'")" -ge 1 ]
}

# --- emit: a session that began before the setting --------------------------------------------
OUT=$TEST_DIR/stale.out
PGAPPNAME=atx_stale psql -qAtX -v ON_ERROR_STOP=1 -v SHOW_CONTEXT=always >"$OUT" 2>&1 <<'SQL' &
DO $$
BEGIN
    LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM go);
        PERFORM pg_sleep(0.05);
    END LOOP;
    PERFORM atx_log('INSERT INTO a VALUES (1)');
    RAISE NOTICE 'atx_log returned';
END $$;
SQL
STALE=$!
wait_for 10 eval "[ \"\$(ql -c \"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'atx_stale' AND state = 'active'\")\" = 1 ]" ||
    not_ok "the long session started"
set_standbys nobody
check "a COMMIT now waits for the synchronous standby" wait_for 15 standbys_required
ql -c "INSERT INTO go VALUES (1)"
check "atx_log in a session that began before synchronous_standby_names was set waits for the standby" \
    wait_for 10 waiting_in_syncrep atx_stale
check "... and has not returned" bash -c "! grep -q 'atx_log returned' '$OUT'"
ql -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'atx_stale'" >/dev/null
wait "$STALE"
note "$(tr '\n' ' ' <"$OUT")"
# PostgreSQL's own WARNING, with a context naming the message (psql shows a warning's context
# only when asked: SHOW_CONTEXT).
check "a cancel ends the wait as it ends a COMMIT's, with a context naming the message" \
    grep -q "while pg_atx message .* was made durable on the synchronous standbys: it is durable on this server" "$OUT"
check "... and the call returns" grep -q "atx_log returned" "$OUT"

# --- emit: the caller's synchronous_commit decides, as for a COMMIT ---------------------------
for level in local off; do
    t0=$(date +%s%N)
    out=$(PGOPTIONS="-c synchronous_commit=$level" timeout 10 psql -qAtX -c "SELECT atx_log('INSERT INTO a VALUES (2)')" 2>&1)
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    check "synchronous_commit = $level: atx_log returns without waiting for the standby (${ms} ms)" \
        test $rc = 0 -a "$ms" -lt 5000
    check_eq "... and says nothing about the standby" 0 "$(grep -c 'synchronous' <<<"$out")"
done
out=$(PGOPTIONS="-c statement_timeout=1000" timeout 20 psql -qAtX -v SHOW_CONTEXT=always -c "SELECT atx_log('INSERT INTO a VALUES (3)')" 2>&1)
check "synchronous_commit = on: a new session waits too, until its statement_timeout" \
    grep -q "while pg_atx message .* was made durable on the synchronous standbys" <<<"$out"

set_standbys ''
check "no synchronous standby: a COMMIT no longer waits" wait_for 15 commit_does_not_wait

# --- the applier: --durability auto follows synchronous_standby_names ------------------------
applier_start --status-interval-ms 200
wait_for_slot || not_ok "applier streaming"
check "auto starts as local (no synchronous standby)" \
    wait_for 10 grep -q "event=connected.*durability=local (auto)" "$TEST_DIR/applier.log"
ql -c "SELECT atx_log('INSERT INTO t VALUES (10)')" >/dev/null
check "a message is applied" wait_for 20 eval "[ \"\$(q -c 'SELECT count(*) FROM t')\" = 1 ]"
check_eq "the messages of the first part are applied once each, too" "1 2 2 3" "$(q -c 'SELECT string_agg(n::text, $$ $$ ORDER BY n) FROM a')"

set_standbys nobody
check "the applier switches to synchronous apply commits when the standby appears" \
    wait_for 15 grep -q "event=durability_changed durability=sync (auto)" "$TEST_DIR/applier.log"
wait_for 15 standbys_required || not_ok "a COMMIT waits for the synchronous standby"
ql -c "SELECT atx_log('INSERT INTO t VALUES (11)')" >/dev/null
check "the next apply commit waits for the synchronous standby" wait_for 20 waiting_in_syncrep 'atx-applier apply%'
check_eq "... and its row is not visible yet" 1 "$(q -c 'SELECT count(*) FROM t')"

set_standbys ''
check "the applier goes back to local when the setting is gone" \
    wait_for 15 grep -q "event=durability_changed durability=local (auto)" "$TEST_DIR/applier.log"
check "the waiting apply commit is released and the row is there" \
    wait_for 20 eval "[ \"\$(q -c 'SELECT count(*) FROM t WHERE n = 11')\" = 1 ]"
check_eq "every message applied once" "10 11" "$(q -c 'SELECT string_agg(n::text, $$ $$ ORDER BY n) FROM t')"
applier_stop
check_eq "the applier logged no error" 0 "$(grep -cE 'level=(error|critical)' "$TEST_DIR/applier.log")"

done_testing
