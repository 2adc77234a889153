#!/usr/bin/env bash
# Messages that queue a deferred trigger (a DEFERRABLE INITIALLY DEFERRED foreign key) run once
# more outside the security-restricted mode, and the apply session then drops every prepared
# statement (ext/run_as_caller.cc). Found by the hostile-message fuzzer (30-minute round, seed
# 2612, round 9): the applier's own prepared statements went with them, the batch's WAL-position
# query failed inside the apply's implicit transaction, the batch rolled back and was retried
# forever ("no WAL position after the batch", then 26000): one INSERT into a table with a deferred
# foreign key held the slot. Now the position is read unprepared after the apply's commit and the
# apply call is prepared again when it is gone.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE dc LOGIN;
CREATE TABLE parent(id int PRIMARY KEY);
INSERT INTO parent VALUES (1);
CREATE TABLE child(id int, p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE plain(id int);
GRANT SELECT, INSERT ON parent, child, plain TO dc;
SQL
D() { PGUSER=dc q "$@"; }
# One session: every message of the role goes through the same backend.
applier_start --apply-sessions 1
wait_for_slot || not_ok "applier created the slot"

for i in 1 2 3 4 5; do
    D -c "SELECT atx_log('INSERT INTO child VALUES (\$1, 1)', $i)" >/dev/null
    D -c "SELECT atx_log('INSERT INTO plain VALUES (\$1)', $i)" >/dev/null
done
# A deferred violation: found at the end of the message's run, as the caller, and dead-lettered.
D -c "SELECT atx_log('INSERT INTO child VALUES (99, 2)')" >/dev/null
D -c "SELECT atx_log('INSERT INTO plain VALUES (6)')" >/dev/null
check "every message after the deferred ones applied (within 30 s)" \
    wait_for 30 eval '[ "$(q -c "SELECT count(*) FROM plain")" = 6 ]'
check_eq "the 5 rows with a deferred foreign key applied once each" "5 15" \
    "$(q -c "SELECT count(*) || ' ' || sum(id) FROM child")"
check_eq "the deferred violation dead-lettered 23503" "23503" \
    "$(q -c "SELECT string_agg(sqlstate, ',') FROM atx.dead_letter")"
check "no batch failed (event=batch_failed)" bash -c "! grep -q 'event=batch_failed' '$TEST_DIR/applier.log'"
wait_settled 30 || not_ok "the slot confirmed past every message"
applier_stop
done_testing
