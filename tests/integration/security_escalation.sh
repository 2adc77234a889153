#!/usr/bin/env bash
# Paths to superuser (issue 12, findings 1-3), each tried as an attacker would, with a superuser
# applier and superuser-run DML and jobs (the worst case). Every attempt records current_user in
# a table of its own and tries ALTER ROLE ... SUPERUSER; it must run as the attacker or not at all.
#  1. an audit table owned by an ordinary role, with BEFORE INSERT / UPDATE triggers, written by
#     the audit helper (SECURITY DEFINER) and by atx.resolve_outcomes() run by a superuser;
#  2. an overload of atx_log in the extension's schema (public), matching the audit trigger's
#     internal call exactly, by a role with CREATE on public;
#  3. an operator public.*(bigint, interval) matching the applier's dead-letter INSERT.
. "$(dirname "$0")/../lib/testlib.sh"

atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE eve LOGIN;
GRANT CREATE ON DATABASE postgres TO eve;
CREATE ROLE mal LOGIN;
GRANT CREATE ON SCHEMA public TO mal;      -- "a role with CREATE on the target schema"
CREATE TABLE ran_as(who name, what text);  -- every hostile body logs here
GRANT INSERT ON ran_as TO PUBLIC;
CREATE TABLE audited(id int PRIMARY KEY, v text);
CREATE TABLE audited2(id int PRIMARY KEY, v text);
SQL
superuser_of() { q -c "SELECT rolsuper FROM pg_roles WHERE rolname = '$1'"; }

# --- 1. eve's audit table with triggers ---------------------------------------------------------
PGUSER=eve q <<'SQL' >/dev/null
CREATE SCHEMA eve_s;
CREATE TABLE eve_s.audit (id bigserial, table_oid oid, table_name text, operation text, old_row jsonb,
    new_row jsonb, caller_role name, caller_session_user name, application_name text, client_addr inet,
    caller_xid xid8, emitted_at timestamptz, applied_at timestamptz DEFAULT clock_timestamp(),
    message_id uuid, outcome text);
CREATE FUNCTION eve_s.grab() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.ran_as VALUES (current_user, 'eve trigger ' || TG_OP);
    BEGIN
        ALTER ROLE eve SUPERUSER;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN NEW;
END $$;
CREATE TRIGGER grab_ins BEFORE INSERT ON eve_s.audit FOR EACH ROW EXECUTE FUNCTION eve_s.grab();
CREATE TRIGGER grab_upd BEFORE UPDATE ON eve_s.audit FOR EACH ROW EXECUTE FUNCTION eve_s.grab();
GRANT USAGE ON SCHEMA eve_s TO PUBLIC;
SQL
q -c "SELECT atx.enable_audit('audited', 'eve_s.audit')" >/dev/null
applier_start --max-attempts 2 --retry-base-ms 50
wait_for_slot || not_ok "applier created the slot"

q -c "INSERT INTO audited VALUES (1, 'x')" >/dev/null
wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM eve_s.audit') = 1 ]"
check_eq "finding 1: the audit row reached eve's table" 1 "$(q -c 'SELECT count(*) FROM eve_s.audit')"
check_eq "finding 1: eve's INSERT trigger ran as eve (its owner), not as the extension owner" "eve" \
    "$(q -c "SELECT string_agg(DISTINCT who, ',') FROM ran_as WHERE what = 'eve trigger INSERT'")"
check_eq "finding 1: eve is not superuser after the audit write" f "$(superuser_of eve)"
# Leave the outcome to the job (it may have been resolved at apply time already).
q -c "ALTER TABLE eve_s.audit DISABLE TRIGGER grab_upd; UPDATE eve_s.audit SET outcome = NULL;
      ALTER TABLE eve_s.audit ENABLE TRIGGER grab_upd" >/dev/null
q -c "SELECT atx.resolve_outcomes('eve_s.audit')" >/dev/null   # a superuser job, as documented
check_eq "finding 1: resolve_outcomes() run by a superuser fired eve's UPDATE trigger as eve" "eve" \
    "$(q -c "SELECT string_agg(DISTINCT who, ',') FROM ran_as WHERE what = 'eve trigger UPDATE'")"
check_eq "finding 1: eve is not superuser after resolve_outcomes()" f "$(superuser_of eve)"
check_eq "finding 1: the outcome was resolved" committed "$(q -c 'SELECT outcome FROM eve_s.audit')"
denied() { # denied ROLE SQL: the statement fails with 42501
    { PGUSER=$1 psql -qAtX -v VERBOSITY=verbose -c "$2" 2>&1 || true; } | grep -q 42501
}
check "finding 1: a role without UPDATE on the audit table cannot resolve it (42501)" \
    denied mal "SELECT atx.resolve_outcomes('eve_s.audit')"
check "finding 1: atx._audit_write is not executable by PUBLIC (42501)" \
    denied mal "SELECT atx._audit_write('eve_s.audit', 0, 't', 'INSERT', '[]', 'x', 'x', 'x', NULL, NULL, now(), gen_random_uuid(), NULL)"

# --- 2. an overload of atx_log in public ---------------------------------------------------------
PGUSER=mal q <<'SQL' >/dev/null
CREATE FUNCTION public.atx_log(text, oid, text, jsonb, name, text, inet) RETURNS uuid
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.ran_as VALUES (current_user, 'mal overload');
    BEGIN
        ALTER ROLE mal SUPERUSER;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN NULL;
END $$;
SQL
q -c "SELECT atx.enable_audit('audited2')" >/dev/null
q -c "INSERT INTO audited2 VALUES (1, 'row level'), (2, 'two')" >/dev/null   # DML by a superuser
q -c "SELECT atx.enable_audit('audited2', level => 'row')" >/dev/null
q -c "UPDATE audited2 SET v = 'updated'" >/dev/null
wait_for 20 bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.audit_log WHERE table_name = 'public.audited2'\") = 4 ]"
check_eq "finding 2: the overload was never called (statement and row level)" 0 \
    "$(q -c "SELECT count(*) FROM ran_as WHERE what = 'mal overload'")"
check_eq "finding 2: every audit row written (2 INSERT at statement level, 2 UPDATE at row level)" 4 \
    "$(q -c "SELECT count(*) FROM atx.audit_log WHERE table_name = 'public.audited2'")"
check_eq "finding 2: mal is not superuser" f "$(superuser_of mal)"

# --- 3. an operator matching the applier's own SQL ----------------------------------------------
PGUSER=mal q <<'SQL' >/dev/null
CREATE FUNCTION public.grab_mul(bigint, interval) RETURNS interval LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.ran_as VALUES (current_user, 'mal operator');
    BEGIN
        ALTER ROLE mal SUPERUSER;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN $2 * $1::float8;
END $$;
CREATE OPERATOR public.* (LEFTARG = bigint, RIGHTARG = interval, FUNCTION = public.grab_mul);
CREATE FUNCTION public.grab_plus(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.ran_as VALUES (current_user, 'mal operator');
    RETURN $1;
END $$;
CREATE OPERATOR public.+ (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = public.grab_plus);
SQL
q -c "SET atx.validate = off" -c "SELECT atx_log('INSERT INTO no_such_table VALUES (1)')" >/dev/null   # a dead letter
wait_for 20 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM atx.dead_letter') -ge 1 ]"
check_eq "finding 3: the message was dead-lettered" 1 "$(q -c 'SELECT count(*) FROM atx.dead_letter')"
check_eq "finding 3: mal's operators never ran in the applier's session" 0 \
    "$(q -c "SELECT count(*) FROM ran_as WHERE what = 'mal operator'")"
check_eq "finding 3: mal is not superuser" f "$(superuser_of mal)"
check "finding 3: the dead letter's times are plausible (pg_catalog operators)" \
    bash -c "[ \$(psql -qAtX -c \"SELECT count(*) FROM atx.dead_letter WHERE emitted_at > now() - interval '1 hour' AND first_failed_at > now() - interval '1 hour'\") = 1 ]"
note "ran_as: $(q -c "SELECT string_agg(who || ':' || what, '; ') FROM ran_as")"
applier_stop
done_testing
