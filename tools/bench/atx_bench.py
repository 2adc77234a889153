#!/usr/bin/env python3
"""pg_atx benchmarks: pg_atx against plain INSERT, dblink and pg_background, in one run.

Started by `tools/atx bench [--quick]`. Starts its own throwaway cluster (tests/lib/cluster.sh,
synchronous_commit and fsync at their defaults), interleaves the contenders in rounds so machine
drift hits all alike, prints a table of figures and ratios, and writes the same as JSON.
Standard library only.
"""
import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER_SH = os.path.join(ROOT, "tests", "lib", "cluster.sh")


def sh(script, **kw):
    """Runs bash with cluster.sh sourced; returns stdout."""
    return subprocess.run(["bash", "-c", f". '{CLUSTER_SH}'; {script}"], check=True,
                          capture_output=True, text=True, **kw).stdout.strip()


class Cluster:
    def __init__(self, conf):
        self.dir = sh("atx_cluster_mkdir bench")
        sh(f"atx_cluster_init '{self.dir}' " + " ".join(f"'{c}'" for c in conf))
        sh(f"atx_cluster_start '{self.dir}'")
        self.port = open(os.path.join(self.dir, "port")).read().strip()
        self.env = dict(os.environ, PGHOST=self.dir, PGPORT=self.port, PGUSER="postgres",
                        PGDATABASE="postgres")

    def conninfo(self):
        return f"host={self.dir} port={self.port} user=postgres"

    def psql(self, sql, db="postgres"):
        out = subprocess.run(["psql", "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                             env=self.env, check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        sh(f"atx_cluster_stop '{self.dir}' fast")
        shutil.rmtree(self.dir, ignore_errors=True)


class Applier:
    def __init__(self, binary, cluster, state_dir, args=()):
        self.binary, self.cluster, self.state_dir, self.args = binary, cluster, state_dir, list(args)
        self.proc = None
        self.log = open(os.path.join(cluster.dir, "applier.log"), "a")

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--conninfo", self.cluster.conninfo(), "--dbname", "postgres",
             "--state-dir", self.state_dir, "--log-level", "warn"] + self.args,
            stdout=self.log, stderr=self.log)
        return self

    def peak_rss_kb(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def pgbench(cluster, script, clients, seconds=None, transactions=None, rate=None, log_dir=None,
            extra=()):
    """Runs pgbench with a custom script; returns (tps, latencies in ms or None)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    cmd = ["pgbench", "-n", "-f", path, "-c", str(clients), "-j", str(min(clients, 2))]
    if seconds:
        cmd += ["-T", str(seconds)]
    if transactions:
        cmd += ["-t", str(transactions)]
    if rate:
        cmd += ["--rate", str(rate)]
    if log_dir:
        cmd += ["-l", "--log-prefix", os.path.join(log_dir, "pgbench_log")]
    cmd += list(extra)
    out = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True)
    os.unlink(path)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr[-2000:]}")
    tps = None
    for line in out.stdout.splitlines():
        if line.startswith("tps =") and tps is None:
            tps = float(line.split()[2])
    lat = None
    if log_dir:
        lat = []
        for name in os.listdir(log_dir):
            if name.startswith("pgbench_log"):
                with open(os.path.join(log_dir, name)) as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) >= 3:
                            lat.append(int(parts[2]) / 1000.0)  # microseconds -> ms
                os.unlink(os.path.join(log_dir, name))
    return tps, lat


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def caller_cost(cluster, contenders, clients, seconds, rounds, log):
    """Interleaved rounds; per contender: median/p99 latency and throughput."""
    res = {name: {"lat": [], "tps": []} for name in contenders}
    for r in range(rounds):
        order = list(contenders)
        random.shuffle(order)
        for name in order:
            with tempfile.TemporaryDirectory() as d:
                os.chmod(d, 0o777)
                tps, lat = pgbench(cluster, contenders[name], clients, seconds=seconds, log_dir=d)
            res[name]["tps"].append(tps)
            res[name]["lat"].extend(lat)
            log(f"  round {r + 1}/{rounds} {clients} client(s) {name:<22} {tps:9.1f} calls/s")
    out = {}
    for name, v in res.items():
        out[name] = {"median_ms": statistics.median(v["lat"]), "p99_ms": pct(v["lat"], 99),
                     "calls_per_s": statistics.mean(v["tps"]), "calls": len(v["lat"])}
    return out


def audit_bulk(cluster, n, log):
    """A bulk UPDATE audited by atx.enable_audit (statement level) against the classic PL/pgSQL
    row trigger writing to a plain table; both rolled back, both timed on the caller's side."""
    cluster.psql(f"""
        CREATE TABLE bulk_atx(id int PRIMARY KEY, v int, pad text);
        INSERT INTO bulk_atx SELECT g, 0, repeat('x', 40) FROM generate_series(1, {n}) g;
        CREATE TABLE bulk_plain(LIKE bulk_atx INCLUDING ALL);
        INSERT INTO bulk_plain SELECT * FROM bulk_atx;
        CREATE TABLE plain_audit(id bigserial, table_name text, operation text, old_row jsonb,
                                 new_row jsonb, caller_role name, caller_xid xid8);
        CREATE FUNCTION plain_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO plain_audit(table_name, operation, old_row, new_row, caller_role, caller_xid)
            VALUES (TG_TABLE_NAME, TG_OP, to_jsonb(OLD), to_jsonb(NEW), current_user, pg_current_xact_id());
            RETURN NULL;
        END $$;
        CREATE TRIGGER plain_audit AFTER UPDATE ON bulk_plain FOR EACH ROW EXECUTE FUNCTION plain_audit_row();
        SELECT atx.enable_audit('bulk_atx');
        CHECKPOINT;""")
    before = int(cluster.psql("SELECT count(*) FROM atx.audit_log"))
    t0 = time.time()
    cluster.psql("BEGIN; UPDATE bulk_atx SET v = v + 1; ROLLBACK;")
    atx_s = time.time() - t0
    wait_count(cluster, "atx.audit_log", before + n, 600)
    applied_s = time.time() - t0
    msgs = int(cluster.psql(f"SELECT count(DISTINCT message_id) FROM (SELECT message_id FROM atx.audit_log "
                            f"ORDER BY id DESC LIMIT {n}) s"))
    t0 = time.time()
    cluster.psql("BEGIN; UPDATE bulk_plain SET v = v + 1; ROLLBACK;")
    plain_s = time.time() - t0
    r = {"rows": n, "messages": msgs, "atx_statement_rows_per_s": n / atx_s,
         "atx_applied_rows_per_s": n / applied_s, "plain_trigger_rows_per_s": n / plain_s}
    log(f"  {n} rows: atx audit {n / atx_s:.0f} rows/s in the statement ({msgs} messages), "
        f"{n / applied_s:.0f} rows/s until applied; plain-table trigger {n / plain_s:.0f} rows/s")
    return r


def drop_slot(cluster, slot, timeout=30):
    """Drops the slot once its walsender has let go of it; nothing to do if it is gone already."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = cluster.psql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'")
        if state == "":
            return
        if state == "f":
            cluster.psql(f"SELECT pg_drop_replication_slot('{slot}')")
            return
        time.sleep(0.1)
    raise RuntimeError(f"slot {slot} still active after {timeout}s")


def wait_streaming(cluster, timeout=60):
    """Waits until the applier streams the pg_atx slot."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cluster.psql("SELECT count(*) FROM pg_replication_slots WHERE plugin = 'pg_atx' AND active") == "1":
            return
        time.sleep(0.05)
    raise RuntimeError("the applier did not start streaming")


def wait_count(cluster, table, n, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        c = int(cluster.psql(f"SELECT count(*) FROM {table}"))
        if c >= n:
            return c
        time.sleep(0.05)
    raise RuntimeError(f"{table}: only {c} of {n} rows after {timeout}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs, under 3 minutes")
    ap.add_argument("--applier", default=os.path.join(ROOT, "build", "applier", "atx-applier"))
    ap.add_argument("--json", default=os.path.join(ROOT, "build", "bench", "results.json"))
    a = ap.parse_args()

    q = a.quick
    seconds = 4 if q else 10
    rounds = 2 if q else 3
    drain_n = 50000 if q else 200000
    e2e_seconds = 5 if q else 20
    tpcb_seconds = 6 if q else 20

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    cluster = Cluster(["shared_preload_libraries = 'pg_atx'"])  # atx_exec needs the waiter registry
    state = tempfile.mkdtemp(prefix="atx-bench-state.")
    applier = Applier(a.applier, cluster, state)
    results = {"mode": "quick" if q else "full", "machine": {}, "caller": {}, "ratios": {}}
    try:
        results["machine"] = {
            "cpus": os.cpu_count(), "kernel": platform.release(),
            "server": cluster.psql("SHOW server_version"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        cluster.psql("CREATE EXTENSION pg_atx; CREATE EXTENSION dblink;")
        has_bgw = cluster.psql("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_background'") == "1"
        if has_bgw:
            cluster.psql("CREATE EXTENSION pg_background")
        for t in ("bench_plain", "bench_atx", "bench_dblink", "bench_bgw"):
            cluster.psql(f"CREATE TABLE {t}(id bigserial PRIMARY KEY, v int)")
        cluster.psql("CREATE TABLE bench_drain(id bigserial PRIMARY KEY, v int, "
                     "applied_at timestamptz DEFAULT clock_timestamp())")
        cluster.psql("CREATE TABLE bench_e2e(id bigserial PRIMARY KEY, emitted_at timestamptz, "
                     "applied_at timestamptz DEFAULT clock_timestamp())")
        applier.start()
        for _ in range(300):
            if cluster.psql("SELECT count(*) FROM pg_replication_slots WHERE plugin = 'pg_atx'") == "1":
                break
            time.sleep(0.1)

        ci = cluster.conninfo() + " dbname=postgres"
        contenders = {
            "plain INSERT": "\\set i random(1, 1000000)\nINSERT INTO bench_plain(v) VALUES (:i);\n",
            # One round trip each, like the plain INSERT: "\;" makes pgbench send one query string.
            "atx_log, commit": "\\set i random(1, 1000000)\nBEGIN \\; "
                               "SELECT atx_log('INSERT INTO bench_atx(v) VALUES ($1)', :i) \\; COMMIT;\n",
            "atx_log, rollback": "\\set i random(1, 1000000)\nBEGIN \\; "
                                 "SELECT atx_log('INSERT INTO bench_atx(v) VALUES ($1)', :i) \\; ROLLBACK;\n",
            "dblink": "\\set i random(1, 1000000)\n"
                      f"SELECT dblink_exec('{ci}', 'INSERT INTO bench_dblink(v) VALUES (' || :i || ')');\n",
        }
        if has_bgw:
            contenders["pg_background result"] = (
                "\\set i random(1, 1000000)\nSELECT * FROM pg_background_result(pg_background_launch("
                "'INSERT INTO bench_bgw(v) VALUES (' || :i || ')')) AS (r text);\n")
            contenders["pg_background detach"] = (
                "\\set i random(1, 1000000)\nSELECT pg_background_detach(pg_background_launch("
                "'INSERT INTO bench_bgw(v) VALUES (' || :i || ')'));\n")

        # Caller cost is what the calling session pays: measured with the applier stopped, so that
        # its work (and the walsender's) does not share the CPUs with the callers. Messages wait
        # in the slot and are drained before step 2.
        log("1. caller cost (applier stopped)")
        applier.stop()
        for clients in (1, 8):
            results["caller"][str(clients)] = caller_cost(cluster, contenders, clients, seconds, rounds, log)

        log("2. applier drain rate")
        applier = Applier(a.applier, cluster, state, ["--once"]).start()
        applier.proc.wait(timeout=1800)  # drains the caller-cost backlog, then exits
        cluster.psql("TRUNCATE bench_drain")
        t0 = time.time()
        emit_tps, _ = pgbench(cluster, "SELECT atx_log('INSERT INTO bench_drain(v) VALUES ($1)', 1);\n",
                              8, transactions=drain_n // 8)
        log(f"  emitted {drain_n} with 8 clients in {time.time() - t0:.1f}s ({emit_tps:.0f}/s)")
        applier = Applier(a.applier, cluster, state)
        t0 = time.time()
        applier.start()
        n = drain_n // 8 * 8
        wait_count(cluster, "bench_drain", n, 1800)
        drain_s = time.time() - t0
        # Steady rate from the rows' own apply times: excludes connecting, slot and origin setup.
        apply_s = float(cluster.psql("SELECT extract(epoch FROM max(applied_at) - min(applied_at)) FROM bench_drain"))
        results["drain"] = {"messages": n, "seconds_incl_startup": drain_s, "apply_seconds": apply_s,
                            "messages_per_s": n / apply_s, "messages_per_s_incl_startup": n / drain_s,
                            "emit_8_clients_per_s": emit_tps, "applier_peak_rss_kb": applier.peak_rss_kb()}
        log(f"  drained in {drain_s:.1f}s incl. startup, {apply_s:.2f}s applying: {n / apply_s:.0f}/s")
        applier.stop()

        log("3. end-to-end latency")
        applier = Applier(a.applier, cluster, state).start()
        wait_streaming(cluster)
        time.sleep(1)  # let the first status exchange settle before offering load
        results["e2e"] = {}
        for rate in (1000, 5000):
            cluster.psql("TRUNCATE bench_e2e")
            tps, _ = pgbench(cluster, "SELECT atx_log('INSERT INTO bench_e2e(emitted_at) VALUES ($1)', "
                                      "clock_timestamp());\n", 4, seconds=e2e_seconds, rate=rate)
            time.sleep(2)
            rows = cluster.psql("SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), "
                                "percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) FROM "
                                "(SELECT extract(epoch FROM applied_at - emitted_at) * 1000 AS ms "
                                "FROM bench_e2e) s").split("|")
            results["e2e"][str(rate)] = {"offered_per_s": rate, "achieved_per_s": tps, "messages": int(rows[0]),
                                         "median_ms": float(rows[1]), "p99_ms": float(rows[2]),
                                         "max_ms": float(rows[3])}
            log(f"  {rate}/s: median {float(rows[1]):.2f} ms, p99 {float(rows[2]):.2f} ms, max {float(rows[3]):.2f} ms")
        results["e2e"]["applier_peak_rss_kb"] = applier.peak_rss_kb()

        log("3b. atx_exec latency (1 client), next to dblink")
        cluster.psql("CREATE TABLE bench_exec(id bigserial PRIMARY KEY, v int)")
        results["exec"] = caller_cost(cluster, {
            "atx_exec": "\\set i random(1, 1000000)\n"
                        "SELECT atx_exec('INSERT INTO bench_exec(v) VALUES ($1) RETURNING id', :i);\n",
            "dblink": contenders["dblink"],
        }, 1, seconds, rounds, log)

        log("4. walsender overhead (pgbench TPC-B)")
        subprocess.run(["pgbench", "-i", "-q", "-s", "10"], env=cluster.env, check=True, capture_output=True)
        tpcb = {"no slot": [], "slot, idle": [], "slot, 1000 msg/s": []}
        side_script = os.path.join(cluster.dir, "side.sql")
        with open(side_script, "w") as f:
            f.write("SELECT atx_log('INSERT INTO bench_drain(v) VALUES (2)');\n")
        slot = cluster.psql("SELECT slot_name FROM pg_replication_slots WHERE plugin = 'pg_atx'")
        for r in range(rounds):
            order = list(tpcb)
            random.shuffle(order)
            for name in order:
                applier.stop()
                if name == "no slot":
                    drop_slot(cluster, slot)
                else:
                    applier = Applier(a.applier, cluster, state).start()
                    wait_streaming(cluster)
                side = None
                if name == "slot, 1000 msg/s":
                    side = subprocess.Popen(
                        ["pgbench", "-n", "-c", "1", "-T", str(tpcb_seconds), "--rate", "1000", "-f", side_script],
                        env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                out = subprocess.run(["pgbench", "-n", "-c", "8", "-j", "2", "-T", str(tpcb_seconds)],
                                     env=cluster.env, check=True, capture_output=True, text=True).stdout
                tps = float([l for l in out.splitlines() if l.startswith("tps =")][0].split()[2])
                if side:
                    side.wait()
                tpcb[name].append(tps)
                log(f"  round {r + 1}/{rounds} {name:<18} {tps:8.1f} tps")
        if applier.proc is None:
            applier = Applier(a.applier, cluster, state).start()
        time.sleep(3)
        spill = cluster.psql("SELECT coalesce(sum(spill_bytes), 0) FROM pg_stat_replication_slots")
        retained = cluster.psql("SELECT coalesce(max(pg_current_wal_lsn() - restart_lsn), 0) "
                                "FROM pg_replication_slots WHERE plugin = 'pg_atx'")
        results["tpcb"] = {k: statistics.mean(v) for k, v in tpcb.items()}
        results["tpcb"]["spill_bytes"] = int(spill)
        results["tpcb"]["wal_retained_bytes"] = int(float(retained))

        log("5. audit trigger, bulk UPDATE")
        results["audit"] = audit_bulk(cluster, 20000 if q else 100000, log)

        c1, c8 = results["caller"]["1"], results["caller"]["8"]
        ratios = results["ratios"]
        ratios["atx_log / plain INSERT, median latency, 1 client"] = c1["atx_log, commit"]["median_ms"] / c1["plain INSERT"]["median_ms"]
        ratios["dblink / atx_log, median latency, 1 client"] = c1["dblink"]["median_ms"] / c1["atx_log, commit"]["median_ms"]
        ratios["atx_log / dblink, throughput, 8 clients"] = c8["atx_log, commit"]["calls_per_s"] / c8["dblink"]["calls_per_s"]
        if has_bgw:
            ratios["pg_background result / atx_log, median latency, 1 client"] = c1["pg_background result"]["median_ms"] / c1["atx_log, commit"]["median_ms"]
            ratios["atx_log / pg_background result, throughput, 8 clients"] = c8["atx_log, commit"]["calls_per_s"] / c8["pg_background result"]["calls_per_s"]
        # Against the fastest 8-client emit rate seen in this run (the strictest denominator).
        emit8 = max(c8["atx_log, commit"]["calls_per_s"], c8["atx_log, rollback"]["calls_per_s"],
                    results["drain"]["emit_8_clients_per_s"])
        ratios["drain / 8-client emit"] = results["drain"]["messages_per_s"] / emit8
        ratios["dblink / atx_exec, median latency, 1 client"] = (
            results["exec"]["dblink"]["median_ms"] / results["exec"]["atx_exec"]["median_ms"])
        ratios["audit trigger (atx) / plain-table trigger, rows/s"] = (
            results["audit"]["atx_statement_rows_per_s"] / results["audit"]["plain_trigger_rows_per_s"])
        ratios["TPC-B with slot, idle / without"] = results["tpcb"]["slot, idle"] / results["tpcb"]["no slot"]
        ratios["TPC-B with slot, 1000 msg/s / without"] = results["tpcb"]["slot, 1000 msg/s"] / results["tpcb"]["no slot"]
    finally:
        applier.stop()
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)

    print_table(results, has_bgw)
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nJSON: {a.json}")


def print_table(r, has_bgw):
    m = r["machine"]
    print(f"\npg_atx benchmark ({r['mode']}), PostgreSQL {m['server']}, {m['cpus']} CPUs, {m['date']}\n")
    print("Caller cost                   1 client: median   p99    calls/s | 8 clients: median   p99    calls/s")
    for name in r["caller"]["1"]:
        a, b = r["caller"]["1"][name], r["caller"]["8"][name]
        print(f"  {name:<26} {a['median_ms']:8.3f} {a['p99_ms']:7.3f} {a['calls_per_s']:9.1f} |"
              f"          {b['median_ms']:7.3f} {b['p99_ms']:7.3f} {b['calls_per_s']:9.1f}   (ms)")
    d = r["drain"]
    print(f"\nApplier drain: {d['messages']} messages applied in {d['apply_seconds']:.2f} s = "
          f"{d['messages_per_s']:.0f}/s ({d['messages_per_s_incl_startup']:.0f}/s counting applier startup; "
          f"8-client emit {d['emit_8_clients_per_s']:.0f}/s; peak RSS {d['applier_peak_rss_kb']} kB)")
    for rate in ("1000", "5000"):
        e = r["e2e"][rate]
        print(f"End-to-end at {rate}/s offered ({e['achieved_per_s']:.0f}/s achieved): median {e['median_ms']:.2f} ms, "
              f"p99 {e['p99_ms']:.2f} ms, max {e['max_ms']:.2f} ms")
    print(f"Applier peak RSS during end-to-end: {r['e2e']['applier_peak_rss_kb']} kB")
    ex = r["exec"]
    print(f"atx_exec, 1 client: median {ex['atx_exec']['median_ms']:.3f} ms, p99 {ex['atx_exec']['p99_ms']:.3f} ms "
          f"({ex['atx_exec']['calls_per_s']:.0f}/s); dblink in the same rounds: median "
          f"{ex['dblink']['median_ms']:.3f} ms, p99 {ex['dblink']['p99_ms']:.3f} ms")
    t = r["tpcb"]
    print(f"TPC-B tps: no slot {t['no slot']:.0f}, slot idle {t['slot, idle']:.0f}, slot + 1000 msg/s "
          f"{t['slot, 1000 msg/s']:.0f}; spill bytes {t['spill_bytes']}, WAL retained {t['wal_retained_bytes']} B")
    au = r["audit"]
    print(f"Audit trigger, bulk UPDATE of {au['rows']} rows (rolled back): atx statement-level "
          f"{au['atx_statement_rows_per_s']:.0f} rows/s in {au['messages']} messages "
          f"({au['atx_applied_rows_per_s']:.0f} rows/s until applied); plain-table row trigger "
          f"{au['plain_trigger_rows_per_s']:.0f} rows/s (its rows are lost with the ROLLBACK)")
    if not has_bgw:
        print("pg_background: not installed on this server, not measured")
    print("\nRatios")
    for k, v in r["ratios"].items():
        print(f"  {k:<58} {v:8.2f}x")


if __name__ == "__main__":
    main()
