#!/usr/bin/env python3
"""pg_atx benchmarks: pg_atx against plain INSERT, dblink and pg_background, in one run.

Started by `tools/atx bench [--quick]`. Starts its own throwaway cluster (tests/lib/cluster.sh,
synchronous_commit and fsync at their defaults) from the PostgreSQL that --pg-config / PG_CONFIG /
ATX_PG_BINDIR names, sweeps the load (1..32 clients) for every contender with the applier stopped
and running, measures the applier (drain, end-to-end, walsender overhead), the row-trigger pattern
and the concurrency, synchronous-standby, validation and state-size figures (each skipped, with the
reason, where the build lacks the feature). A contender that fails under load is a result:
its error and what succeeded before it go into the table, the JSON and the pictures, and the run
goes on. Prints where the JSON, the Markdown tables and the pictures went.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import bench_autonomous
import bench_env
import bench_isolation
import bench_pending
import bench_report
import bench_steps
import bench_targets
import bench_sweep
import bench_triggers

ROOT = bench_env.ROOT
DEFAULT_MWP = 8     # PostgreSQL's default max_worker_processes
STEPS = ("sweep", "drain", "e2e", "triggers", "audit", "pending", "tpcb", "autonomous", "isolation", "targets")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs, under 3 minutes")
    ap.add_argument("--pg-config", help="pg_config of the PostgreSQL to run (default: PG_CONFIG, "
                                        "ATX_PG_BINDIR/pg_config, pg_config on PATH)")
    ap.add_argument("--applier", default=os.path.join(ROOT, "build", "applier", "atx-applier"))
    ap.add_argument("--json", default=os.path.join(ROOT, "build", "bench", "results.json"))
    ap.add_argument("--pictures", help="directory for the SVG pictures (default: docs/bench for a full "
                                       "run, the JSON's directory for --quick)")
    ap.add_argument("--bgw-max-workers", type=int, default=128,
                    help="max_worker_processes for the fair pg_background configuration (default 128, "
                         "the top of pg_background's own recommendation; also measured at 8)")
    ap.add_argument("--clients", help="comma list of client counts (default 1,2,4,8,16,32)")
    ap.add_argument("--seconds", type=int, help="seconds per sweep point (whole seconds: pgbench -T)")
    ap.add_argument("--steps", default=",".join(STEPS),
                    help=f"comma list out of {','.join(STEPS)}; pending:WORD runs only the parts of step 7 "
                         "whose name contains WORD (e.g. pending:blocked)")
    ap.add_argument("--note", help="a remark on the run (say, 'shared, busy machine'): into the JSON and "
                                   "the pictures' subtitle")
    ap.add_argument("--run-pending", action="store_true",
                    help="run the figures of undetected features anyway where they can run (today's behaviour)")
    return ap.parse_args()


def git_commit():
    try:
        c = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return c + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main():
    # SIGTERM ends the run like Ctrl-C: through the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    a = parse_args()
    q = a.quick
    steps = set(a.steps.split(","))
    pg = bench_env.PgInstall(a.pg_config)
    clients = [int(x) for x in a.clients.split(",")] if a.clients else [1, 2, 4, 8, 16, 32]
    seconds = a.seconds or (1 if q else 3)
    cfg = {"clients": clients, "seconds_per_point": seconds, "trigger_rows": 500 if q else 10000,
           "client_program": "pgbench -n -f script -c N -j min(N,2) -T seconds -l (per-transaction log)",
           "max_worker_processes": {"default": DEFAULT_MWP, "raised": a.bgw_max_workers},
           "pg_config": pg.pg_config, "applier": a.applier}
    results = {"mode": "quick" if q else "full", "config": cfg, "sweep": {}, "pending": {}, "ratios": {},
               "durations_s": {}, "step_errors": {}}
    t_start = time.time()
    help_text = bench_env.applier_help(a.applier)
    if not help_text:
        raise SystemExit(f"bench: cannot run the applier {a.applier}")

    cluster = bench_env.Cluster(pg, ["shared_preload_libraries = 'pg_atx'",  # atx_exec's waiter registry
                                     f"max_worker_processes = {DEFAULT_MWP}"])
    state = tempfile.mkdtemp(prefix="atx-bench-state.")
    new_applier = lambda extra=(): bench_env.Applier(a.applier, cluster, state, extra)
    applier = new_applier()

    completed = False

    def step(name, fn):
        t0 = time.time()
        try:
            fn()
        except Exception as e:  # a broken step is reported, the others still run
            results["step_errors"][name] = f"{type(e).__name__}: {e}"
            log(f"  STEP FAILED: {name}: {e}\n{traceback.format_exc()}")
        results["durations_s"][name] = round(time.time() - t0, 1)
        log(f"  ({name}: {time.time() - t0:.0f} s)")

    try:
        results["machine"] = {"cpus": os.cpu_count(), "kernel": platform.release(),
                              "server": "PostgreSQL " + cluster.psql("SHOW server_version"),
                              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": git_commit(),
                              "note": a.note or ""}
        cluster.psql("CREATE EXTENSION pg_atx; CREATE EXTENSION dblink;")
        has_bgw = pg.has_extension("pg_background")
        if has_bgw:
            cluster.psql("CREATE EXTENSION pg_background")
            bgw_version = cluster.psql("SELECT extversion FROM pg_extension WHERE extname = 'pg_background'")
            cfg["pg_background"] = (f"{bgw_version}, measured at max_worker_processes {DEFAULT_MWP} (default) "
                                    f"and {a.bgw_max_workers} (raised by {a.bgw_max_workers - DEFAULT_MWP})")
        else:
            cfg["pg_background"] = f"not installed in {pg.sharedir}: not measured"
        bench_sweep.create_tables(cluster)
        trigger_kinds = ["plain", "atx_log", "dblink"] + (["pg_background result", "pg_background detach"]
                                                          if has_bgw else [])
        bench_triggers.setup(cluster, trigger_kinds)
        applier.start()  # creates the slot (atx_log refuses without one), then steps decide
        bench_env.wait_slot(cluster)
        applier.stop()
        ci = cluster.conninfo() + " dbname=postgres"
        sweep_to = clients if "sweep" in steps else []
        results["sweep"] = {"stopped": {}, "running": {}}
        results["row_trigger"] = {}
        mwp8, mwp_hi = f", max_worker_processes={DEFAULT_MWP}", f", max_worker_processes={a.bgw_max_workers}"

        if has_bgw and (sweep_to or "triggers" in steps):
            log(f"0. pg_background at max_worker_processes = {DEFAULT_MWP} (the default), applier stopped")

            def bgw_default():
                if sweep_to:
                    results["sweep"]["stopped"].update(bench_sweep.sweep(
                        cluster, bench_sweep.bgw_scripts(mwp8), sweep_to, seconds, log, "stopped", q))
                if "triggers" in steps:  # result keeps one worker busy at a time: only detach can run out
                    kind = "pg_background detach"
                    results["row_trigger"][kind + mwp8] = bench_triggers.run_one(
                        cluster, kind, cfg["trigger_rows"], "on", 900, log, kind + mwp8)
            step("pg_background at the default max_worker_processes", bgw_default)
        cluster.psql(f"ALTER SYSTEM SET max_worker_processes = {a.bgw_max_workers}")
        cluster.restart()
        contenders = bench_sweep.scripts(ci, False)
        if has_bgw:
            contenders.update(bench_sweep.bgw_scripts(mwp_hi))
        stopped = {k: v for k, v in contenders.items() if k != "atx_exec"}  # atx_exec waits for the applier
        backlog = [0]

        def sweep_stopped():
            log("1. load sweep, applier stopped")
            results["sweep"]["stopped"].update(bench_sweep.sweep(cluster, stopped, sweep_to, seconds, log,
                                                                 "stopped", q))
            backlog[0] = bench_sweep.atx_calls(results["sweep"]["stopped"])
        if sweep_to:
            step("sweep, applier stopped", sweep_stopped)

        def drain():
            nonlocal applier
            log("2. applier drain (the stopped sweep's backlog)")
            if backlog[0] == 0:  # no sweep ran: make a backlog of our own
                n = 30000 if q else 200000
                bench_pgbench_emit(cluster, n)
                backlog[0] = n
            applier, results["drain"] = bench_steps.drain_backlog(cluster, new_applier, backlog[0], log)
        if "drain" in steps or sweep_to:
            step("drain", drain)
        if applier.proc is None:
            applier = new_applier().start()
        bench_env.wait_streaming(cluster)

        def sweep_running():
            log("3. load sweep, applier running")
            # --quick: only atx_exec, which cannot run without the applier, to stay under 3 minutes
            running = {"atx_exec": contenders["atx_exec"]} if q else contenders
            results["sweep"]["running"] = bench_sweep.sweep(cluster, running, sweep_to, seconds, log, "running", q)
            at_end = int(cluster.psql("SELECT count(*) FROM bench_atx"))
            total = backlog[0] + bench_sweep.atx_calls(results["sweep"]["running"])
            got = bench_env.wait_count(cluster, "bench_atx", total, 900)
            results["sweep_applied"] = {"atx_log_calls_returned": total, "rows_applied": got}
            log(f"  every atx_log call of the sweep applied: {got} rows for {total} calls "
                f"({at_end} when the sweep ended)")
        if sweep_to:
            step("sweep, applier running", sweep_running)

        if "e2e" in steps:
            def e2e():
                log("4. end-to-end latency")
                results["e2e"] = bench_steps.end_to_end(cluster, applier, 3 if q else 20, (1000, 5000), log)
            step("e2e", e2e)
        if "triggers" in steps:
            def triggers():
                log(f"5. row trigger, {cfg['trigger_rows']} rows (max_worker_processes {a.bgw_max_workers})")
                rt = bench_triggers.run_all(cluster, trigger_kinds, cfg["trigger_rows"], 900, log)
                for k, v in rt.items():
                    results["row_trigger"][k + (mwp_hi if k.startswith("pg_background") else "")] = v
            step("triggers", triggers)
        if "audit" in steps:
            def audit():
                log("6. audit trigger, bulk UPDATE")
                results["audit"] = bench_steps.audit_bulk(cluster, 20000 if q else 100000, log)
            step("audit", audit)
        # "pending" runs all of step 7; "pending:WORD" only its parts whose name contains WORD.
        only = {s.split(":", 1)[1] for s in steps if s.startswith("pending:")}
        if "pending" in steps or only:
            log("7. concurrency, synchronous standbys, validation, state size")

            def sub(name, fn):
                if "pending" in steps or any(o in name for o in only):
                    step(name, fn)
            applier = pending(a, q, cluster, applier, new_applier, help_text, results, sub)
        if "tpcb" in steps:
            def tpcb():
                nonlocal applier
                log("8. walsender overhead (pgbench TPC-B)")
                applier, results["tpcb"] = bench_steps.tpcb(cluster, new_applier, applier, 1 if q else 2,
                                                            3 if q else 15, log)
            step("tpcb", tpcb)
        if "autonomous" in steps:
            def autonomous():
                log("9. autonomous routine against atx_exec and ora2pg's dblink and pg_background wrappers")
                results["autonomous"] = bench_autonomous.run(cluster, ci, has_bgw, q, log)
            step("autonomous", autonomous)
        if "isolation" in steps:
            def isolation():
                nonlocal applier
                log("10. isolation under attack (issue 21)")
                applier.stop()
                try:
                    results["isolation"] = bench_isolation.run(cluster, new_applier, q, log)
                finally:
                    applier = new_applier().start()
                    bench_env.wait_streaming(cluster)
            step("isolation", isolation)
        if "targets" in steps:
            def targets():
                nonlocal applier
                log("11. the speed targets of issue 23")
                applier, results["targets"] = bench_targets.run(cluster, applier, new_applier, q, log)
            step("targets", targets)
        results["ratios"] = ratios(results, mwp_hi)
        completed = True
    finally:
        applier.stop()
        keep = bool(results["step_errors"]) or not completed  # its server and applier logs tell why
        cluster.stop(keep=keep)
        if keep:
            print(f"cluster directory kept for inspection: {cluster.dir}")
        shutil.rmtree(state, ignore_errors=True)

    results["durations_s"]["total"] = round(time.time() - t_start, 1)
    bench_report.print_all(results)
    outdir = os.path.dirname(os.path.abspath(a.json))
    os.makedirs(outdir, exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(results, f, indent=2)
    md = os.path.join(outdir, "results.md")
    with open(md, "w") as f:
        f.write(bench_report.markdown(results))
    pictures = a.pictures or (outdir if q else os.path.join(ROOT, "docs", "bench"))
    pic_line = pictures_for(results, a.json, pictures)
    for name, err in results["step_errors"].items():
        print(f"step failed: {name}: {err}")
    print(f"\nTotal {results['durations_s']['total']:.0f} s")
    print(f"JSON: {a.json}\nTables (Markdown): {md}\nPictures: {pic_line}")
    return 1 if results["step_errors"] else 0


def pictures_for(results, json_path, outdir):
    """Renders the pictures here, or with Debian's python3 when this interpreter (a pyenv or venv
    one, say) lacks matplotlib; returns a line saying where they went."""
    if not results["sweep"].get("stopped"):
        return "none (no sweep in this run)"
    try:
        import bench_plots
        return ", ".join(bench_plots.render(results, outdir))
    except ImportError:
        pass
    system = "/usr/bin/python3"
    if os.path.exists(system) and os.path.realpath(system) != os.path.realpath(sys.executable):
        out = subprocess.run([system, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_plots.py"),
                              json_path, outdir], capture_output=True, text=True)
        if out.returncode == 0:
            return ", ".join(out.stdout.split())
    return "not made: python3-matplotlib is not installed (apt-get install python3-matplotlib)"


def bench_pgbench_emit(cluster, n):
    import bench_pgbench
    bench_pgbench.run(cluster, "\\set i random(1, 1000000)\n"
                               "SELECT atx_log('INSERT INTO bench_atx(v) VALUES ($1)', :i);\n",
                      8, transactions=n // 8, log_latencies=False, timeout=1200)


def pending(a, q, cluster, applier, new_applier, help_text, results, step):
    """The extension points; returns the applier (running)."""
    p, force = results["pending"], a.run_pending
    state = {"applier": applier}

    def drain_sessions():
        name = "drain by apply sessions"
        if not bench_pending.has_apply_sessions(help_text):
            p[name] = bench_pending.skipped(log, name, "atx-applier --apply-sessions N (issue 11)")
            return
        state["applier"].stop()
        try:
            p[name] = bench_pending.drain_by_sessions(cluster, new_applier, 20000 if q else 100000, (1, 2, 4), log)
        finally:
            state["applier"] = new_applier().start()
            bench_env.wait_streaming(cluster)
    step("pending: drain by apply sessions", drain_sessions)

    def blocked():
        name = "end-to-end with a blocked message"
        if not (bench_pending.has_apply_sessions(help_text) or force):
            p[name] = bench_pending.skipped(log, name, "concurrent apply, atx-applier --apply-sessions (issue 11)")
            return
        p[name] = bench_pending.e2e_blocked(cluster, 3 if q else 20, 1000, log)
    step("pending: end-to-end with a blocked message", blocked)

    def sync_levels():
        name = "atx_log at each synchronous_commit level"
        waits = bench_pending.atx_log_waits_for_sync_standby(cluster, log)
        if not (waits or force):
            p[name] = bench_pending.skipped(
                log, name, "atx_log to wait for synchronous standbys (issue 13; the probe's atx_log "
                           "returned at once with an unreachable synchronous standby)")
            return
        p[name] = bench_pending.sync_levels(cluster, 1 if q else 2, log, q)
        p[name]["atx_log_waits_for_sync_standby"] = waits
    step("pending: synchronous_commit levels", sync_levels)

    def validate():
        name = "atx.validate on/off"
        if not bench_pending.has_validate(cluster):
            p[name] = bench_pending.skipped(log, name, "the atx.validate setting")
            return
        state["applier"].stop()  # the caller's own cost, as in the stopped sweep
        try:
            p[name] = bench_pending.validate_cost(cluster, 1 if q else 3, log)
        finally:
            state["applier"] = new_applier().start()
            bench_env.wait_streaming(cluster)
    step("pending: atx.validate", validate)

    def state_size():
        name = "applier state size after 1M messages"
        if q:
            p[name] = bench_pending.skipped(log, name, "a full run (not --quick)")
            return
        state["applier"].stop()  # its walsender would decode the other database's WAL too
        try:
            p[name] = bench_pending.state_size(cluster, a.applier, 1000000, log)
        finally:
            state["applier"] = new_applier().start()
            bench_env.wait_streaming(cluster)
    step("pending: state size", state_size)
    return state["applier"]


def ratios(r, mwp_hi):
    """Headline ratios from the sweep (applier stopped unless said) and the other steps."""
    out = {}

    def point(state, name, clients):
        p = r["sweep"].get(state, {}).get(name, {}).get(str(clients))
        return p

    def ratio(key, a, b, field):
        if a is None or b is None:
            return
        if not a["ok"] or not b["ok"]:
            who = a if not a["ok"] else b
            out[key] = f"n/a: failed at {who['clients']} clients: {who['error']}"
            return
        out[key] = a[field] / b[field]

    s = "stopped"
    ratio("atx_log / plain INSERT, median latency, 1 client", point(s, "atx_log, commit", 1),
          point(s, "plain INSERT", 1), "median_ms")
    ratio("dblink / atx_log, median latency, 1 client", point(s, "dblink", 1), point(s, "atx_log, commit", 1),
          "median_ms")
    ratio("atx_log / dblink, throughput, 8 clients", point(s, "atx_log, commit", 8), point(s, "dblink", 8),
          "calls_per_s")
    bgw = "pg_background result" + mwp_hi
    ratio("pg_background result / atx_log, median latency, 1 client", point(s, bgw, 1),
          point(s, "atx_log, commit", 1), "median_ms")
    ratio("atx_log / pg_background result, throughput, 8 clients", point(s, "atx_log, commit", 8),
          point(s, bgw, 8), "calls_per_s")
    ratio("dblink / atx_exec, median latency, 1 client (applier running)", point("running", "dblink", 1),
          point("running", "atx_exec", 1), "median_ms")
    emit8 = [p["calls_per_s"] for p in (point(s, "atx_log, commit", 8), point(s, "atx_log, rollback", 8))
             if p and p["ok"]]
    if r.get("drain") and emit8 and r["drain"].get("messages_per_s"):
        out["drain / 8-client emit (fastest 8-client atx_log rate)"] = r["drain"]["messages_per_s"] / max(emit8)
    if r.get("e2e", {}).get("1000"):
        out["end-to-end p99 at 1,000 messages/s, ms"] = r["e2e"]["1000"]["p99_ms"]
    rt = r.get("row_trigger", {})
    for sync in ("off", "on"):
        a, b = rt.get(f"atx_log, synchronous_commit={sync}"), rt.get(f"plain, synchronous_commit={sync}")
        if a and b and a["ok"] and b["ok"]:
            out[f"row trigger atx_log / plain-table trigger, synchronous_commit={sync}"] = a["seconds"] / b["seconds"]
    if r.get("audit"):
        au = r["audit"]
        out["audit trigger (atx) / plain-table trigger, rows/s"] = (au["atx_statement_rows_per_s"]
                                                                    / au["plain_trigger_rows_per_s"])
    pend = r.get("pending", {})
    for k, d in pend.get("drain by apply sessions", {}).items():
        if isinstance(d, dict) and d.get("messages_per_s") and d.get("emit_8_clients_per_s"):
            out[f"drain with {k} apply session(s) / 8-client emit (issue 11: at least 1.5x)"] = (
                d["messages_per_s"] / d["emit_8_clients_per_s"])
    blocked = pend.get("end-to-end with a blocked message", {}).get("with a blocked message")
    if blocked:
        out["end-to-end p99 with a blocked message, ms"] = blocked["p99_ms"]
    for k in ("autonomous / atx_exec, median latency, 1 client", "autonomous / atx_exec, throughput, 8 clients"):
        if r.get("autonomous", {}).get(k):
            out[k + " (issue 24: within 10%)"] = r["autonomous"][k]
    if r.get("tpcb"):
        t = r["tpcb"]
        out["TPC-B with slot, idle / without"] = t["slot, idle"] / t["no slot"]
        out["TPC-B with slot, 1000 msg/s / without"] = t["slot, 1000 msg/s"] / t["no slot"]
    return out


if __name__ == "__main__":
    sys.exit(main())
