"""Step 9 of tools/atx bench: isolation under attack (issue 21).

One attacker login (bench_mal, a member of two NOLOGIN group roles) runs each stall pattern of
the hostile-apply issue for a window, through four lanes (two per group role), while a victim
role writes a steady stream (plain messages, messages that call atx_exec, non-atomic ones). Each
hostile statement loops while bench_mal_ctl.go is true, so a pattern ends when the window does.

Measured per pattern, from the server's clocks: the victim's end-to-end latency per kind; for
every hostile message seen running (atx.apply_activity(), polled), how long it took from the
start of its last run to its final state (the later of its final record's time, the dead letter's
or atx.applied handled_at, and the last poll that saw it running), and from its emit; how far
the slot fell behind (the oldest WAL position it still held, in seconds); and the largest
resident memory of an apply backend. The applier runs with a shorter message limit than
its default (--statement-timeout-ms, below) so that the window sees the limit enforced several
times; the targets are relative to it.
"""
import os
import subprocess
import threading
import time

import bench_env
import bench_pgbench

TARGETS = {"victim_p99_ms": 100, "victim_max_ms": 1000, "final_margin_s": 10, "rss_mb": 256}

SETUP = """
DO $$BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_victim') THEN CREATE ROLE bench_victim LOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_mal') THEN CREATE ROLE bench_mal LOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_mal_g1') THEN CREATE ROLE bench_mal_g1 NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_mal_g2') THEN CREATE ROLE bench_mal_g2 NOLOGIN; END IF;
END$$;
GRANT bench_mal_g1, bench_mal_g2 TO bench_mal;
CREATE TABLE IF NOT EXISTS bench_victim_lat(kind text, t0 timestamptz, t1 timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON bench_victim_lat TO bench_victim;
CREATE OR REPLACE FUNCTION bench_victim_nested(t0 timestamptz) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN PERFORM atx_exec('INSERT INTO bench_victim_lat(kind, t0) VALUES (''nested'', $1)', t0); END $f$;
CREATE OR REPLACE PROCEDURE bench_victim_na(t0 timestamptz) LANGUAGE plpgsql AS $f$
BEGIN INSERT INTO bench_victim_lat(kind, t0) VALUES ('nonatomic', t0); COMMIT; END $f$;
-- Row 10: the victim offers a SECURITY DEFINER function that emits, to everyone.
CREATE OR REPLACE FUNCTION bench_victim_enqueue(t text) RETURNS uuid LANGUAGE sql SECURITY DEFINER AS $f$
    SELECT atx_log('INSERT INTO bench_victim_lat(kind, t0) VALUES (''enqueued'', clock_timestamp())') $f$;
ALTER FUNCTION bench_victim_enqueue(text) OWNER TO bench_victim;
GRANT EXECUTE ON FUNCTION bench_victim_enqueue(text) TO PUBLIC;
CREATE TABLE IF NOT EXISTS bench_mal_ctl(go boolean);
GRANT SELECT ON bench_mal_ctl TO PUBLIC;
-- Row 3: catches the cancel its own limit sends, and goes on.
CREATE OR REPLACE FUNCTION bench_mal_stall() RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    WHILE (SELECT go FROM bench_mal_ctl) LOOP
        BEGIN PERFORM pg_sleep(0.5); EXCEPTION WHEN query_canceled THEN NULL; END;
    END LOOP;
END $f$;
-- Row 7: atx_exec on work that outlives the wait (exec_on_abandon = apply), caught, in a loop.
CREATE OR REPLACE FUNCTION bench_mal_nested() RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    WHILE (SELECT go FROM bench_mal_ctl) LOOP
        BEGIN PERFORM atx_exec('SELECT pg_sleep(3)'); EXCEPTION WHEN OTHERS THEN NULL; END;
    END LOOP;
END $f$;
-- Row 8: a procedure that atx_execs itself (a non-atomic message), caught, commits, loops.
CREATE OR REPLACE PROCEDURE bench_mal_na() LANGUAGE plpgsql AS $f$
BEGIN
    WHILE (SELECT go FROM bench_mal_ctl) LOOP
        BEGIN PERFORM atx_exec('CALL bench_mal_na()'); EXCEPTION WHEN OTHERS THEN NULL; END;
        COMMIT;
    END LOOP;
END $f$;
GRANT EXECUTE ON FUNCTION bench_mal_stall(), bench_mal_nested() TO PUBLIC;
GRANT EXECUTE ON PROCEDURE bench_mal_na() TO PUBLIC;
"""

# What each attacker lane sends once per `every` seconds during the window: (settings, statements,
# as a group role). Each statement is one atx_log. Non-atomic messages run in a background worker
# connected as their role, which must be able to log in before PostgreSQL 17: row 8 uses the login.
PATTERNS = {
    "row 3: stalls that catch their cancel": [("", "SELECT bench_mal_stall()", True)] * 4,
    "row 7: nested atx_exec loops": [("SET atx.exec_on_abandon = apply; SET atx.exec_timeout = '1s';",
                                      "SELECT bench_mal_nested()", True)] * 4,
    "row 8: non-atomic self-calls": [("", "CALL bench_mal_na()", False)] * 4,
    "row 10: stalls, then the victim's SECURITY DEFINER emitter":
        [("", "SELECT bench_mal_stall()", True)] * 2 +
        [("", "SELECT bench_mal_stall(); SELECT bench_victim_enqueue('x')", True)] * 2,
}
ROW6 = "row 6: 200k-row VALUES lists"


def _psql(cluster, sql, user, timeout=None):
    """psql as `user`, the SQL on standard input (a statement may be larger than an argument may)."""
    return subprocess.run([cluster.pg.tool("psql"), "-qAtX", "-f", "-"], input=sql, env=dict(cluster.env, PGUSER=user),
                          capture_output=True, text=True, timeout=timeout)


class Sampler(threading.Thread):
    """Polls the apply registry, the slot and the apply backends' memory while a pattern runs."""

    def __init__(self, cluster, roles):
        super().__init__(daemon=True)
        self.cluster, self.roles = cluster, roles
        self.t0 = time.time()  # the registry keeps exit records: earlier patterns' runs are not this one's
        self.stop_ev = threading.Event()
        # message id -> started_at of each of its runs seen (epoch s), hostile roles only: a
        # non-atomic message's atomic run, then its top-level run once a background worker is
        # free. The bound is on a run, from the last one before its final state (fuzz_apply
        # counts the same way), not on the wait for a worker between them.
        self.starts = {}
        # message id -> when a poll last saw it running: its run had not ended then (an applied
        # record's handled_at is its transaction's start, which a batch began before this
        # message's run).
        self.last_seen = {}
        self.wal = []       # (epoch s, current WAL lsn as int, confirmed as int)
        self.rss_kb = 0
        self.errors = 0

    @staticmethod
    def lsn(text):
        hi, lo = text.split("/")
        return (int(hi, 16) << 32) | int(lo, 16)

    def run(self):
        while not self.stop_ev.is_set():
            try:
                out = self.cluster.psql(
                    "SELECT a.message_id::text, extract(epoch FROM a.started_at) || ' ' || (a.exited_at IS NULL) "
                    "FROM atx.apply_activity() a "
                    f"JOIN pg_roles r ON r.oid = a.role_oid WHERE a.message_id IS NOT NULL AND r.rolname IN ({self.roles}) "
                    f"AND a.started_at >= to_timestamp({self.t0}) "
                    "UNION ALL SELECT 'wal', extract(epoch FROM clock_timestamp()) || ' ' || pg_current_wal_lsn() || ' ' || "
                    "(SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = atx.slot_name()) "
                    "UNION ALL SELECT 'pid', pid::text FROM pg_stat_activity WHERE application_name LIKE 'atx-applier apply%'")
                for line in out.splitlines():
                    k, v = line.split("|", 1)
                    if k == "wal":
                        t, cur, conf = v.split()
                        self.wal.append((float(t), self.lsn(cur), self.lsn(conf)))
                    elif k == "pid":
                        self.rss_kb = max(self.rss_kb, bench_env.proc_status_kb(v, "VmRSS") or 0)
                    elif v:
                        started, running = v.split()
                        self.starts.setdefault(k, set()).add(float(started))
                        if running == "true":  # not the exit record of a backend that died running it
                            self.last_seen[k] = time.time()
            except (subprocess.CalledProcessError, ValueError):
                self.errors += 1
            self.stop_ev.wait(0.2)

    def slot_lag_s(self):
        """Largest time the slot held back: for each sample, how long ago the WAL position it
        confirmed was the current one."""
        worst, j = 0.0, 0
        for t, _, conf in self.wal:
            while j < len(self.wal) - 1 and self.wal[j + 1][1] <= conf:
                j += 1
            first_after = next((s for s in self.wal[j:] if s[1] > conf), None)
            if first_after is not None and first_after[0] <= t:
                worst = max(worst, t - first_after[0])
        return worst


def _lanes(cluster, pattern, window, every, emitted):
    """The attacker's lanes, each a session of its own, until the window ends."""
    def lane(i, settings, stmt, as_group):
        group = ("SET ROLE bench_mal_g1;" if i % 2 == 0 else "SET ROLE bench_mal_g2;") if as_group else ""
        end = time.time() + window
        while time.time() < end:
            sql = (f"{group} {settings} " +
                   " ".join(f"SELECT atx_log($q${s.strip()}$q$);" for s in stmt.split(";") if s.strip()))
            r = _psql(cluster, sql, "bench_mal", timeout=30)
            emitted.extend(x for x in r.stdout.split() if len(x) == 36)
            time.sleep(every)
    threads = [threading.Thread(target=lane, args=(i, s, st, g), daemon=True) for i, (s, st, g) in enumerate(pattern)]
    for t in threads:
        t.start()
    return threads


def _victim_load(cluster, window, rate):
    """The victim's stream: plain messages at `rate`/s, atx_exec-calling ones at 2/s, non-atomic at 0.5/s."""
    env = {"PGUSER": "bench_victim"}
    loads = [
        ("SELECT atx_log('INSERT INTO bench_victim_lat(kind, t0) VALUES (''log'', $1)', clock_timestamp());\n", rate, 4),
        ("SELECT atx_log('SELECT bench_victim_nested($1)', clock_timestamp());\n", 2, 1),
        ("SELECT atx_log('CALL bench_victim_na($1)', clock_timestamp());\n", 0.5, 1),
    ]
    threads = []
    for script, r, clients in loads:
        t = threading.Thread(target=bench_pgbench.run, args=(cluster, script, clients),
                             kwargs={"seconds": window, "rate": r, "env_extra": env, "log_latencies": False},
                             daemon=True)
        t.start()
        threads.append(t)
    return threads


def _victim_figures(cluster):
    out = {}
    rows = cluster.psql("SELECT kind, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), "
                        "percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) FROM "
                        "(SELECT kind, extract(epoch FROM t1 - t0) * 1000 AS ms FROM bench_victim_lat "
                        " WHERE kind <> 'enqueued') s GROUP BY kind ORDER BY kind")
    for line in rows.splitlines():
        kind, n, p50, p99, mx = line.split("|")
        out[kind] = {"messages": int(n), "median_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2),
                     "max_ms": round(float(mx), 2)}
    return out


def _finals(cluster, ids):
    """Final time (epoch s) of each message id that has one: its atx.applied record (not parked
    or started) or its dead letter."""
    if not ids:
        return {}
    arr = "ARRAY[" + ",".join(f"'{i}'" for i in ids) + "]::uuid[]"
    out = cluster.psql(
        f"SELECT message_id, extract(epoch FROM handled_at) FROM atx.applied WHERE message_id = ANY({arr}) "
        "AND status NOT IN ('parked', 'started') "
        f"UNION ALL SELECT message_id, extract(epoch FROM dead_at) FROM atx.dead_letter WHERE message_id = ANY({arr})")
    finals = {}
    for line in out.splitlines():
        k, v = line.split("|")
        finals[k] = min(float(v), finals.get(k, float(v)))
    return finals


def _wait_final(cluster, ids_now, deadline):
    """Until every id ids_now() names has a final state, or the deadline: their final times."""
    while True:
        ids = ids_now()
        finals = _finals(cluster, ids)
        if len(finals) >= len(ids) or time.time() >= deadline:
            return finals
        time.sleep(0.5)


def _record(cluster, mid):
    """What the server holds of a message: its atx.applied status and its dead letter's SQLSTATE."""
    return cluster.psql(f"SELECT coalesce((SELECT status FROM atx.applied WHERE message_id = '{mid}'), '-') || ' ' || "
                        f"coalesce((SELECT sqlstate || ' ' || left(error, 80) FROM atx.dead_letter "
                        f"WHERE message_id = '{mid}' LIMIT 1), '-')")


def _emit_time(uuid):
    """Seconds since the epoch of a UUID v7 (a message's own id carries its emit millisecond);
    None for a nested message's id (derived from its parent's, version 5)."""
    if uuid[14] != "7":
        return None
    return int(uuid.replace("-", "")[:12], 16) / 1000.0


def run(cluster, new_applier, quick, log):
    """Returns the figures per pattern and the targets; leaves a fresh applier running."""
    window = 12 if quick else 60
    limit_ms = 4000 if quick else 20000
    rate = 100 if quick else 200
    cluster.psql(SETUP)
    applier = new_applier(["--statement-timeout-ms", str(limit_ms), "--prune-interval-ms", "3600000"]).start()
    roles = "'bench_mal', 'bench_mal_g1', 'bench_mal_g2'"
    results = {"window_s": window, "message_limit_ms": limit_ms, "victim_rate_per_s": rate,
               "targets": dict(TARGETS), "patterns": {}}
    try:
        bench_env.wait_streaming(cluster)
        for name, pattern in list(PATTERNS.items()) + [(ROW6, None)]:
            cluster.psql("TRUNCATE bench_victim_lat; DELETE FROM bench_mal_ctl; INSERT INTO bench_mal_ctl VALUES (true)")
            sampler = Sampler(cluster, roles)
            sampler.start()
            emitted = []
            victim = _victim_load(cluster, window, rate)
            if pattern is None:
                big = "SELECT count(*) FROM (VALUES " + ",".join(["(1)"] * 200000) + ") v(x)"
                lanes = []
                for _ in range(3):
                    r = _psql(cluster, f"SELECT atx_log($q${big}$q$)", "bench_mal", timeout=120)
                    emitted.extend(x for x in r.stdout.split() if len(x) == 36)
            else:
                lanes = _lanes(cluster, pattern, window, 5, emitted)
            for t in victim + lanes:
                t.join(timeout=window + 240)
            cluster.psql("UPDATE bench_mal_ctl SET go = false")
            # Every hostile message final (the loops end now), then the victim's last messages.
            deadline = time.time() + limit_ms / 1000 + 120
            _wait_final(cluster, lambda: set(emitted) | set(sampler.starts), deadline)
            # The victim's stream has ended when its count stops growing.
            last, stable = -1, 0
            while stable < 4 and time.time() < deadline + 60:
                n = int(cluster.psql("SELECT count(*) FROM bench_victim_lat"))
                stable = stable + 1 if n == last else 0
                last = n
                time.sleep(0.5)
            sampler.stop_ev.set()
            sampler.join()
            # Messages first seen running after the wait above (the attacker's queued children
            # run once the loops end): their final state is waited for too, to the same deadline.
            ids = set(emitted) | set(sampler.starts)
            finals = _wait_final(cluster, lambda: ids, deadline)
            # The run that ended in the final state: the last one that began before it (a copy
            # that ran later only found the record).
            ended = {i: max(finals[i], sampler.last_seen.get(i, 0.0)) for i in finals}
            run_start = {i: max((t for t in ts if t <= ended[i]), default=None) for i, ts in sampler.starts.items()
                         if i in ended}
            run_start = {i: t for i, t in run_start.items() if t is not None}
            run_to_final = [ended[i] - t for i, t in run_start.items()]
            slowest = sorted(run_start, key=lambda i: run_start[i] - ended[i])[:3]
            emit_to_final = [finals[i] - _emit_time(i) for i in emitted if i in finals and _emit_time(i)]
            r = {"victim": _victim_figures(cluster),
                 "hostile_messages": len(ids), "hostile_final": len(finals),
                 "hostile_run_to_final_max_s": round(max(run_to_final, default=0), 1),
                 "hostile_emit_to_final_max_s": round(max(emit_to_final, default=0), 1),
                 "slot_lag_max_s": round(sampler.slot_lag_s(), 1),
                 "apply_backend_rss_max_mb": round(sampler.rss_kb / 1024, 1),
                 "sampler_errors": sampler.errors,
                 "hostile_slowest": [{"id": i, "emit_to_run_s": round(run_start[i] - _emit_time(i), 1) if _emit_time(i) else None,
                                      "run_to_final_s": round(ended[i] - run_start[i], 1),
                                      "record": _record(cluster, i)} for i in slowest],
                 "hostile_open": [{"id": i, "record": _record(cluster, i)} for i in sorted(ids - set(finals))[:3]]}
            results["patterns"][name] = r
            v = r["victim"].get("log", {})
            log(f"  {name}: victim p99 {v.get('p99_ms')} ms, max {v.get('max_ms')} ms; hostile {r['hostile_final']}/"
                f"{r['hostile_messages']} final, run to final max {r['hostile_run_to_final_max_s']} s; slot lag max "
                f"{r['slot_lag_max_s']} s; apply backend RSS max {r['apply_backend_rss_max_mb']} MB")
            for o in r["hostile_open"]:  # what a MISS of "hostile final" is about
                log(f"    not final: {o['id']} (emitted {'yes' if o['id'] in emitted else 'no, seen running'}; "
                    f"record: {o['record']})")
    finally:
        applier.stop()
    return results


def verdicts(results):
    """Each pattern against the targets: a list of (pattern, check, measured, target, ok)."""
    t, out = results["targets"], []
    bound = results["message_limit_ms"] / 1000 + t["final_margin_s"]
    for name, r in results["patterns"].items():
        for kind, v in r["victim"].items():
            out.append((name, f"victim {kind} p99 ms", v["p99_ms"], t["victim_p99_ms"], v["p99_ms"] <= t["victim_p99_ms"]))
            out.append((name, f"victim {kind} max ms", v["max_ms"], t["victim_max_ms"], v["max_ms"] <= t["victim_max_ms"]))
        out.append((name, "hostile final / seen", f"{r['hostile_final']}/{r['hostile_messages']}", "all",
                    r["hostile_final"] == r["hostile_messages"]))
        out.append((name, "hostile run to final max s", r["hostile_run_to_final_max_s"], bound,
                    r["hostile_run_to_final_max_s"] <= bound))
        out.append((name, "slot lag max s", r["slot_lag_max_s"], bound, r["slot_lag_max_s"] <= bound))
        out.append((name, "apply backend RSS max MB", r["apply_backend_rss_max_mb"], t["rss_mb"],
                    r["apply_backend_rss_max_mb"] <= t["rss_mb"]))
    return out


if __name__ == "__main__":
    print(__doc__)
    os._exit(0)
