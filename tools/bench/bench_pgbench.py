"""One measured point: pgbench with a custom script and per-transaction logging (-l).

A point never raises: when clients abort (pg_background out of worker slots, too many
connections, a timeout) the point is a failure carrying the server's error text, how many calls
succeeded in all and at least how many before the first error, next to the latencies of the calls
that did succeed. Latencies come from pgbench's per-transaction log (one line per call, its
elapsed time in microseconds and its completion time), so percentiles are exact, not binned.
"""
import os
import re
import subprocess
import tempfile

ABORT_RE = re.compile(r"client (\d+) (?:script \d+ )?aborted[^:]*: (.*)")


def pct(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]


def first_error_line(text):
    """The message of a libpq error: what follows the first ERROR: or FATAL:, one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        for prefix in ("ERROR:", "FATAL:"):
            if prefix in line:
                return line[line.index(prefix) + len(prefix):].strip()
    return lines[0].replace("pgbench: error: ", "") if lines else "unknown error"


def run(cluster, script, clients, seconds=None, transactions=None, rate=None, env_extra=None,
        log_latencies=True, timeout=None):
    """Returns a dict: ok, calls, calls_per_s, processed (pgbench's count), median_ms, p95_ms, p99_ms and, on failure, error,
    clients_aborted, calls_before_error."""
    env = dict(cluster.env, **(env_extra or {}))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "script.sql")
        with open(path, "w") as f:
            f.write(script)
        cmd = [cluster.pg.tool("pgbench"), "-n", "-f", path, "-c", str(clients), "-j", str(min(clients, 2))]
        if seconds:
            cmd += ["-T", str(seconds)]
        if transactions:
            cmd += ["-t", str(transactions)]
        if rate:
            cmd += ["--rate", str(rate)]
        if log_latencies:
            cmd += ["-l", "--log-prefix", os.path.join(d, "log")]
        limit = timeout or ((seconds + 180) if seconds else None)
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
            rc, stdout, stderr = out.returncode, out.stdout, out.stderr
        except subprocess.TimeoutExpired as e:  # killed; its output so far is bytes
            text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
            rc, stdout = -1, text(e.stdout)
            stderr = text(e.stderr) + f"\nERROR:  pgbench did not finish within {limit}s"
        ends, lat, per_client_last = [], [], {}
        if log_latencies:
            for name in os.listdir(d):
                if not name.startswith("log"):
                    continue
                with open(os.path.join(d, name)) as f:
                    for line in f:
                        p = line.split()
                        if len(p) < 6 or not p[2].isdigit():
                            continue  # skipped or failed (serialization/deadlock) transactions
                        end = int(p[4]) + int(p[5]) / 1e6
                        lat.append(int(p[2]) / 1000.0)
                        ends.append(end)
                        c = int(p[0])
                        per_client_last[c] = max(per_client_last.get(c, 0.0), end)
    tps = processed = None
    for line in stdout.splitlines():
        if line.startswith("tps =") and tps is None:
            tps = float(line.split()[2])
        if line.startswith("number of transactions actually processed:"):
            processed = int(line.split(":")[1].split("/")[0])
    lat.sort()
    r = {"ok": rc == 0, "clients": clients, "calls": len(lat) if log_latencies else None,
         "calls_per_s": tps, "processed": processed, "median_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99)}
    if rc != 0:
        aborted = {}  # client id -> its error, in the order pgbench reported them
        for line in stderr.splitlines():
            m = ABORT_RE.search(line)
            if m:
                aborted.setdefault(int(m.group(1)), first_error_line(m.group(2)))
        errors = {}
        for e in aborted.values():
            errors[e] = errors.get(e, 0) + 1
        r["error"] = next(iter(aborted.values())) if aborted else first_error_line(stderr)
        r["errors"] = errors or {r["error"]: clients}
        r["clients_aborted"] = len(aborted) if aborted else clients
        r["exit_status"] = rc
        # Every call that ended before the first aborting client's last good call ended came before
        # the error: a lower bound on the calls that succeeded before it.
        first = min((per_client_last.get(c, 0.0) for c in aborted), default=0.0)
        r["calls_before_error"] = sum(1 for e in ends if e <= first) if aborted else 0
        # pgbench's tps of an aborted run covers only part of it: count the calls over the run.
        r["calls_per_s"] = len(lat) / seconds if seconds and log_latencies else None
    return r
