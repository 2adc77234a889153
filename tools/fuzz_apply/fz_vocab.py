"""What the attackers pick from: roles, settings, parameter values, SQLSTATEs, texts, the utility
statements and kills they try, and the victim's statement texts whose meaning depends on the
settings they are parsed under (issue row 5)."""
from fz_sql import CANARY

ATTACKERS = {"fz_mal1": ["fz_g1a", "fz_g1b"], "fz_mal2": ["fz_g2a", "fz_g2b"]}
PLACEHOLDERS = ["rt.tenant", "app.user", "fz.x", "myapp.role", "x.y"]

# Settings an attacker sets, before the emit or inside its statement; values that differ from
# every default. Some are refused (superuser only), some must never reach another role.
SETTINGS = {
    "standard_conforming_strings": ["off"],
    "DateStyle": ["SQL, DMY", "German", "Postgres, YMD"],
    "TimeZone": ["Pacific/Chatham", "America/St_Johns", "UTC+13"],
    "IntervalStyle": ["sql_standard", "iso_8601"],
    "transform_null_equals": ["on"],
    "search_path": ["fz_att, pg_catalog, public", "fz_att"],
    "row_security": ["off"],
    "bytea_output": ["escape"],
    "extra_float_digits": ["-15"],
    "array_nulls": ["off"],
    "backslash_quote": ["on"],
    "xmloption": ["document"],
    "default_text_search_config": ["pg_catalog.simple"],
    "plan_cache_mode": ["force_generic_plan"],
    "work_mem": ["64kB", "2GB"],
    "enable_seqscan": ["off"],
    "check_function_bodies": ["off"],
    "default_transaction_isolation": ["serializable"],
    "default_transaction_read_only": ["on"],
    "statement_timeout": ["0", "1"],
    "lock_timeout": ["0"],
    "idle_in_transaction_session_timeout": ["1"],
    "idle_session_timeout": ["1"],
    "client_min_messages": ["debug5"],
    "client_encoding": ["LATIN1", "SQL_ASCII"],
    "synchronous_commit": ["off"],
    "application_name": ["atx-applier apply 0", ""],
    "session_replication_role": ["replica"],
    "log_min_messages": ["debug5"],
    "role": ["fz_victim"],
    "session_authorization": ["fz_victim"],
    "atx.validate": ["off"],
    "atx.exec_timeout": ["1", "1ms", "0"],
    "atx.exec_on_abandon": ["apply", "cancel"],
    "atx.capture_gucs": ["work_mem, enable_seqscan"],
    "atx.allow_in_read_only": ["on"],
}
for _p in PLACEHOLDERS:
    SETTINGS[_p] = ["mal", CANARY + "-" + _p, ""]

# Parameter values, as expressions evaluated in the attacker's session (any role can read them).
PARAMS = {
    "pg_node_tree": "(SELECT ev_action FROM pg_catalog.pg_rewrite LIMIT 1)",
    "pg_node_tree_adbin": "(SELECT adbin FROM pg_catalog.pg_attrdef LIMIT 1)",
    "pg_ndistinct": "(SELECT n_distinct FROM pg_catalog.pg_stats_ext WHERE statistics_name = 'mt_st')",
    "pg_dependencies": "(SELECT dependencies FROM pg_catalog.pg_stats_ext WHERE statistics_name = 'mt_st')",
    "record": "ROW(1, 'x')::fz_att.pt",
    "anonymous_record": "ROW(1, 2)",
    "array": "ARRAY[1, NULL, 3]",
    "array_2d": "ARRAY[[1, 2], [3, 4]]",
    "composite_array": "ARRAY[ROW(1, 'a')::fz_att.pt, NULL]",
    "domain": "5::fz_att.posint",
    "enum": "'happy'::fz_att.mood",
    "huge_text": "repeat('x', 400000)",
    "null": "NULL",
    "typed_null": "NULL::int",
    "unknown": "'x'",
    "text": "'fz'::text",
    "date": "'2001-03-04'::date",
    "timestamptz": "'2001-02-03 04:05:06+00'::timestamptz",
    "interval": "'1 day 2 hours'::interval",
    "money": "12.34::money",
    "regclass": "'fz_att.t'::regclass",
    "regproc": "'fz_att.upper'::regproc",
    "regtype": "'fz_att.pt'::regtype",
    "jsonb": "'{\"a\": [1, null]}'::jsonb",
    "bytea": "decode('00ff10', 'hex')",
    "nan": "'NaN'::float8",
    "infinity": "'-infinity'::timestamptz",
    "xml": "'<a>x</a>'::xml",
    "tsvector": "'a b'::tsvector",
    "inet": "'10.0.0.1'::inet",
    "pg_lsn": "'0/1'::pg_lsn",
    "char": "'x'::\"char\"",
    "int2vector": "(SELECT indkey FROM pg_catalog.pg_index LIMIT 1)",
    "aclitem": "(SELECT relacl[1] FROM pg_catalog.pg_class WHERE relacl IS NOT NULL LIMIT 1)",
    "snapshot": "pg_current_snapshot()",
}
UNRECEIVABLE = ["pg_node_tree", "pg_node_tree_adbin", "pg_ndistinct", "pg_dependencies"]

# SQLSTATEs raised by user code: all look like something the server or the applier would say.
SQLSTATES = ["57014", "57P01", "57P02", "57P03", "57P04", "40001", "40P01", "55P03", "55006", "08000",
             "08003", "08006", "08P01", "XX000", "XX001", "53000", "53100", "53200", "53300", "25001",
             "2D000", "0A000", "42501", "28000", "28P01", "22012", "P0001", "58030", "72000"]
IMITATIONS = [
    "canceling statement due to statement timeout",
    "canceling statement due to user request",
    "terminating connection due to administrator command",
    "the database system is shutting down",
    "could not serialize access due to concurrent update",
    "deadlock detected",
    "server closed the connection unexpectedly",
    "out of memory",
    "password authentication failed for user \"fz_victim\"",
    "event=batch_failed worker=0 first_lsn=0/0 sqlstate=57014",
    "level=critical event=slot_lost action=\"drop the slot\"",
]
SPECIALS = [0x85, 0x2028, 0x2029, 0x0a, 0x0d, 0x1b, 0x07, 0x0b, 0x0c]
HANDLERS = ["query_canceled", "others", "query_canceled OR others", "admin_shutdown", "sqlstate '57014'"]
KILLS = [
    "pg_terminate_backend(pg_backend_pid())",
    "pg_cancel_backend(pg_backend_pid())",
    "(SELECT count(pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity "
    "WHERE application_name LIKE 'atx-applier%')",
    "(SELECT count(pg_cancel_backend(pid)) FROM pg_catalog.pg_stat_activity "
    "WHERE application_name LIKE 'atx-applier%')",
    "pg_reload_conf()",
]
UTILITIES = [
    "RESET ROLE", "RESET ALL", "DISCARD ALL", "SET SESSION AUTHORIZATION fz_victim", "SET ROLE fz_victim",
    "DECLARE fzc CURSOR WITH HOLD FOR SELECT 1", "CREATE TEMP TABLE IF NOT EXISTS fztmp(x int)",
    "PREPARE fzp AS SELECT 1", "LISTEN atx_dead_letter", "LOAD 'pg_atx'", "SET LOCAL statement_timeout = 0",
]
# The victim's statement texts whose meaning depends on the settings they are parsed under (row 5);
# fz_victim sends the same texts and knows what they must give.
PROBES = {
    "scs": "INSERT INTO victim.probe(tag, msg) VALUES ($1, 'x\\'), ($1, '); DELETE FROM victim.secret; --')",
    "datestyle": "INSERT INTO victim.probe(tag, d) VALUES ($1, '03/04/2001')",
    "timezone": "INSERT INTO victim.probe(tag, ts) VALUES ($1, '2001-02-03 04:05:06')",
    "tne": "INSERT INTO victim.probe(tag, b) VALUES ($1, (length($1) = NULL) IS NULL)",
    "path": "INSERT INTO victim.probe(tag, msg) VALUES ($1, upper('a'))",
}
PROBE_SETTINGS = {
    "scs": [("standard_conforming_strings", "off")],
    "datestyle": [("DateStyle", "SQL, DMY")],
    "timezone": [("TimeZone", "Pacific/Chatham")],
    "tne": [("transform_null_equals", "on")],
    "path": [("search_path", "fz_att, pg_catalog, public")],
}
