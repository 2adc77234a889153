#!/usr/bin/python3
"""The soak section of docs/reliability.md, from saved soak runs (tools/reliability_report.sh).

    report.py RUN_DIR...    each the --out directory of one tools/atx soak run (report.json, report.md)

Prints markdown: what the soak does, then per run its command, seed and tables, what the checker
found, and the known product bugs it reported (TAP TODO)."""
import json
import os
import sys

INTRO = """\
`tools/atx soak` ([tools/soak/](../tools/soak/)) runs the delivery promise against faults that come
together: a Patroni pair with etcd on loopback (`--single`: one server), atx-applier as the
least-privilege role `atx_app` in a network namespace of its own, 8 clients each with a role of its
own (atx_log in committing and rolling-back transactions, atx_log_keyed with repeated keys and keys
other roles use too, atx_exec, nested emits and a nested atx_exec, the audit trigger, now and then a
message that needs a top-level statement), and a nemesis playing a schedule drawn from the seed:
applier SIGKILL, apply backend SIGKILL, server crash (`-m immediate`), walsender SIGSTOP/SIGCONT
(the applier's, or the replica's), Patroni failover (the primary's host killed, half of the time
during a replica stall; its leader key expired at once) and switchover, a partition between the
applier and the primary (a veth pair cut with a queue that holds no packet), the applier's state
directory full (a tmpfs filled up), a role's INSERT privilege revoked and granted back. Faults
overlap as the draw makes them; one that the cluster cannot take yet (a failover or switchover while
there is no synchronous standby streaming with its copy of the slot, or while a failover's old
primary rejoins; a backend kill while no apply session runs; a fault of the same kind still in
progress) is tried again (every 0.25 s for a failover or switchover, else every second) until it can
be injected: none is dropped (one still waiting when the round ends is reported "not reached"), and
a switchover that patronictl gave up is tried again, not counted. Failovers, switchovers, server
crashes and backend kills each restart the primary and share one lane; when several wait, the kind
with fewer so far goes first. A server crash or backend kill waits out a failover or switchover
under way and a failover's old primary's rejoin (a pg_rewind broken off by a crash of its source
leaves a node to rebuild), and lets a waiting failover or switchover have the pair first unless it
is behind them in number or the lane has had no fault for 30 s. With 3 nodes the next failover or
switchover may come as soon as a synchronous standby has the slot, also while a failover's old
primary is still down (for a time drawn from the seed). A switchover does not meet a partition or a
walsender stall (its demote waits for that walsender, until Patroni's `primary_stop_timeout`), and
while switchovers are behind failovers no new partition starts. Patroni runs its loop every second
(`loop_wait: 1`). A supervisor restarts an applier that exits by itself, as systemd would, and
counts it; a replica that has not streamed for 45 s is rebuilt (`patronictl reinit`) and counted.

The checker compares every call's outcome (acknowledged, refused, unknown) with what the database
holds afterwards: every acknowledged call applied once or dead-lettered (a keyed call: its key
applied once for its role), nothing applied twice whatever the outcome, per-caller order along
each connection (the ids drawn at apply grow with the call order), each atx_exec result (and a
nested atx_exec's) the row that was applied, the audit rows with the caller's real outcome, the
plain commits of the control, every dead letter explained by a fault of the schedule (42501 by a
revoke of that role, 08006 by a lost backend, 40003 by an interrupted non-atomic run, 57014 by a
caller that stopped waiting or a fault during the run), delivery resumed after each fault (recovery:
from the fault's end, e.g. the restart or the SIGCONT, to the first row of a call made after it),
the applier's memory (the last quarter's peak RSS against the first's) and no applier exit. A
failure prints the seed and the schedule; `--seed` replays the schedule (the timing of a shared
machine varies). `tests/integration/soak_round.sh` runs one 3-minute round in `tools/atx test`."""


def fmt(v, digits=1):
    return "-" if v is None else ("%.*f" % (digits, v))


def run_section(d):
    with open(os.path.join(d, "report.json")) as f:
        r = json.load(f)
    with open(os.path.join(d, "report.md")) as f:
        tables = f.read().strip()
    m = r["meta"]
    s = r["summary"]
    out = []
    shape = "single server" if m["mode"] != "pair" else (
        "Patroni pair" if m.get("nodes", 2) == 2 else "%d Patroni nodes" % m["nodes"])
    title = "Deliberately broken applier (`ATX_BREAK=%s`), %s" % (m["break_"], shape) if m.get("break_") else \
        "%g-minute round, %s" % (m["minutes"], shape)
    out.append("### %s, seed %d: %s" % (title, m["seed"], "**passed**" if r["ok"] else "**failed**"))
    out.append("")
    out.append("`%s` (durability `%s`, %d clients, %g faults of each kind a minute; PostgreSQL %s; %.0f s in all)."
               % (m["replay"], m["durability"], m["clients"], m["rate"],
                  m.get("server_version") or "of " + (m.get("server") or "PG_CONFIG"), m["elapsed"]))
    out.append("")
    out.append(tables)
    out.append("")
    dl = s.get("dead_letters_by_sqlstate") or {}
    rss = s.get("rss_kb") or {}
    out.append("- Dead letters: %d, each explained by the schedule (%s)." % (
        s.get("dead_letters", 0), ", ".join("%s: %d" % kv for kv in sorted(dl.items())) or "none"))
    rec = s.get("recovery") or {}
    out.append("- Recovery after %d faults: p50 %s s, p99 %s s, max %s s." % (
        rec.get("n", 0), fmt(rec.get("p50")), fmt(rec.get("p99")), fmt(rec.get("max"))))
    if rss:
        out.append("- Applier RSS (kB, %d samples over %d processes): first quarter's peak %d, last quarter's %d, "
                   "max %d." % (rss["samples"], rss["incarnations"], rss["first_quarter_max"],
                                rss["last_quarter_max"], rss["max"]))
    out.append("- Applier exits not caused by the nemesis: %d." % s.get("applier_exits", 0))
    if s.get("replica_reinits"):
        out.append("- Replicas rebuilt with `patronictl reinit` after 45 s without streaming: %d (Patroni 3.0 "
                   "starts a node whose WAL went past the new primary's fork point as a replica that never "
                   "streams; an operator's fix, not pg_atx's)." % s["replica_reinits"])
    if s.get("grants_regranted"):
        out.append("- GRANTs that healed a revoke and were lost in a later failover (they commit without waiting "
                   "for the standby), granted again by the nemesis: %d; those revokes' windows end there."
                   % s["grants_regranted"])
    for check, detail in r.get("failures", []):
        out.append("- **failed: %s**: %s" % (check, detail[:600]))
    for check, detail in r.get("todo", []):
        out.append("- known product bug (TAP TODO): %s: %s" % (check, detail))
    return "\n".join(out)


def main(dirs):
    print("## Randomized fault soak")
    print()
    print(INTRO)
    for d in dirs:
        print()
        print(run_section(d))


if __name__ == "__main__":
    main(sys.argv[1:])
