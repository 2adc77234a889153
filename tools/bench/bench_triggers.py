"""The row-trigger pattern: one INSERT of N rows into a table whose AFTER INSERT FOR EACH ROW
trigger makes an autonomous write per row (the EDB/Oracle autonomous-trigger idiom users port),
against the same trigger writing a plain table in the caller's transaction, plus pg_atx's
statement-level audit trigger (atx.enable_audit: one message per batch of rows).

The statement runs as one pgbench transaction (-t 1), so its time includes the commit, and a
statement that fails (pg_background out of worker slots) is kept with its error and the number of
autonomous rows that were written before it.
"""
import time

import bench_pgbench

# kind -> PL/pgSQL body of the row trigger (NEW.id, NEW.v go to rt_<kind>_log)
BODIES = {
    "plain": "INSERT INTO rt_plain_log VALUES (NEW.id, NEW.v);",
    "atx_log": "PERFORM atx_log('INSERT INTO rt_atx_log_log VALUES ($1, $2)', NEW.id, NEW.v);",
    "dblink": "PERFORM dblink_exec(%(ci)s, format('INSERT INTO rt_dblink_log VALUES (%%s, %%s)', NEW.id, NEW.v));",
    "pg_background result": "PERFORM * FROM pg_background_result(pg_background_launch(format("
                            "'INSERT INTO rt_bgw_result_log VALUES (%%s, %%s)', NEW.id, NEW.v))) AS (r text);",
    "pg_background detach": "PERFORM pg_background_detach(pg_background_launch(format("
                            "'INSERT INTO rt_bgw_detach_log VALUES (%%s, %%s)', NEW.id, NEW.v)));",
}
TABLE = {"plain": "rt_plain", "atx_log": "rt_atx_log", "dblink": "rt_dblink",
         "pg_background result": "rt_bgw_result", "pg_background detach": "rt_bgw_detach"}


def quote(s):
    return "'" + s.replace("'", "''") + "'"


def setup(cluster, kinds):
    ci = quote(cluster.conninfo() + " dbname=postgres")
    for kind in kinds:
        t = TABLE[kind]
        body = BODIES[kind] % {"ci": ci}
        cluster.psql(f"""
            CREATE TABLE {t}_src(id int, v int);
            CREATE TABLE {t}_log(id int, v int);
            CREATE FUNCTION {t}_fn() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN {body} RETURN NULL; END $f$;
            CREATE TRIGGER {t}_trg AFTER INSERT ON {t}_src FOR EACH ROW EXECUTE FUNCTION {t}_fn();""")
    cluster.psql("CREATE TABLE rt_audit_src(id int, v int); SELECT atx.enable_audit('rt_audit_src');")


def count_settled(cluster, count_sql, want, timeout, settle):
    """The count once it reaches `want`, or (settle) once it has stopped growing for two seconds:
    after a failed statement, workers it launched and detached still finish."""
    deadline, last, since = time.time() + timeout, -1, time.time()
    while time.time() < deadline:
        c = int(cluster.psql(count_sql))
        if c >= want:
            return c
        if c != last:
            last, since = c, time.time()
        elif settle and time.time() - since > 2.0:
            return c
        time.sleep(0.1)
    return last


def run_one(cluster, kind, rows, sync, timeout, log, label=None):
    """Inserts `rows` rows through the trigger in one statement; waits for the autonomous rows."""
    label = label or kind
    if kind == "audit":  # run once on a fresh table: a TRUNCATE would be audited too
        src = "rt_audit_src"
        count_sql = ("SELECT count(*) FROM atx.audit_log WHERE table_oid = 'rt_audit_src'::regclass "
                     "AND operation = 'INSERT'")
    else:
        src = TABLE[kind] + "_src"
        count_sql = f"SELECT count(*) FROM {TABLE[kind]}_log"
        cluster.psql(f"TRUNCATE {src}, {TABLE[kind]}_log")
    before = int(cluster.psql(count_sql))
    env = {"PGOPTIONS": f"-c synchronous_commit={sync} -c statement_timeout={timeout}s"}
    p = bench_pgbench.run(cluster, f"INSERT INTO {src} SELECT g, g FROM generate_series(1, {rows}) g;\n",
                          1, transactions=1, env_extra=env, timeout=timeout + 60)
    seconds = p["median_ms"] / 1000.0 if p["ok"] else None
    t0 = time.time()
    got = count_settled(cluster, count_sql, before + rows, 300 if p["ok"] else 30, not p["ok"]) - before
    r = {"kind": kind, "rows": rows, "synchronous_commit": sync, "ok": p["ok"], "seconds": seconds,
         "rows_per_s": rows / seconds if seconds else None, "autonomous_rows": got,
         "autonomous_rows_wait_s": time.time() - t0}
    if kind == "audit":
        r["messages"] = int(cluster.psql("SELECT count(DISTINCT message_id) FROM atx.audit_log "
                                         "WHERE table_oid = 'rt_audit_src'::regclass"))
    if not p["ok"]:
        r["error"] = p["error"]
        log(f"  {label:<40} sync={sync:<3} FAILED: {p['error']} ({got} autonomous rows written before "
            f"the statement failed)")
    else:
        log(f"  {label:<40} sync={sync:<3} {seconds:8.3f} s  {rows / seconds:9.0f} rows/s  "
            f"autonomous rows {got}/{rows}")
    return r


def run_all(cluster, kinds, rows, timeout, log):
    out = {}
    for kind in ("plain", "atx_log"):
        for sync in ("off", "on"):
            if kind in kinds:
                out[f"{kind}, synchronous_commit={sync}"] = run_one(cluster, kind, rows, sync, timeout, log)
    for kind in kinds:
        if kind not in ("plain", "atx_log"):
            out[kind] = run_one(cluster, kind, rows, "on", timeout, log)
    out["atx.enable_audit (statement level)"] = run_one(cluster, "audit", rows, "on", timeout, log,
                                                         "atx.enable_audit (statement level)")
    return out
