"""The applier's own figures: drain rate, end-to-end latency, walsender overhead (TPC-B) and the
bulk audit trigger. Each step takes the bench's cluster and a running or stopped applier."""
import os
import random
import statistics
import subprocess
import time

import bench_env
import bench_pgbench


def drain_backlog(cluster, applier_factory, expected, log):
    """Starts the applier on a backlog of `expected` messages (all inserting into bench_atx, which
    stamps applied_at) and measures the steady apply rate from the rows' own apply times, which
    leaves out connecting, slot and origin setup."""
    before = int(cluster.psql("SELECT count(*) FROM bench_atx"))
    t0 = time.time()
    applier = applier_factory().start()
    n = bench_env.wait_count(cluster, "bench_atx", before + expected, 1800) - before
    total_s = time.time() - t0
    apply_s = float(cluster.psql(
        f"SELECT extract(epoch FROM max(applied_at) - min(applied_at)) FROM "
        f"(SELECT applied_at FROM bench_atx ORDER BY id DESC LIMIT {n}) s"))
    r = {"messages": n, "expected": expected, "seconds_incl_startup": total_s, "apply_seconds": apply_s,
         "messages_per_s": n / apply_s if apply_s > 0 else None, "messages_per_s_incl_startup": n / total_s,
         "applier_peak_rss_kb": applier.peak_rss_kb()}
    log(f"  {n} messages (expected {expected}) drained in {total_s:.1f}s incl. startup, {apply_s:.2f}s "
        f"applying: {r['messages_per_s']:.0f}/s")
    return applier, r


def end_to_end(cluster, applier, seconds, rates, log):
    cluster.psql("CREATE TABLE IF NOT EXISTS bench_e2e(id bigserial PRIMARY KEY, emitted_at timestamptz, "
                 "applied_at timestamptz DEFAULT clock_timestamp())")
    out = {}
    for rate in rates:
        cluster.psql("TRUNCATE bench_e2e")
        p = bench_pgbench.run(cluster, "SELECT atx_log('INSERT INTO bench_e2e(emitted_at) VALUES ($1)', "
                                       "clock_timestamp());\n", 4, seconds=seconds, rate=rate,
                              log_latencies=False)
        time.sleep(2)
        rows = cluster.psql("SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), "
                            "percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) FROM "
                            "(SELECT extract(epoch FROM applied_at - emitted_at) * 1000 AS ms "
                            "FROM bench_e2e) s").split("|")
        out[str(rate)] = {"offered_per_s": rate, "achieved_per_s": p["calls_per_s"], "messages": int(rows[0]),
                          "median_ms": float(rows[1]), "p99_ms": float(rows[2]), "max_ms": float(rows[3])}
        log(f"  {rate}/s: median {float(rows[1]):.2f} ms, p99 {float(rows[2]):.2f} ms, max {float(rows[3]):.2f} ms")
    out["applier_peak_rss_kb"] = applier.peak_rss_kb()
    return out


def tpcb(cluster, new_applier, applier, rounds, seconds, log):
    """TPC-B without a slot, with an idle streamed slot, and with 1,000 atx_log messages/s beside.
    Returns (applier now running, results)."""
    subprocess.run([cluster.pg.tool("pgbench"), "-i", "-q", "-s", "10"], env=cluster.env, check=True,
                   capture_output=True)
    cluster.psql("CREATE TABLE IF NOT EXISTS bench_side(id bigserial PRIMARY KEY, v int)")
    res = {"no slot": [], "slot, idle": [], "slot, 1000 msg/s": []}
    side_script = os.path.join(cluster.dir, "side.sql")
    with open(side_script, "w") as f:
        f.write("SELECT atx_log('INSERT INTO bench_side(v) VALUES (2)');\n")
    slot = cluster.psql("SELECT slot_name FROM pg_replication_slots WHERE plugin = 'pg_atx' "
                        "AND database = 'postgres'")
    for r in range(rounds):
        order = list(res)
        random.shuffle(order)
        for name in order:
            applier.stop()
            if name == "no slot":
                bench_env.drop_slot(cluster, slot)
            else:
                applier = new_applier().start()
                bench_env.wait_streaming(cluster)
            side = None
            if name == "slot, 1000 msg/s":
                side = subprocess.Popen(
                    [cluster.pg.tool("pgbench"), "-n", "-c", "1", "-T", str(seconds), "--rate", "1000",
                     "-f", side_script], env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out = subprocess.run([cluster.pg.tool("pgbench"), "-n", "-c", "8", "-j", "2", "-T", str(seconds)],
                                 env=cluster.env, check=True, capture_output=True, text=True).stdout
            tps = float([line for line in out.splitlines() if line.startswith("tps =")][0].split()[2])
            if side:
                side.wait()
            res[name].append(tps)
            log(f"  round {r + 1}/{rounds} {name:<18} {tps:8.1f} tps")
    if applier.proc is None:
        applier = new_applier().start()
        bench_env.wait_streaming(cluster)
    time.sleep(3)
    spill = cluster.psql("SELECT coalesce(sum(spill_bytes), 0) FROM pg_stat_replication_slots")
    retained = cluster.psql("SELECT coalesce(max(pg_current_wal_lsn() - restart_lsn), 0) "
                            "FROM pg_replication_slots WHERE plugin = 'pg_atx'")
    out = {k: statistics.mean(v) for k, v in res.items()}
    out["spill_bytes"] = int(spill)
    out["wal_retained_bytes"] = int(float(retained))
    out["rounds"], out["seconds"] = rounds, seconds
    return applier, out


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
    bench_env.wait_count(cluster, "atx.audit_log", before + n, 600)
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
