"""Autonomous routines (issue 24): one call of a routine made autonomous with atx.make_autonomous,
against the same body run through atx_exec and through ora2pg's two wrappers of it (dblink, and
pg_background when installed), with the applier running. Issue 24 asks an autonomous call to
cost within 10% of the equivalent atx_exec.

The body is ora2pg's log_action_atx (one INSERT); each contender is one round trip per call.
Every client count is measured in several rounds, the contenders in random order within each
round, and a contender's figure is the median over the rounds (this machine is shared)."""
import random
import statistics

import bench_pgbench

BODY = """
    BEGIN
        INSERT INTO bench_auto_log(username, event_date, msg) VALUES (username, event_date, msg);
    END"""


def setup(cluster, conninfo, has_bgw):
    sql = f"""
        CREATE TABLE bench_auto_log(id bigserial PRIMARY KEY, username text, event_date timestamp, msg text);
        -- ora2pg's body ...
        CREATE FUNCTION bench_log_action_atx(username text, event_date timestamp, msg text) RETURNS void
        LANGUAGE plpgsql AS $${BODY}$$;
        -- ... the same body, made autonomous under the routine's own name
        CREATE FUNCTION bench_log_action(username text, event_date timestamp, msg text) RETURNS void
        LANGUAGE plpgsql AS $${BODY}$$;
        SELECT atx.make_autonomous('bench_log_action(text, timestamp, text)');
        -- ora2pg's dblink wrapper (AUTONOMOUS_TRANSACTION 1, the default)
        CREATE FUNCTION bench_log_action_dblink(username text, event_date timestamp, msg text) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER AS $$
        DECLARE
            v_conn_str text := '{conninfo}';
            v_query text;
        BEGIN
            v_query := 'SELECT true FROM bench_log_action_atx ( ' || quote_nullable(username) ||
                       ',' || quote_nullable(event_date) || ',' || quote_nullable(msg) || ' )';
            PERFORM * FROM dblink(v_conn_str, v_query) AS p (ret boolean);
        END $$;"""
    if has_bgw:
        sql += """
        -- ora2pg's pg_background wrapper (PG_BACKGROUND 1)
        CREATE FUNCTION bench_log_action_bgw(username text, event_date timestamp, msg text) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER AS $$
        DECLARE
            v_query text;
        BEGIN
            v_query := 'SELECT true FROM bench_log_action_atx ( ' || quote_nullable(username) ||
                       ',' || quote_nullable(event_date) || ',' || quote_nullable(msg) || ' )';
            PERFORM * FROM pg_background_result(pg_background_launch(v_query)) AS p (ret boolean);
        END $$;"""
    cluster.psql(sql)


def scripts(has_bgw):
    r = "\\set i random(1, 1000000)\n"
    args = "'gilles', localtimestamp, 'call ' || :i"
    s = {
        "autonomous routine": r + f"SELECT bench_log_action({args});\n",
        "atx_exec": r + "SELECT atx_exec('SELECT bench_log_action_atx($1, $2, $3)', 'gilles'::text, localtimestamp, "
                        "('call ' || :i)::text);\n",
        "ora2pg dblink wrapper": r + f"SELECT bench_log_action_dblink({args});\n",
    }
    if has_bgw:
        s["ora2pg pg_background wrapper"] = r + f"SELECT bench_log_action_bgw({args});\n"
    return s


def run(cluster, conninfo, has_bgw, quick, log):
    setup(cluster, conninfo, has_bgw)
    contenders = scripts(has_bgw)
    rounds, seconds = (2, 2) if quick else (5, 4)
    env = {"PGOPTIONS": "-c statement_timeout=60s"}
    out = {"rounds": rounds, "seconds_per_point": seconds, "pg_background": has_bgw, "clients": {}}
    for clients in (1, 8):
        points = {name: [] for name in contenders}
        for rnd in range(rounds):
            order = list(contenders)
            random.shuffle(order)
            for name in order:
                p = bench_pgbench.run(cluster, contenders[name], clients, seconds=seconds, env_extra=env)
                points[name].append(p)
                if not p["ok"]:
                    log(f"  [{clients} client(s), round {rnd + 1}] {name}: FAILED: {p['error']}")
        summary = {}
        for name, ps in points.items():
            good = [p for p in ps if p["ok"]]
            summary[name] = {
                "ok": len(good) == len(ps),
                "median_ms": statistics.median(p["median_ms"] for p in good) if good else None,
                "p99_ms": statistics.median(p["p99_ms"] for p in good) if good else None,
                "calls_per_s": statistics.median(p["calls_per_s"] for p in good) if good else None,
                "error": next((p["error"] for p in ps if not p["ok"]), None),
            }
            s = summary[name]
            if s["median_ms"] is not None:
                log(f"  {clients} client(s) {name:<30} median {s['median_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  "
                    f"{s['calls_per_s']:.0f} calls/s")
        out["clients"][str(clients)] = summary
    a, e = out["clients"]["1"]["autonomous routine"], out["clients"]["1"]["atx_exec"]
    if a["median_ms"] and e["median_ms"]:
        out["autonomous / atx_exec, median latency, 1 client"] = a["median_ms"] / e["median_ms"]
        log(f"  autonomous routine / atx_exec, median latency, 1 client: {a['median_ms'] / e['median_ms']:.3f}")
    a, e = out["clients"]["8"]["autonomous routine"], out["clients"]["8"]["atx_exec"]
    if a["calls_per_s"] and e["calls_per_s"]:
        out["autonomous / atx_exec, throughput, 8 clients"] = a["calls_per_s"] / e["calls_per_s"]
        log(f"  autonomous routine / atx_exec, throughput, 8 clients: {a['calls_per_s'] / e['calls_per_s']:.3f}")
    return out
