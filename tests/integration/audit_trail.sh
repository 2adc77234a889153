#!/usr/bin/env bash
# Audit trail through pg_atx: atx.enable_audit / atx.audit_trigger capture INSERT, UPDATE, DELETE,
# TRUNCATE with old/new images, exclusion and masking; the rows survive ROLLBACK and carry the
# caller's outcome (view + atx.resolve_outcomes); atx.current_message() inside a statement;
# a 100,000-row UPDATE is audited with few messages (rows/s printed next to a plain-table trigger).
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE alice LOGIN;
CREATE ROLE mallory LOGIN;
CREATE TABLE acct(id int PRIMARY KEY, owner text, balance numeric, pin text, secret text);
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON acct TO alice;
SELECT atx.enable_audit('acct', exclude_columns => '{secret}', mask_columns => '{pin}');
CREATE TABLE meta(id uuid, caller_role name, caller_role_oid oid, caller_xid xid8, emitted_at timestamptz,
                  idempotency_key text);
GRANT INSERT ON meta TO alice;
SQL
applier_start
wait_for_slot || not_ok "applier created the slot"

# Waits until the audit table holds N rows.
audit_rows() { wait_for "${2:-20}" bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM atx.audit_log') -ge $1 ]"; }
aq() { q -c "$1"; }

# 1. A rolled-back transaction: INSERT, UPDATE, DELETE all audited, marked aborted.
xid_rb=$(PGUSER=alice q <<'SQL'
BEGIN;
INSERT INTO acct VALUES (1, 'ann', 100, '1234', 's1'), (2, 'bob', 200, '9999', 's2');
UPDATE acct SET balance = balance + 5, pin = '0000' WHERE id = 1;
DELETE FROM acct WHERE id = 2;
SELECT pg_current_xact_id();
ROLLBACK;
SQL
)
audit_rows 4
check_eq "rolled back: 4 audit rows present" 4 "$(aq "SELECT count(*) FROM atx.audit_log WHERE caller_xid = '$xid_rb'")"
check_eq "rolled back: all marked aborted" "aborted" \
    "$(aq "SELECT string_agg(DISTINCT caller_outcome, ',') FROM atx.audit_outcome WHERE caller_xid = '$xid_rb'")"
check_eq "INSERT images (excluded column gone, masked column ***)" \
    '|{"id": 1, "pin": "***", "owner": "ann", "balance": 100}
|{"id": 2, "pin": "***", "owner": "bob", "balance": 200}' \
    "$(aq "SELECT old_row, new_row FROM atx.audit_log WHERE caller_xid = '$xid_rb' AND operation = 'INSERT' ORDER BY id")"
check_eq "UPDATE old and new image" \
    '{"id": 1, "pin": "***", "owner": "ann", "balance": 100}|{"id": 1, "pin": "***", "owner": "ann", "balance": 105}' \
    "$(aq "SELECT old_row, new_row FROM atx.audit_log WHERE caller_xid = '$xid_rb' AND operation = 'UPDATE'")"
check_eq "DELETE old image" '{"id": 2, "pin": "***", "owner": "bob", "balance": 200}|' \
    "$(aq "SELECT old_row, new_row FROM atx.audit_log WHERE caller_xid = '$xid_rb' AND operation = 'DELETE'")"
check_eq "no secret and no real pin anywhere in the audit" 0 \
    "$(aq "SELECT count(*) FROM atx.audit_log WHERE old_row::text ~ '(s1|s2|1234|9999|0000)' OR new_row::text ~ '(s1|s2|1234|9999|0000)'")"
check_eq "caller identity: role, session user, application, table" "alice|alice|psql|public.acct" \
    "$(aq "SELECT DISTINCT caller_role, caller_session_user, application_name, table_name FROM atx.audit_log WHERE caller_xid = '$xid_rb'")"
check_eq "caller_xid is the caller's 64-bit xid; emitted before applied" t \
    "$(aq "SELECT bool_and(caller_xid = '$xid_rb'::xid8 AND emitted_at <= applied_at AND message_id IS NOT NULL) FROM atx.audit_log WHERE caller_xid = '$xid_rb'")"
check_eq "the acct table itself is empty (rolled back)" 0 "$(aq "SELECT count(*) FROM acct")"

# 2. A committed transaction: marked committed.
xid_c=$(PGUSER=alice q <<'SQL'
BEGIN;
INSERT INTO acct VALUES (3, 'cy', 300, '3333', 's3');
UPDATE acct SET owner = 'cyd' WHERE id = 3;
SELECT pg_current_xact_id();
COMMIT;
SQL
)
audit_rows 6
check_eq "committed: rows marked committed" "INSERT:committed,UPDATE:committed" \
    "$(aq "SELECT string_agg(operation || ':' || caller_outcome, ',' ORDER BY id) FROM atx.audit_outcome WHERE caller_xid = '$xid_c'")"

# 3. A transaction still running: 'in progress' while it runs, then committed; resolve_outcomes persists.
PGUSER=alice psql -qAtX -c "BEGIN" -c "DELETE FROM acct WHERE id = 3" -c "SELECT pg_sleep(3)" -c "COMMIT" >/dev/null &
slow=$!
audit_rows 7
check_eq "running caller: in progress" "in progress" \
    "$(aq "SELECT caller_outcome FROM atx.audit_outcome WHERE operation = 'DELETE' AND old_row->>'id' = '3'")"
wait "$slow"
check_eq "after its COMMIT: committed" "committed" \
    "$(aq "SELECT caller_outcome FROM atx.audit_outcome WHERE operation = 'DELETE' AND old_row->>'id' = '3'")"
resolved=$(aq "SELECT atx.resolve_outcomes()")
check "resolve_outcomes persisted unresolved rows ($resolved)" test "$resolved" -ge 1
check_eq "no unresolved rows left" 0 "$(aq "SELECT count(*) FROM atx.audit_log WHERE outcome IS NULL")"
check_eq "persisted outcome is used even when the live status is unavailable" "aborted" \
    "$(aq "SELECT atx.caller_outcome(NULL::xid8, 'aborted')")"
check_eq "no caller xid: 'no transaction'; unknown xid: 'unknown'" "no transaction|unknown" \
    "$(aq "SELECT atx.caller_outcome(NULL, NULL), atx.caller_outcome('99999999999'::xid8, NULL)")"

# 4. TRUNCATE is recorded (without images).
PGUSER=alice q -c "BEGIN" -c "TRUNCATE acct" -c "ROLLBACK" >/dev/null
audit_rows 8
check_eq "TRUNCATE recorded, aborted" "TRUNCATE|aborted" \
    "$(aq "SELECT operation, caller_outcome FROM atx.audit_outcome ORDER BY id DESC LIMIT 1")"

# 5. "Attempted and rolled back" query from docs/audit.md.
check_eq "auditor query: attempted and rolled back" "INSERT,INSERT,UPDATE,DELETE,TRUNCATE" \
    "$(aq "SELECT string_agg(operation, ',' ORDER BY id) FROM atx.audit_outcome WHERE caller_outcome = 'aborted'")"

# 6. Forgery: the insert function refuses direct calls and callers without the privilege.
err=$(PGUSER=mallory psql -qAtX -c "SELECT atx._audit_insert('acct'::regclass, 'DELETE', '[[{\"id\": 1}, null]]', 'x', 'x', NULL)" 2>&1)
check "direct call of atx._audit_insert refused" grep -q "only run inside a pg_atx message" <<<"$err"
PGUSER=mallory q -c "SELECT atx_log('SELECT atx._audit_insert(\$1, \$2, \$3, \$4, \$5, \$6)', 'acct'::regclass::oid, 'DELETE'::text, '[[{\"id\": 1}, null]]'::jsonb, 'x'::name, 'x'::text, NULL::inet)" >/dev/null
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM atx.dead_letter') -ge 1 ]"
check_eq "forged audit message from a role without DELETE on the table: dead-lettered" "42501" \
    "$(aq "SELECT sqlstate FROM atx.dead_letter WHERE caller_role = 'mallory'")"

# 7. atx.current_message() inside a statement: the message's own metadata; NULL outside.
read -r xid_m mid <<<"$(PGUSER=alice q <<'SQL' | tr '\n' ' '
BEGIN;
SELECT pg_current_xact_id();
SELECT atx_log_keyed('meta-1', 'INSERT INTO public.meta SELECT id, caller_role, caller_role_oid, caller_xid, emitted_at, idempotency_key FROM atx.current_message()');
ROLLBACK;
SQL
)"
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM meta') -ge 1 ]"
check_eq "current_message(): id, role, role oid, xid, key" "$mid|alice|t|$xid_m|meta-1|t" \
    "$(aq "SELECT id, caller_role, caller_role_oid = 'alice'::regrole, caller_xid, idempotency_key, emitted_at < now() FROM meta")"
check_eq "current_message() outside an apply: NULL" "t" "$(aq "SELECT (atx.current_message()).id IS NULL")"

# 8. Row-level form: one message per row.
q -c "CREATE TABLE small(id int, v text)" -c "GRANT ALL ON small TO alice" \
  -c "SELECT atx.enable_audit('small', level => 'row')" >/dev/null
PGUSER=alice q -c "INSERT INTO small SELECT g, 'v' FROM generate_series(1, 5) g" >/dev/null
audit_rows 14
check_eq "row level: 5 rows, 5 messages" "5|5" \
    "$(aq "SELECT count(*), count(DISTINCT message_id) FROM atx.audit_log WHERE table_name = 'public.small'")"
check_eq "disable_audit drops the triggers" "t|0" \
    "$(q -c "SELECT atx.disable_audit('small')" -c "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'small'::regclass" | paste -sd'|')"

# 8b. An audit table of one's own, owned by a non-superuser who resolves its outcomes.
q <<'SQL' >/dev/null
CREATE ROLE auditor LOGIN;
CREATE TABLE own_audit (LIKE atx.audit_log INCLUDING DEFAULTS);
ALTER TABLE own_audit OWNER TO auditor;
CREATE TABLE notes(id int, body text);
GRANT ALL ON notes TO alice;
SELECT atx.enable_audit('notes', 'own_audit');
SQL
PGUSER=alice psql -qAtX -c "BEGIN" -c "INSERT INTO notes VALUES (1, 'x')" -c "SELECT pg_sleep(1)" -c "COMMIT" >/dev/null &
slow=$!
wait_for 10 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM own_audit') -ge 1 ]"
wait "$slow"
check_eq "own audit table: row there, outcome not yet persisted" "INSERT|alice|" \
    "$(aq "SELECT operation, caller_role, outcome FROM own_audit")"
check_eq "its owner (no superuser) resolves it" "1|committed" \
    "$(PGUSER=auditor q -c "SELECT atx.resolve_outcomes('own_audit')" -c "SELECT outcome FROM own_audit" | paste -sd'|')"

# 9. Bulk: a 100,000-row UPDATE, statement level, far fewer messages than rows.
N=100000
q <<SQL >/dev/null
CREATE TABLE bulk(id int PRIMARY KEY, v int, pad text);
INSERT INTO bulk SELECT g, 0, repeat('x', 40) FROM generate_series(1, $N) g;
CREATE TABLE bulk_plain(LIKE bulk);
INSERT INTO bulk_plain SELECT * FROM bulk;
-- The comparison: the classic PL/pgSQL row trigger writing into a plain table.
CREATE TABLE plain_audit(id bigserial, table_name text, operation text, old_row jsonb, new_row jsonb,
                         caller_role name, caller_xid xid8, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION plain_audit_row() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO plain_audit(table_name, operation, old_row, new_row, caller_role, caller_xid)
    VALUES (TG_TABLE_NAME, TG_OP, to_jsonb(OLD), to_jsonb(NEW), current_user, pg_current_xact_id());
    RETURN NULL;
END \$\$;
CREATE TRIGGER plain_audit AFTER UPDATE ON bulk_plain FOR EACH ROW EXECUTE FUNCTION plain_audit_row();
SELECT atx.enable_audit('bulk');
CHECKPOINT;
SQL
lsn0=$(aq "SELECT pg_current_wal_insert_lsn()")
t0=$(date +%s%N)
aq "BEGIN; UPDATE bulk SET v = v + 1; ROLLBACK;" >/dev/null
t1=$(date +%s%N)
wal_atx=$(aq "SELECT pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$lsn0'))")
wait_for 120 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.audit_log WHERE table_name = 'public.bulk'\") -ge $N ]"
t2=$(date +%s%N)
ms_stmt=$(((t1 - t0) / 1000000)); ms_applied=$(((t2 - t0) / 1000000))
lsn0=$(aq "SELECT pg_current_wal_insert_lsn()")
t3=$(date +%s%N)
aq "BEGIN; UPDATE bulk_plain SET v = v + 1; ROLLBACK;" >/dev/null
ms_plain=$((($(date +%s%N) - t3) / 1000000))
wal_plain=$(aq "SELECT pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$lsn0'))")
msgs=$(aq "SELECT count(DISTINCT message_id) FROM atx.audit_log WHERE table_name = 'public.bulk'")
rows=$(aq "SELECT count(*) FROM atx.audit_log WHERE table_name = 'public.bulk'")
check_eq "bulk: all $N rows audited after ROLLBACK" "$N" "$rows"
check "bulk: far fewer messages than rows ($msgs messages)" test "$msgs" -le $((N / 500))
check_eq "bulk: images correct (old v 0, new v 1) and aborted" "$N|aborted" \
    "$(aq "SELECT count(*), string_agg(DISTINCT caller_outcome, ',') FROM atx.audit_outcome WHERE table_name = 'public.bulk' AND (old_row->>'v')::int = 0 AND (new_row->>'v')::int = 1 AND old_row->>'id' = new_row->>'id'")"
check_eq "bulk: every message under atx.max_payload_size" t \
    "$(aq "SELECT max(s) < pg_size_bytes(COALESCE(current_setting('atx.max_payload_size', true), '1MB')) FROM (SELECT sum(octet_length(old_row::text) + octet_length(new_row::text)) s FROM atx.audit_log WHERE table_name = 'public.bulk' GROUP BY message_id) x")"
note "bulk UPDATE of $N rows, statement-level atx audit: $msgs messages, statement ${ms_stmt} ms ($((N * 1000 / (ms_stmt > 0 ? ms_stmt : 1))) rows/s, WAL of the caller $wal_atx), all audit rows applied after ${ms_applied} ms ($((N * 1000 / (ms_applied > 0 ? ms_applied : 1))) rows/s end to end)"
note "same UPDATE with a PL/pgSQL row trigger into a plain table: ${ms_plain} ms ($((N * 1000 / (ms_plain > 0 ? ms_plain : 1))) rows/s, WAL $wal_plain) (and the plain rows are gone with the ROLLBACK)"

# 10. Row-level atx audit for comparison, on a smaller table (one flushed message per row).
M=2000
q -c "CREATE TABLE bulk_row AS SELECT g AS id, 0 AS v, repeat('x', 40) AS pad FROM generate_series(1, $M) g" \
  -c "SELECT atx.enable_audit('bulk_row', level => 'row')" >/dev/null
t0=$(date +%s%N)
aq "UPDATE bulk_row SET v = v + 1" >/dev/null
ms_row=$((($(date +%s%N) - t0) / 1000000))
wait_for 60 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.audit_log WHERE table_name = 'public.bulk_row'\") -ge $M ]"
check_eq "row level: $M rows, $M messages" "$M|$M" \
    "$(aq "SELECT count(*), count(DISTINCT message_id) FROM atx.audit_log WHERE table_name = 'public.bulk_row'")"
note "row-level atx audit: UPDATE of $M rows ${ms_row} ms ($((M * 1000 / (ms_row > 0 ? ms_row : 1))) rows/s, one flushed message per row)"

applier_stop
done_testing
