"""The load sweep: every contender at 1..32 clients, with the applier stopped and running.

"stopped" is the caller's own cost (the messages wait in the slot and nothing decodes the WAL);
"running" is what users live with (the walsender decodes every record, the applier applies on
the same cores, atx_exec waits for it). Within one client count the contenders run in random
order so that machine drift hits all alike. A point whose clients abort is kept as a failure
(bench_pgbench.run); the sweep goes on with the next one.
"""
import random

import bench_pgbench

TABLES = ("bench_plain", "bench_atx", "bench_exec", "bench_dblink", "bench_bgw")


def create_tables(cluster):
    for t in TABLES:
        cluster.psql(f"CREATE TABLE {t}(id bigserial PRIMARY KEY, v int, "
                     "applied_at timestamptz DEFAULT clock_timestamp())")


def scripts(conninfo, has_bgw):
    """Contender name -> pgbench script. Each call is one round trip: "\\;" sends one query string."""
    r = "\\set i random(1, 1000000)\n"
    s = {
        "plain INSERT": r + "INSERT INTO bench_plain(v) VALUES (:i);\n",
        "atx_log, commit": r + "BEGIN \\; SELECT atx_log('INSERT INTO bench_atx(v) VALUES ($1)', :i) \\; COMMIT;\n",
        "atx_log, rollback": r + "BEGIN \\; SELECT atx_log('INSERT INTO bench_atx(v) VALUES ($1)', :i) \\; ROLLBACK;\n",
        "atx_exec": r + "SELECT atx_exec('INSERT INTO bench_exec(v) VALUES ($1) RETURNING id', :i);\n",
        "dblink": r + f"SELECT dblink_exec('{conninfo}', 'INSERT INTO bench_dblink(v) VALUES (' || :i || ')');\n",
    }
    if has_bgw:
        s.update(bgw_scripts())
    return s


def bgw_scripts(suffix=""):
    r = "\\set i random(1, 1000000)\n"
    sql = "'INSERT INTO bench_bgw(v) VALUES (' || :i || ')'"
    return {
        "pg_background result" + suffix:
            r + f"SELECT * FROM pg_background_result(pg_background_launch({sql})) AS (r text);\n",
        "pg_background detach" + suffix:
            r + f"SELECT pg_background_detach(pg_background_launch({sql}));\n",
    }


def sweep(cluster, contenders, client_counts, seconds, log, label, stop_after_failure=False):
    """Returns {contender: {clients: point}}; atx_log calls made are counted in point['calls'].
    stop_after_failure (--quick): a contender that failed is not run at higher client counts."""
    out = {name: {} for name in contenders}
    env = {"PGOPTIONS": "-c statement_timeout=60s"}  # a hung call ends the point, not the bench
    for clients in client_counts:
        order = [n for n in contenders if not (stop_after_failure and any(not p["ok"] for p in out[n].values()))]
        random.shuffle(order)
        for name in order:
            p = bench_pgbench.run(cluster, contenders[name], clients, seconds=seconds, env_extra=env)
            out[name][str(clients)] = p
            log(f"  [{label}] {clients:2d} client(s) {name:<46} {describe(p)}")
    return out


def describe(p):
    if p["ok"]:
        return (f"{p['calls_per_s']:9.1f} calls/s  median {p['median_ms']:.3f} ms  "
                f"p95 {p['p95_ms']:.3f}  p99 {p['p99_ms']:.3f}")
    before = (f"at least {p['calls_before_error']} before the first error" if p["calls_before_error"]
              else "a client failed on its first call")
    return (f"FAILED ({p['clients_aborted']} of {p['clients']} clients aborted): {p['error']}; "
            f"{p['calls']} calls succeeded, {before}")


def atx_calls(result):
    """atx_log calls that returned in a sweep (each one is a message the applier must apply)."""
    n = 0
    for name in ("atx_log, commit", "atx_log, rollback"):
        for p in result.get(name, {}).values():
            n += p["calls"] or 0
    return n
