#!/usr/bin/python3
"""tools/atx soak: a randomized fault soak of pg_atx with a checker over the whole history.

A Patroni pair with etcd on loopback (--single: one server), atx-applier on it (in a network
namespace of its own when run as root), 8 clients each with its own role calling pg_atx in every
way (atx_log in committing and rolling-back transactions, atx_log_keyed with repeated keys,
atx_exec, nested emits, the audit trigger, now and then a message needing a top-level statement),
and a nemesis playing a schedule of faults drawn from the seed: applier SIGKILL, apply backend
SIGKILL, server crash (-m immediate), walsender SIGSTOP/SIGCONT, Patroni failover (host crash) and
switchover, a network partition between the applier and the primary, the applier's state directory
full, a role's privilege revoked and granted back. Afterwards the checker (checker.py) compares
every call's outcome with what the database holds. A failure prints the seed and the schedule;
--seed replays it.

Exit status: 0 every check passed, 1 a check failed, 2 the run could not be set up.
Run with Debian's Python and python3-psycopg2 (tools/atx soak does)."""
import argparse
import json
import os
import random
import shlex
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import psycopg2  # noqa: E402

import checker  # noqa: E402
import clients  # noqa: E402
import nemesis  # noqa: E402
from harness import Harness, HarnessError  # noqa: E402

CHECKS = [   # every check, in the order the TAP output lists them
    "the cluster and the applier started",
    "every acknowledged call applied (or dead-lettered)",
    "nothing applied twice",
    "per-caller order kept",
    "atx_exec results and audit outcomes equal what was applied",
    "nothing applied for a call the server refused",
    "every dead letter explained by the schedule",
    "delivery resumed within %d s of each fault",
    "the applier's memory did not grow",
    "the applier never exited by itself",
    "no call hung",
    "drained after the faults",
    "workload",
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="tools/atx soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="length of the round (default 3)")
    ap.add_argument("--seed", type=int, help="seed of the schedule and the clients (default: random, printed)")
    ap.add_argument("--single", action="store_true", help="one server instead of the Patroni pair")
    ap.add_argument("--nodes", type=int, default=2,
                    help="Patroni nodes (default 2, the pair; with 3 a synchronous standby is left while a "
                         "failover's old primary is down, so the next failover or switchover need not wait for its "
                         "return, and while a node that did not rejoin is rebuilt)")
    ap.add_argument("--clients", type=int, default=8, help="clients, each with its own role (default 8)")
    ap.add_argument("--rate", type=float, default=2.0,
                    help="faults of each kind planned per minute (default 2: 60 of each in 30 minutes); failovers, "
                         "switchovers, server crashes and backend kills share one lane (each restarts the primary; "
                         "the kind with fewer so far goes first), which played about 8 a minute on this 2-core "
                         "machine with 3 nodes (seed 3050), so that 50 of each in 30 minutes wants --nodes 3 --rate 3 (a "
                         "backlog keeps the lane busy; what is left is reported \"not reached\")")
    ap.add_argument("--pace", type=float, default=0.02,
                    help="mean pause between a client's calls in seconds (default 0.02)")
    ap.add_argument("--durability", default="auto",
                    help="the applier's --durability (default auto: sync under the pair's synchronous_mode, local "
                         "alone); standby-flush makes the applier decide confirmations itself (what --break breaks)")
    ap.add_argument("--applier-args", default="", help="more atx-applier options (one string)")
    ap.add_argument("--break", dest="break_", metavar="NAME",
                    help="run atx-applier-faults with ATX_BREAK=NAME (a deliberate bug the checker must catch)")
    ap.add_argument("--recovery-bound", type=float, help="seconds within which delivery must resume after a "
                                                         "fault (default 60 alone, 90 with the pair)")
    ap.add_argument("--out", help="directory for the history, schedule and report (default "
                                  "build/pg<major>/soak/<seed>-<time>)")
    ap.add_argument("--keep", action="store_true", help="keep the cluster directory also when every check passed")
    ap.add_argument("--tap", action="store_true", help="print the checks as TAP lines (tests/integration/soak_round.sh)")
    return ap.parse_args(argv)


class Env:
    """What the nemesis and the checker need to reach the cluster."""

    def __init__(self, harness, mode, replies, clients_n):
        self.harness = harness
        self.mode = mode
        self.dsn = replies["dsn"]
        self.dir = replies["dir"]
        self.slot = replies.get("slot")
        self.netns = bool(replies.get("netns"))
        self.netns_why = replies.get("netns_why", "")
        self.tmpfs = bool(replies.get("state_tmpfs"))
        self.nodes = {}
        for item in (replies.get("nodes") or "").split():
            name, pg, api = item.split(":")
            self.nodes[name] = (int(pg), int(api))
        self.roles = list(range(1, clients_n + 1))

    def role(self, n):
        return "soak_c%d" % n

    def cluster(self):
        for _, api in self.nodes.values():
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/cluster" % api, timeout=2) as r:
                    return json.load(r).get("members", [])
            except (OSError, ValueError):
                continue
        return []

    def leader(self):
        if self.mode != "pair":
            return None
        for m in self.cluster():
            if m.get("role") == "leader":
                return m["name"]
        return None

    def leader_index(self):
        leader = self.leader()
        return int(leader[4:]) if leader else 1

    def replicas_streaming(self):
        """{replica: streams from the leader? (None: being rebuilt)}, or None while no leader runs."""
        members = self.cluster()
        if not any(m.get("role") == "leader" and m.get("state") == "running" for m in members):
            return None
        out = {}
        for m in members:
            if m.get("role") == "leader":
                continue
            if m.get("state") == "creating replica":
                out[m["name"]] = None
                continue
            out[m["name"]] = self.streams(m["name"])
        return out

    def streams(self, member):
        """Whether MEMBER's walreceiver streams (from whichever primary)."""
        pg, _ = self.nodes[member]
        try:
            c = psycopg2.connect(host="127.0.0.1", port=pg, user="postgres", dbname="postgres", connect_timeout=2)
            try:
                cur = c.cursor()
                cur.execute("SELECT status FROM pg_stat_wal_receiver")
                row = cur.fetchone()
                return bool(row) and row[0] == "streaming"
            finally:
                c.close()
        except psycopg2.Error:
            return False

    def members_note(self):
        return ";".join("%s %s %s" % (m.get("name"), m.get("role"), m.get("state")) for m in self.cluster()) or "-"

    def writable(self):
        try:
            c = psycopg2.connect(self.dsn, connect_timeout=3)
            try:
                cur = c.cursor()
                cur.execute("SELECT NOT pg_is_in_recovery()")
                return cur.fetchone()[0]
            finally:
                c.close()
        except psycopg2.Error:
            return False

    def pair_not_ready(self):
        """None when there is a leader that takes writes and a synchronous standby streaming with its
        copy of the slot (what a failover to it needs); else what is missing."""
        members = self.cluster()
        leader = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
        sync = [m for m in members if m.get("role") == "sync_standby" and m.get("state") in ("running", "streaming")]
        if not leader:
            return "no running leader"
        if not sync:
            return "no synchronous standby"
        if not self.writable():
            return "the primary does not take writes"
        pg, _ = self.nodes[sync[0]["name"]]
        try:
            c = psycopg2.connect(host="127.0.0.1", port=pg, user="postgres", dbname="postgres", connect_timeout=3)
            try:
                cur = c.cursor()
                cur.execute("SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s), "
                            "(SELECT status FROM pg_stat_wal_receiver)", (self.slot,))
                n, status = cur.fetchone()
            finally:
                c.close()
        except psycopg2.Error:
            return "%s does not answer" % sync[0]["name"]
        if status != "streaming":
            return "%s does not stream" % sync[0]["name"]
        return None if n == 1 else "%s has no copy of the slot" % sync[0]["name"]


def q1(dsn, sql, args=None):
    c = psycopg2.connect(dsn, connect_timeout=3)
    try:
        c.autocommit = True
        cur = c.cursor()
        cur.execute(sql, args)
        return cur.fetchone() if cur.description else None
    finally:
        c.close()


def wait(seconds, fn):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if fn():
                return True
        except psycopg2.Error:
            pass
        time.sleep(0.5)
    return False


def setup_schema(env, n):
    c = psycopg2.connect(env.dsn, connect_timeout=5)
    c.autocommit = True
    cur = c.cursor()
    with open(os.path.join(HERE, "schema.sql")) as f:
        cur.execute(f.read())
    for i in range(1, n + 1):
        r = env.role(i)
        cur.execute("CREATE ROLE %s LOGIN" % r)
        cur.execute("GRANT SELECT, INSERT ON soak_applied, soak_control, soak_audited TO %s" % r)
        cur.execute("GRANT USAGE ON SEQUENCE soak_applied_id_seq TO %s" % r)
    c.close()


def drained(env, seconds):
    """Every message emitted before now handled durably: the slot confirmed past the WAL position
    of now, twice (the second time past what the first round's messages emitted while applied)."""
    deadline = time.time() + seconds
    for _ in range(2):
        lsn = None
        while time.time() < deadline:
            try:
                if lsn is None:
                    lsn = q1(env.dsn, "SELECT pg_current_wal_insert_lsn()::text")[0]
                if q1(env.dsn, "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                               "WHERE slot_name = atx.slot_name()", (lsn,))[0]:
                    break
            except (psycopg2.Error, TypeError):
                lsn = None   # a new primary: its own WAL position
            time.sleep(1)
        else:
            return False, "the slot was not confirmed past %s within %d s" % (lsn, seconds)
        time.sleep(2)   # anything applied twice would show up now
    return True, ""


def main(argv=None):
    a = parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 10 ** 6)
    mode = "single" if a.single else "pair"
    durability = a.durability
    bound = a.recovery_bound or (90 if mode == "pair" else 60)
    seconds = a.minutes * 60
    major = os.environ.get("ATX_PG_MAJOR", "")
    build = os.environ.get("ATX_BUILD_DIR") or os.path.join(ROOT, "build", "pg%s" % major)
    out = a.out or os.path.join(build, "soak", "%d-%s" % (seed, time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(out, exist_ok=True)
    replay = "tools/atx soak --minutes %g --seed %d%s%s%s%s%s%s%s" % (
        a.minutes, seed, " --single" if a.single else "", " --durability %s" % durability if durability != "auto" else "",
        " --break %s" % a.break_ if a.break_ else "", " --rate %g" % a.rate if a.rate != 2.0 else "",
        " --clients %d" % a.clients if a.clients != 8 else "", " --pace %g" % a.pace if a.pace != 0.02 else "",
        " --applier-args %s" % shlex.quote(a.applier_args) if a.applier_args else "") + (
        " --nodes %d" % a.nodes if a.nodes != 2 and not a.single else "")
    started = time.time()
    tap = []

    def say(msg):
        line = "%s %s" % (time.strftime("%H:%M:%S"), msg)
        with open(os.path.join(out, "soak.log"), "a") as f:
            f.write(line + "\n")
        print(("# " if a.tap else "") + line, flush=True)

    say("seed %d (replay: %s); %s, %g min, durability %s; output in %s" % (
        seed, replay, mode if a.single or a.nodes == 2 else "%d Patroni nodes" % a.nodes, a.minutes, durability, out))
    env_extra = {"ATX_BREAK": a.break_} if a.break_ else {}
    h = Harness(os.path.join(out, "harness.log"), env_extra)
    status = 2
    try:
        rc, r, _ = h.call("soak_init", mode, a.nodes)
        if rc != 0:
            say("setup failed; the harness log: %s" % os.path.join(out, "harness.log"))
            with open(os.path.join(out, "harness.log")) as f:
                print("".join(("# " if a.tap else "") + x for x in f.readlines()[-30:]))
            if a.tap:
                print("not ok 1 - %s\n1..1" % CHECKS[0])
            h.call("soak_keep")
            return 2
        env = Env(h, mode, r, a.clients)
        if not env.netns:
            say("network partitions not injected: %s" % env.netns_why)
        if not env.tmpfs:
            say("state directory full not injected: cannot mount a tmpfs (not root)")
        setup_schema(env, a.clients)
        args = ["--durability", durability, "--status-interval-ms", "500"] + shlex.split(a.applier_args)
        h.call("soak_applier_args", *args, check=True)
        if a.break_:
            rc, rr, _ = h.call("soak_use_fault_points")
            if rc != 0:
                say("ATX_BREAK needs atx-applier-faults (configure with -DATX_FAULT_INJECTION=ON)")
                return 2
            say("deliberately broken applier: %s ATX_BREAK=%s" % (rr.get("bin"), a.break_))
        if h.call("soak_applier_start")[0] != 0 or not wait(60, lambda: q1(
                env.dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = atx.slot_name() AND active")[0]):
            say("the applier did not stream within 60 s; see %s" % env.dir)
            h.call("soak_keep")
            if a.tap:
                print("not ok 1 - %s\n1..1" % CHECKS[0])
            return 2
        tap.append((CHECKS[0], True, ""))
        kinds = nemesis.available_kinds(mode, env.netns, env.tmpfs)
        events = nemesis.make_schedule(seed, seconds, kinds, a.rate, env.roles, mode)
        with open(os.path.join(out, "schedule.json"), "w") as f:
            json.dump([e.plan() for e in events], f, indent=1)
        say("schedule: %d faults of %d kinds (%s)" % (len(events), len(kinds), ", ".join(kinds)))

        stop = threading.Event()
        hist = [os.path.join(out, "history-client%d.jsonl" % i) for i in env.roles]
        cl = [clients.Client(i, seed, env.dsn, env.role(i), hist[i - 1], stop, a.pace) for i in env.roles]
        for c in cl:
            c.start()
        nem = nemesis.Nemesis(env, events, say)
        t_start = time.time()
        nem.start()
        while time.time() - t_start < seconds:
            time.sleep(max(0.0, min(10.0, seconds - (time.time() - t_start))))
            done = sum(1 for e in events if e.status not in ("planned",))
            say("%.0f s: %d calls, %d of %d faults played" % (time.time() - t_start, sum(c.calls for c in cl),
                                                             done, len(events)))
        say("schedule over: healing what is still broken")
        nem.finish()
        wait(120, env.writable)
        time.sleep(5)   # the clients show delivery after the last heal
        stop.set()
        hung = []
        for c in cl:
            c.join(60)
            if c.is_alive():
                hung.append("client %d in a call for %.0f s" % (c.n, time.time() - (c.busy_since or time.time())))
        t_end = time.time()
        say("clients stopped: %d calls; draining" % sum(c.calls for c in cl))
        dr = drained(env, 240)
        calls = clients.read_history(hist)
        conn = psycopg2.connect(env.dsn, connect_timeout=5)
        db = checker.load(conn)
        conn.close()
        run = dict(t_start=t_start, t_end=t_end, recovery_bound=bound, rss=nem.rss,
                   applier_exits=nem.applier_exits, hung=hung, drained=dr, reinits=nem.reinits, regrants=nem.regrants)
        res = checker.check(calls, db, events, env.role, run)
        for err in nem.errors:
            res.notes.append("nemesis: " + err)
        with open(os.path.join(out, "events.json"), "w") as f:
            json.dump([e.record() for e in events], f, indent=1)
        meta = dict(seed=seed, mode=mode, nodes=1 if a.single else a.nodes, minutes=a.minutes, durability=durability, kinds=kinds,
                    replay=replay, clients=a.clients, rate=a.rate, elapsed=time.time() - started,
                    break_=a.break_, server=os.environ.get("PG_CONFIG", ""),
                    server_version=q1(env.dsn, "SHOW server_version")[0])
        md = checker.report_markdown(res, events, meta)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(md + "\n")
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(dict(meta=meta, ok=res.ok(), failures=res.failures, notes=res.notes, summary=res.summary,
                           dead_letters=res.dead_letters, todo=res.todo, by_kind=res.by_kind, faults=res.faults), f, indent=1, default=str)
        for line in md.splitlines():
            say(line)
        for k, v in res.summary.items():
            if k != "total":
                say("%s: %s" % (k, v))
        for n in res.notes:
            say("note: " + n)
        for name in CHECKS[1:]:
            name = name % bound if "%d" in name else name
            fails = [d for c, d in res.failures if c == name]
            todo = [d for c, d in res.todo if c == name]
            tap.append((name, not fails and not todo, "; ".join(fails) if fails else
                        ("%s # TODO a known product bug" % "; ".join(todo) if todo else "")))
        for c, d in res.failures:
            if not any(c == t[0] for t in tap):
                tap.append((c, False, d))
        for c, d in res.todo:
            say("known (TODO): %s: %s" % (c, d))
        t = res.summary.get("total", {})
        rs = res.summary.get("recovery", {})
        injected = {k: f["injected"] for k, f in res.faults.items()}
        # One row of docs/reliability.md (tools/reliability_report.sh reads "# reliability:" lines).
        print("# reliability: randomized fault soak, %s, %g min (seed %d) | %d clients; %d faults injected (%s); "
              "applier durability %s | %d calls, %d acknowledged, lost %d, duplicated %d, out of order %d, "
              "result differs %d, dead letters %d (unexplained %d); recovery p50/p99/max %s/%s/%s s | %s" % (
                  mode, a.minutes, seed, a.clients, sum(injected.values()),
                  ", ".join("%s %d" % (k.replace("_", " "), v) for k, v in injected.items()), durability,
                  t.get("calls", 0), t.get("ack", 0), t.get("lost", 0), t.get("duplicated", 0),
                  t.get("out_of_order", 0), t.get("mismatched", 0), res.summary.get("dead_letters", 0),
                  len([d for d in res.dead_letters if not d["cause"]]), checker.fmt_s(rs.get("p50")),
                  checker.fmt_s(rs.get("p99")), checker.fmt_s(rs.get("max")), "pass" if res.ok() else "FAIL"),
              flush=True)
        if res.ok():
            say("PASS: seed %d, %d calls, %d faults injected, in %.0f s" % (
                seed, len(calls), sum(1 for e in events if e.injected), time.time() - started))
            status = 0
            if a.keep:
                h.call("soak_keep")
        else:
            h.call("soak_keep")
            say("FAIL: seed %d; replay with: %s" % (seed, replay))
            for c, d in res.failures:
                say("  failed: %s: %s" % (c, d))
            say("schedule (played):")
            for e in events:
                say("  #%d %+7.1fs %s %s %s%s" % (e.n, e.at, e.kind, json.dumps(e.arg), e.status,
                                                  (" (" + e.note.strip("; ") + ")") if e.note else ""))
            say("cluster, logs and history kept: %s and %s" % (env.dir, out))
            status = 1
    except (HarnessError, psycopg2.Error, OSError) as ex:
        say("the soak broke down: %s" % ex)
        try:
            h.call("soak_keep")
        except HarnessError:
            pass
        tap.append(("the soak ran to its end", False, str(ex)))
        status = 2
    finally:
        h.close()
        if a.tap:
            for i, (name, ok, detail) in enumerate(tap, 1):
                detail, _, todo = detail.partition(" # TODO ")
                print("%s %d - %s%s%s" % ("ok" if ok else "not ok", i, name, "" if ok else " (%s)" % detail[:400],
                                          " # TODO " + todo if todo else ""))
            print("1..%d" % len(tap))
    return status


if __name__ == "__main__":
    sys.exit(main())
