#!/usr/bin/python3
"""Hostile messages against a live pg_atx cluster, checking issue 21's invariants after every round.

Starts its own throwaway cluster (PostgreSQL of PG_CONFIG, as tests/lib/cluster.sh picks it) with
pg_atx preloaded, a victim role writing a steady stream, attacker roles (each in two NOLOGIN
groups), and atx-applier as the least-privilege role of docs/setup.md with a short per-message
limit. Each round plays a seeded plan of hostile messages (fz_grammar) from several attacker
sessions while the victim writes, then checks invariants 1-6 (fz_checks). A failing round is
shrunk to the smallest plan that still fails (fz_shrink) and printed as SQL to paste; --seed S
--round K replays round K exactly (on a fresh cluster). Exit status: 0 no violation, 1 a
violation, 2 the environment could not be set up.

Run with Debian's Python and python3-psycopg2: /usr/bin/python3 tools/fuzz_apply/fuzz_apply.py.
"""
import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fz_checks  # noqa: E402
import fz_cluster  # noqa: E402
import fz_grammar  # noqa: E402
import fz_shrink  # noqa: E402
from fz_round import Env  # noqa: E402
from fz_verdicts import Bounds  # noqa: E402
from fz_victim import PROBED  # noqa: E402

APPLIER_OPTIONS = {            # the applier under test: short rounds, everything else at defaults
    "statement-timeout-ms": 3000, "lock-timeout-ms": 1000, "max-attempts": 3, "retry-base-ms": 100,
    "retry-cap-ms": 1000, "max-retry-seconds": 5, "max-backend-losses": 2, "prune-interval-ms": 1000,
    "status-interval-ms": 500,
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="start rounds for this long (default 5)")
    ap.add_argument("--seed", type=int, help="seed of the run (default: random, printed)")
    ap.add_argument("--round", type=int, help="replay only this round of the seed, on a fresh cluster")
    ap.add_argument("--rounds", type=int, help="at most this many rounds")
    ap.add_argument("--build", help="build directory holding applier/atx-applier (default build/pg<major>)")
    ap.add_argument("--keep", action="store_true", help="keep the clusters and logs (printed at the end)")
    ap.add_argument("--keep-going", action="store_true",
                    help="play the next round after a failing one (on a fresh cluster: a failure may leave "
                         "the old one broken)")
    ap.add_argument("--shrink-seconds", type=float, default=600,
                    help="time for shrinking the first failure (default 600; 0: none)")
    ap.add_argument("--shrink-invariant", type=int, choices=range(1, 7),
                    help="shrink for this invariant (default: the first one the failing round broke)")
    ap.add_argument("--window", type=float, default=40,
                    help="longest time the attackers emit in a round (default 40 s)")
    ap.add_argument("--warmup", type=float, default=4, help="the victim alone before the first round (default 4 s)")
    ap.add_argument("--patterns",
                    help="comma list of issue rows to play every round, or 'none'; groups separated by '/' "
                         "are played one per round in turn (default: seeded)")
    ap.add_argument("--random-sessions", type=int, help="random attacker sessions per round (default: seeded, 1-4)")
    ap.add_argument("--json", help="write the results here (rounds, invariants, violations, shrunk plans)")
    ap.add_argument("--applier-option", action="append", default=[], metavar="NAME=VALUE",
                    help="override an applier option (e.g. statement-timeout-ms=5000)")
    return ap.parse_args(argv)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def out(msg):
    print(msg, flush=True)


class Run:
    def __init__(self, a):
        self.a = a
        self.seed = a.seed if a.seed is not None else random.randrange(1, 10 ** 6)
        srv = fz_cluster.server_env()
        self.server = srv
        build = a.build or os.path.join(fz_cluster.ROOT, "build", f"pg{srv['major']}")
        self.applier_bin = os.path.join(build, "applier", "atx-applier")
        if not os.access(self.applier_bin, os.X_OK):
            raise SystemExit(f"fuzz_apply: no applier at {self.applier_bin} (build first, or pass --build)")
        opts = dict(APPLIER_OPTIONS)
        for o in a.applier_option:
            k, _, v = o.partition("=")
            opts[k.lstrip("-")] = int(v)
        self.opts = opts
        self.applier_args = [x for k, v in opts.items() for x in (f"--{k}", str(v))]
        self.bounds = Bounds(opts["statement-timeout-ms"], opts["max-retry-seconds"], opts["max-attempts"],
                             opts["max-backend-losses"], opts["prune-interval-ms"], opts["status-interval-ms"])
        self.workdir = tempfile.mkdtemp(prefix="pg_atx.fuzz_apply.", dir=os.environ.get("TMPDIR", "/tmp"))
        os.chmod(self.workdir, 0o755)
        fz_cluster.chown_server(self.workdir)
        self.template = fz_cluster.Template(self.workdir, log)
        self.results = {"seed": self.seed, "server": srv, "applier_options": opts, "rounds": [],
                        "violations": [], "shrunk": []}
        self.env = None
        self.latencies = []         # every victim message's end-to-end latency (ms), all rounds
        self.t_start = time.time()

    def setup(self):
        sql = open(os.path.join(HERE, "fz_setup.sql")).read()
        sql = sql.replace("@PROBED@", ", ".join("'" + p + "'" for p in PROBED))
        self.template.build(sql)

    def new_env(self, name, warmup):
        env = Env(self.template, name, self.applier_bin, self.applier_args, self.bounds, self.seed, log)
        try:
            env.start(warmup)
        except Exception:
            env.stop(keep=True)
            raise
        return env

    def plan_for(self, k):
        p = self.a.patterns
        if p and "/" in p:                       # one group per round, in turn
            groups = p.split("/")
            p = groups[(k - 1) % len(groups)]
        pats = None if not p else [] if p == "none" else [int(x) for x in p.split(",")]
        return fz_grammar.generate(self.seed, k, patterns=pats, random_sessions=self.a.random_sessions)

    def play(self):
        a = self.a
        rounds = [a.round] if a.round else None
        k = 0
        failing = None
        fresh = 1
        while True:
            if self.env is None:
                self.env = self.new_env(f"main{fresh}", a.warmup)
                fresh += 1
                self.baseline, self.rls_functions = self.env.baseline, self.env.rls_functions
                self.session_seen = dict(self.env.victim.session_seen)
                ref = fz_checks.reference(self.env.cluster)
            k = rounds.pop(0) if rounds is not None else k + 1
            plan = self.plan_for(k)
            log(f"round {k} (seed {self.seed}): {len(plan.sessions)} attacker sessions, {len(plan.units())} units, "
                f"patterns {plan.patterns or '-'}{', rogue operator' if plan.rogue else ''}"
                f"{', crash-killer' if plan.poison else ''}")
            t0 = time.time()
            res = self.env.run_round(plan, k, a.window)
            viol, stats = fz_checks.check_round(res, self.env.baseline, ref, self.env.victim.session_seen)
            self.report_round(k, plan, res, viol, stats, time.time() - t0)
            if viol and failing is None:
                failing = (k, plan, viol)
            if viol:
                self.print_culprits(plan, viol)
                self.print_timeline(res, viol[0])
            if (viol and not a.keep_going) or rounds == [] or (a.rounds and k >= a.rounds) \
                    or time.time() - self.t_start > a.minutes * 60:
                break
            if viol:
                self.env.stop(keep=a.keep)
                self.env = None
        if self.env is not None:
            self.env.stop(keep=a.keep)
            self.env = None
        return failing

    def report_round(self, k, plan, res, viol, stats, secs):
        failed = {v.inv for v in viol}
        self.latencies += stats.pop("_latencies_ms", [])
        entry = {"round": k, "seconds": round(secs, 1), "plan": plan.to_json(), "stats": stats,
                 "invariants": {}, "violations": [v.to_json() for v in viol]}
        for inv in range(1, 7):
            ok = inv not in failed
            first = next((v.text for v in viol if v.inv == inv), "")
            entry["invariants"][str(inv)] = {"ok": ok, "first": first}
            out(f"# round {k} invariant {inv} ({fz_checks.NAMES[inv]}): {'ok' if ok else 'VIOLATED'}"
                + ("" if ok else f": {first}"))
        lat = stats.get("victim_latency_s", {})
        out(f"# round {k}: {stats.get('messages', 0)} messages ({stats.get('attacker_messages', 0)} attackers', "
            f"{stats.get('nested', 0)} nested), statuses {stats.get('statuses')}, victim latency p50 "
            f"{lat.get('p50', '-')} s p99 {lat.get('p99', '-')} s max {lat.get('max', '-')} s, idle apply backend "
            f"max {stats.get('rss_max_mb', 0)} MB, {len(res.kills)} kill(s), {secs:.0f} s")
        for inv in sorted(failed):
            vs = [v for v in viol if v.inv == inv]
            for v in vs[1:4]:
                out(f"#   also invariant {inv}: {v.text[:300]}")
            if len(vs) > 4:
                out(f"#   ... and {len(vs) - 4} more of invariant {inv}")
        told = {}
        for ur in res.attacker_runs:
            for _, st, _, _ in ur.results:
                told[st] = told.get(st, 0) + 1
        entry["attacker_statements"] = told
        entry["attacker_errors"] = [r for ur in res.attacker_runs for r in ur.results if r[1] != "ok"][:200]
        self.results["rounds"].append(entry)
        self.results["violations"] += [dict(v.to_json(), round=k) for v in viol]
        self.write_json()       # after every round: a run stopped from outside keeps what it found

    def print_culprits(self, plan, viol):
        """The units the first violation names, as SQL (before any shrinking)."""
        units = viol[0].units
        if not units:
            return
        p = fz_shrink.only_units(plan, units, flags=False)
        out(f"# the message(s) invariant {viol[0].inv}'s first violation names:")
        for line in fz_grammar.plan_sql(p, self.rls_functions).splitlines():
            out("#   " + line)

    def print_timeline(self, res, v, most=16):
        """When each message the violation names was emitted, began its run and became final, and
        the applier's log lines about it: a run in CI leaves nothing else behind."""
        for m in v.msgs[:3]:
            rel = lambda t: "-" if t is None else f"{t - m.emitted:+.1f} s"  # noqa: E731
            out(f"# {m.id}: emitted, run from {rel(m.run_start)}, final at {rel(m.final_at)} "
                f"({m.status} {m.sqlstate or ''})")
            keys = [m.id.encode(), f"lsn={m.lsn}".encode()]
            lines = [ln for ln in res.applier_log.splitlines() if any(k in ln for k in keys)]
            for ln in lines[:most]:
                out("#   " + ln.decode(errors="replace")[:300])
            if len(lines) > most:
                out(f"#   ... {len(lines) - most} more applier log line(s)")
            runs = res.runs_seen.get(m.id, [])
            kills = [k[0] for k in res.kills]
            out(f"#   runs the registry showed: {', '.join(rel(t) for t in runs) or '-'}; "
                f"crash-killer kills: {', '.join(rel(t) for t in kills) or '-'}")
            self.print_window(res, m.emitted, m.final_at or res.t_end, most)
        # Invariant 2: what the applier said about the message at the slot's position.
        at = re.search(r"confirmed_flush_lsn then ([0-9A-F]+/[0-9A-F]+)", v.text)
        if at:
            keys = [f"lsn={at.group(1)} ".encode(), f"first={at.group(1)} ".encode()]
            lines = [ln for ln in res.applier_log.splitlines() if any(k in ln for k in keys)]
            out(f"# applier log lines about {at.group(1)}: {len(lines)}")
            for ln in lines[:most]:
                out("#   " + ln.decode(errors="replace")[:300])

    ROUTINE = (b"event=message_overdue", b"event=dead_lettered", b"event=overdue_terminated")

    @staticmethod
    def print_window(res, t0, t1, most):
        """The applier's warnings and errors while a late message was open, but for the per-message
        ones (each names its own message): what else held it up (a restart, a watchdog error)."""
        picked, routine = [], 0
        for ln in res.applier_log.splitlines():
            if b"level=warning" not in ln and b"level=error" not in ln and b"level=critical" not in ln:
                continue
            try:
                t = datetime.datetime.strptime(ln[:26].decode(), "%Y-%m-%dT%H:%M:%S.%f")
            except ValueError:
                continue
            t = t.replace(tzinfo=datetime.timezone.utc).timestamp()
            if not t0 - 1 <= t <= t1 + 1:
                continue
            if any(r in ln for r in Run.ROUTINE):
                routine += 1
            else:
                picked.append(f"{t - t0:+.1f} s " + ln.decode(errors="replace")[28:260])
        out(f"#   the applier's other warnings meanwhile ({routine} per-message overdue/dead-letter lines left out):")
        for ln in picked[:most]:
            out("#     " + ln)
        if len(picked) > most:
            out(f"#     ... {len(picked) - most} more")

    def shrink(self, failing):
        k, plan, viol = failing
        budget = self.a.shrink_seconds
        inv = self.a.shrink_invariant if self.a.shrink_invariant in {v.inv for v in viol} else viol[0].inv
        culprits = set().union(*[v.units for v in viol if v.inv == inv])
        log(f"shrinking round {k} (invariant {inv}: {fz_checks.NAMES[inv]}) for at most {budget:.0f} s")
        ref_box = {}
        trial_no = [0]

        def trial(p):
            trial_no[0] += 1
            env = self.new_env(f"trial{trial_no[0]}", 1.0)
            try:
                env.baseline = self.baseline
                ref = ref_box.setdefault("ref", fz_checks.reference(env.cluster))
                stop = None
                if inv in (1, 2):
                    stop = lambda e, r: fz_checks.overdue(r, time.time())  # noqa: E731
                elif inv == 3:
                    last = [0.0]

                    def stop(e, r):
                        if time.time() - last[0] < 3:
                            return False
                        last[0] = time.time()
                        return fz_checks.leaks_now(e, r, ref, self.session_seen)
                res = env.run_round(p, k, self.a.window, early_stop=stop)
                if res.stopped_early:
                    return {1, 2} if inv in (1, 2) else {inv}
                vs, _ = fz_checks.check_round(res, env.baseline, ref, self.session_seen)
                return {v.inv for v in vs}
            finally:
                env.stop(keep=False)

        s = fz_shrink.Shrinker(trial, inv, budget, log)
        best = s.run(plan, culprits) if budget > 0 else plan
        sql = fz_grammar.plan_sql(best, self.rls_functions)
        self.results["shrunk"].append({"round": k, "invariant": inv, "trials": s.trials, "plan": best.to_json(),
                                       "sql": sql, "size": best.size(), "original_size": plan.size()})
        out(f"# smallest plan found for invariant {inv} ({s.trials} trials; size {best.size()} of {plan.size()}):")
        for line in sql.splitlines():
            out("#   " + line)
        return best

    def write_json(self):
        if self.a.json:
            with open(self.a.json + ".tmp", "w") as f:
                json.dump(self.results, f, indent=1, default=str)
            os.replace(self.a.json + ".tmp", self.a.json)

    def finish(self):
        self.write_json()
        if self.a.keep:
            log(f"kept: {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv=None):
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = Run(a)
    out(f"# fuzz_apply seed {run.seed} on PostgreSQL {run.server['major']} ({run.server['pg_config']}), "
        f"applier {run.applier_bin}")
    failing = None
    code = 0
    try:
        try:
            run.setup()
        except Exception as e:
            log(traceback.format_exc())
            out(f"# setup failed: {e}")
            return 2
        failing = run.play()
        if failing:
            code = 1
            k = failing[0]
            out(f"# VIOLATION in round {k}: replay with --seed {run.seed} --round {k}")
            if a.shrink_seconds > 0:
                run.shrink(failing)
        lat = sorted(run.latencies)
        q = (lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]) if lat else (lambda p: "-")
        run.results["victim_latency_ms"] = {"n": len(lat), "p50": q(0.5), "p99": q(0.99),
                                            "max": lat[-1] if lat else None}
        out(f"# summary: seed {run.seed}, {len(run.results['rounds'])} round(s), "
            f"{sum(r['stats'].get('messages', 0) for r in run.results['rounds'])} messages, "
            f"{sum(len(r['violations']) for r in run.results['rounds'])} violation(s), victim end-to-end latency "
            f"p50 {q(0.5)} ms p99 {q(0.99)} ms max {lat[-1] if lat else '-'} ms ({len(lat)} messages), "
            f"{time.time() - run.t_start:.0f} s")
        return code
    finally:
        if run.env is not None:
            run.env.stop(keep=a.keep)
        run.finish()


if __name__ == "__main__":
    sys.exit(main())
