"""Figures for features the redesign brings. Each one runs when the feature is there and otherwise
records {"skipped": "needs ..."}; detection looks at what the applier's --help offers or at what
the server does, never at version numbers. --run-pending runs the ones that can run without the
feature anyway (they then show today's behaviour).
"""
import os
import shutil
import subprocess
import tempfile
import time

import bench_env
import bench_pgbench

SYNC_LEVELS = ("off", "local", "on", "remote_write", "remote_apply")


def skipped(log, name, why):
    log(f"  {name}: skipped: needs {why}")
    return {"skipped": f"needs {why}"}


# --- apply sessions (issue 11) ---------------------------------------------------------------

def has_apply_sessions(help_text):
    return "--apply-sessions" in help_text


def drain_by_sessions(cluster, new_applier, n, sessions, log):
    """Emits n messages with the applier stopped, then drains them with k apply sessions."""
    cluster.psql("CREATE TABLE IF NOT EXISTS bench_drain(id bigserial PRIMARY KEY, v int, "
                 "applied_at timestamptz DEFAULT clock_timestamp())")
    out = {}
    for k in sessions:
        cluster.psql("TRUNCATE bench_drain")
        emit = bench_pgbench.run(cluster, "\\set i random(1, 1000000)\n"
                                          "SELECT atx_log('INSERT INTO bench_drain(v) VALUES ($1)', :i);\n",
                                 8, transactions=n // 8, log_latencies=False, timeout=1200)
        t0 = time.time()
        applier = new_applier(["--apply-sessions", str(k)]).start()
        try:
            got = bench_env.wait_count(cluster, "bench_drain", n // 8 * 8, 1200)
        finally:
            total_s = time.time() - t0
            applier.stop()
        apply_s = float(cluster.psql("SELECT extract(epoch FROM max(applied_at) - min(applied_at)) FROM bench_drain"))
        out[str(k)] = {"messages": got, "emit_8_clients_per_s": emit["calls_per_s"], "apply_seconds": apply_s,
                       "messages_per_s": got / apply_s if apply_s > 0 else None, "seconds_incl_startup": total_s}
        log(f"  {k} apply session(s): {got} messages, {got / apply_s:.0f}/s "
            f"(8-client emit {emit['calls_per_s'] or 0:.0f}/s)")
    return out


# --- end-to-end with a blocked message (issue 11's acceptance) ---------------------------------

def e2e_blocked(cluster, seconds, rate, log):
    """End-to-end p99 of one role's load at `rate` msg/s, first alone, then while another role's
    message waits on a row lock that a third session holds for the whole load."""
    cluster.psql("""
        DO $$BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_load') THEN CREATE ROLE bench_load LOGIN; END IF;
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_blocked') THEN CREATE ROLE bench_blocked LOGIN; END IF;
        END$$;
        CREATE TABLE IF NOT EXISTS bench_e2e_load(id bigserial PRIMARY KEY, emitted_at timestamptz,
                                                  applied_at timestamptz DEFAULT clock_timestamp());
        CREATE TABLE IF NOT EXISTS bench_lock(id int PRIMARY KEY, v int);
        INSERT INTO bench_lock VALUES (1, 0) ON CONFLICT DO NOTHING;
        GRANT INSERT, SELECT ON bench_e2e_load TO bench_load;
        GRANT USAGE ON SEQUENCE bench_e2e_load_id_seq TO bench_load;
        GRANT SELECT, UPDATE ON bench_lock TO bench_blocked;""")
    out = {}
    for case in ("alone", "with a blocked message"):
        cluster.psql("TRUNCATE bench_e2e_load")
        holder = None
        if case != "alone":
            hold = seconds + 3
            holder = subprocess.Popen(
                [cluster.pg.tool("psql"), "-qAtX", "-c", "BEGIN", "-c", "SELECT v FROM bench_lock WHERE id = 1 FOR UPDATE",
                 "-c", f"SELECT pg_sleep({hold})", "-c", "COMMIT"],
                env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            v0 = int(cluster.psql("SELECT v FROM bench_lock WHERE id = 1"))
            cluster.psql("SELECT atx_log('UPDATE bench_lock SET v = v + 1 WHERE id = 1')",
                         env=dict(cluster.env, PGUSER="bench_blocked"))
        p = bench_pgbench.run(cluster, "SELECT atx_log('INSERT INTO bench_e2e_load(emitted_at) VALUES ($1)', "
                                       "clock_timestamp());\n", 2, seconds=seconds, rate=rate,
                              log_latencies=False, env_extra={"PGUSER": "bench_load"})
        sent = int(p["calls_per_s"] * seconds) if p["calls_per_s"] else 0
        # Wait for the load's messages (however long the blocked one holds them up), then read.
        deadline = time.time() + seconds + 300
        while time.time() < deadline and int(cluster.psql("SELECT count(*) FROM bench_e2e_load")) < sent * 0.99:
            time.sleep(0.2)
        rows = cluster.psql("SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), "
                            "percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) FROM "
                            "(SELECT extract(epoch FROM applied_at - emitted_at) * 1000 AS ms "
                            "FROM bench_e2e_load) s").split("|")
        r = {"offered_per_s": rate, "achieved_per_s": p["calls_per_s"], "messages": int(rows[0]),
             "median_ms": float(rows[1] or 0), "p99_ms": float(rows[2] or 0), "max_ms": float(rows[3] or 0)}
        if not p["ok"]:
            r["error"] = p["error"]
        if holder:
            holder.wait(timeout=seconds + 60)
            deadline = time.time() + 300
            while time.time() < deadline and int(cluster.psql("SELECT v FROM bench_lock WHERE id = 1")) == v0:
                time.sleep(0.2)
            r["blocked_message_applied"] = int(cluster.psql("SELECT v FROM bench_lock WHERE id = 1")) == v0 + 1
        out[case] = r
        log(f"  {case:<24} {r['messages']} messages: median {r['median_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
            f"max {r['max_ms']:.2f} ms" + (f"; FAILED: {r['error']}" if "error" in r else ""))
    return out


# --- synchronous_commit levels, with and without a synchronous standby (issue 13) -------------

def atx_log_waits_for_sync_standby(cluster, log):
    """True when atx_log waits for synchronous standbys: with synchronous_standby_names naming a
    standby that does not exist, a call under statement_timeout 500ms lasts until the timeout."""
    cluster.psql("CREATE TABLE IF NOT EXISTS bench_probe(v int)")
    cluster.psql("ALTER SYSTEM SET synchronous_standby_names = 'bench_nobody'")
    cluster.psql("SELECT pg_reload_conf()")
    time.sleep(0.3)
    t0 = time.time()
    try:
        subprocess.run([cluster.pg.tool("psql"), "-qAtX", "-c", "SET statement_timeout = '500ms'", "-c",
                        "SELECT atx_log('INSERT INTO bench_probe VALUES (1)')"],
                       env=dict(cluster.env, PGAPPNAME="bench_probe"), capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench_probe'")
    waited = time.time() - t0
    cluster.psql("ALTER SYSTEM RESET synchronous_standby_names")
    cluster.psql("SELECT pg_reload_conf()")
    log(f"  probe: atx_log with an unreachable synchronous standby returned after {waited:.2f} s")
    return waited >= 0.45


def start_standby(primary):
    """A streaming replica of `primary` named bench_standby (pg_basebackup -R), made synchronous."""
    pg = primary.pg

    def init(c):
        port = 20000 + (int(primary.port) + 7919) % 20000
        bench_env.sh(pg, f"atx_as_server '{pg.tool('pg_basebackup')}' -D '{c.dir}/data' -R -X stream -c fast "
                         f"-d 'host={primary.dir} port={primary.port} user=postgres application_name=bench_standby'")
        with open(os.path.join(c.dir, "data", "postgresql.conf"), "a") as f:
            f.write(f"port = {port}\nunix_socket_directories = '{c.dir}'\nhot_standby = on\n")
        with open(os.path.join(c.dir, "port"), "w") as f:
            f.write(f"{port}\n")

    standby = bench_env.Cluster(pg, None, name="standby", init_from=init)
    primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'bench_standby'")
    primary.psql("SELECT pg_reload_conf()")
    deadline = time.time() + 60
    while time.time() < deadline:
        if primary.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bench_standby' "
                        "AND sync_state = 'sync' AND state = 'streaming'") == "1":
            return standby
        time.sleep(0.2)
    raise RuntimeError("the standby did not become synchronous")


def stop_standby(primary, standby):
    primary.psql("ALTER SYSTEM RESET synchronous_standby_names")
    primary.psql("SELECT pg_reload_conf()")
    standby.stop()


def sync_levels(cluster, seconds, log, quick=False):
    """Caller cost (1 client) at each synchronous_commit level, without and with a standby
    (--quick: off, on and remote_apply, no rolled-back caller)."""
    r = "\\set i random(1, 1000000)\n"
    contenders = {
        "plain INSERT": r + "INSERT INTO bench_plain(v) VALUES (:i);\n",
        "atx_log, commit": r + "BEGIN \\; SELECT atx_log('INSERT INTO bench_atx(v) VALUES ($1)', :i) \\; COMMIT;\n",
        "atx_log, rollback": r + "BEGIN \\; SELECT atx_log('INSERT INTO bench_atx(v) VALUES ($1)', :i) \\; ROLLBACK;\n",
    }
    if quick:
        contenders.pop("atx_log, rollback")
    out = {}
    for standby_case in ("no standby", "synchronous standby"):
        standby = start_standby(cluster) if standby_case != "no standby" else None
        try:
            out[standby_case] = {}
            for level in (("off", "on", "remote_apply") if quick else SYNC_LEVELS):
                out[standby_case][level] = {}
                for name, script in contenders.items():
                    p = bench_pgbench.run(cluster, script, 1, seconds=seconds, env_extra={
                        "PGOPTIONS": f"-c synchronous_commit={level} -c statement_timeout=60s"})
                    out[standby_case][level][name] = p
                    log(f"  [{standby_case}] synchronous_commit={level:<12} {name:<18} "
                        + (f"median {p['median_ms']:.3f} ms p99 {p['p99_ms']:.3f} ms" if p["ok"]
                           else f"FAILED: {p['error']}"))
        finally:
            if standby:
                stop_standby(cluster, standby)
    return out


# --- atx.validate (coming) --------------------------------------------------------------------

def has_validate(cluster):
    return cluster.psql("SELECT count(*) FROM pg_settings WHERE name = 'atx.validate'") == "1"


def validate_cost(cluster, seconds, log):
    """The caller's own cost (run with the applier stopped, so that no drain of an earlier point
    competes for the CPU), each setting twice in A-B-B-A order; the faster run of each is kept."""
    script = ("\\set i random(1, 1000000)\n"
              "BEGIN \\; SELECT atx_log('INSERT INTO bench_atx(v) VALUES ($1)', :i) \\; COMMIT;\n")
    out = {"off": {}, "on": {}}
    for clients in (1, 8):
        for setting in ("off", "on", "on", "off"):
            p = bench_pgbench.run(cluster, script, clients, seconds=seconds,
                                  env_extra={"PGOPTIONS": f"-c atx.validate={setting} -c statement_timeout=60s"})
            log(f"  atx.validate={setting:<3} {clients} client(s): " +
                (f"median {p['median_ms']:.3f} ms p99 {p['p99_ms']:.3f} ms {p['calls_per_s']:.0f} calls/s"
                 if p["ok"] else f"FAILED: {p['error']}"))
            kept = out[setting].get(str(clients))
            if kept is None or (p["ok"] and (not kept["ok"] or p["median_ms"] < kept["median_ms"])):
                out[setting][str(clients)] = p
    return out


# --- the applier's state size after 1M messages (full mode) -----------------------------------

def state_size(cluster, applier_binary, n, log):
    """A fresh database, applier and state directory; n messages emitted by 8 clients while the
    applier applies them; the state directory's size once the applier has stopped."""
    cluster.psql("CREATE DATABASE bench_state")
    cluster.psql("CREATE EXTENSION pg_atx; CREATE TABLE t(id bigserial PRIMARY KEY, v int)", db="bench_state")
    state = tempfile.mkdtemp(prefix="atx-bench-state1m.")
    applier = bench_env.Applier(applier_binary, cluster, state, dbname="bench_state").start()
    try:
        bench_env.wait_slot(cluster, "bench_state")
        t0 = time.time()
        emit = bench_pgbench.run(cluster, "\\set i random(1, 1000000)\n"
                                          "SELECT atx_log('INSERT INTO t(v) VALUES ($1)', :i);\n",
                                 8, transactions=n // 8, log_latencies=False, timeout=1800,
                                 env_extra={"PGDATABASE": "bench_state"})
        got = bench_env.wait_count(cluster, "t", n // 8 * 8, 1800, db="bench_state")
        seconds = time.time() - t0
        applier.stop()
        sizes = {"sst": 0, "wal": 0, "other": 0}
        for dirpath, _, files in os.walk(state):
            for name in files:
                size = os.path.getsize(os.path.join(dirpath, name))
                kind = "sst" if name.endswith(".sst") else "wal" if name.endswith(".log") and name[0].isdigit() else "other"
                sizes[kind] += size
        total = sum(sizes.values())
        r = {"messages": got, "emit_per_s": emit["calls_per_s"], "seconds": seconds, "bytes": total,
             "bytes_per_message": total / got if got else None, "by_kind": sizes}
        log(f"  {got} messages in {seconds:.0f}s; state directory {total / 1e6:.1f} MB "
            f"({total / max(got, 1):.0f} B/message; SST {sizes['sst'] / 1e6:.1f} MB, WAL {sizes['wal'] / 1e6:.1f} MB)")
        return r
    finally:
        applier.stop()
        slot = cluster.psql("SELECT slot_name FROM pg_replication_slots WHERE database = 'bench_state'")
        if slot:
            bench_env.drop_slot(cluster, slot)
        cluster.psql("DROP DATABASE bench_state")
        shutil.rmtree(state, ignore_errors=True)
