"""The soak's nemesis: a schedule of faults drawn from the seed alone (kind, moment, how long,
target), played against the running cluster, overlapping where the draw makes them overlap.

Each fault is injected at its moment and healed after its hold. One the cluster cannot take yet (a
fault of the same kind still in progress or just over, a failover while the pair is not whole, a
backend kill with no apply backend) is tried again every second (a failover or switchover every
0.25 s) until it can be injected: none is dropped; one still waiting when the schedule ends is
reported "not reached", with what it waited for. The times it was really injected and healed go to
the report: the checker explains dead letters and measures recovery from them."""
import json
import heapq
import os
import random
import signal
import threading
import time

import psycopg2

KINDS = ["applier_kill", "backend_kill", "server_crash", "walsender_stall", "failover", "switchover",
         "partition", "state_full", "privilege_revoke"]
PAIR_ONLY = ("failover", "switchover")
PATRONI = ("failover", "switchover")
RETRY = 1.0             # seconds between two tries of a fault the cluster cannot take yet
# ... of a failover or switchover, and between two looks at one under way: the Patroni lane bounds
# how many a round plays, and 1 s polls left it idle for half a second per step on average.
PATRONI_RETRY = 0.25
# Seconds from the end of a fault to the next of its kind: a kind's backlog (faults that waited)
# is played as separate faults, not as one burst in the same second.
MIN_GAP = 2.0
# While a failover or switchover is under way or waits for the pair, these wait too: each restarts
# the primary and sends the replica back to its start, so they would keep the pair from ever being
# whole again, and one under a switchover makes patronictl give up (seen: the old primary still led
# 70 s later). A fault under way or a rejoin is waited out; a pair that is not ready yet is waited
# for only while the kind is not behind both Patroni kinds in faults injected, and only while the
# Patroni lane has injected something within YIELD_MAX s (a pair that stays broken longer, a replica
# being rebuilt, is not theirs to wait for). A cap on each wait alone was not enough: with a backlog
# of failovers (--rate 3) one always waits, each Patroni fault reset the cap, and a 5-minute 3-node
# round played 3 backend kills of 15 (seed 3050).
YIELD_TO_PATRONI = ("server_crash", "backend_kill")
YIELD_MAX = 30
STUCK_REPLICA = 45      # seconds a replica may not stream (no Patroni fault running) before it is rebuilt
# A failover's old primary, started again, rejoins by crash recovery and pg_rewind until it streams
# (REJOIN s at most; then it is taken to be stuck, and rebuilt after STUCK_REPLICA s). Failovers and
# switchovers wait for it, and so do crashes and backend kills (for as long as it rejoins): each takes
# away the primary its pg_rewind reads from, and a rewind broken off leaves a node that never
# streams ("could not find common ancestor"), to be rebuilt (a 3-node round lost two nodes so, and
# its failovers waited 90 s). A switchover's old primary was shut down cleanly: nothing to rewind.
REJOIN = 30
# Seconds after which a switchover whose old primary still leads did not happen (patronictl gave
# up): it is tried again, not counted.
SWITCHOVER_MAX = 30
# When several of the kinds that restart the primary wait (failover, switchover, server crash,
# backend kill, with the pair), the kind injected fewer times so far goes first (the other gives way
# for FAIR_MAX s at most): they share one lane, and a draw by retry timing could leave one short.
LANE = PATRONI + YIELD_TO_PATRONI
HOLD_DEMOTE = ("partition", "walsender_stall")
FAIR_MAX = 3
REBUILD_CHECKPOINT = 5  # seconds between CHECKPOINTs on the primary while a replica is rebuilt


class Event:
    def __init__(self, n, kind, at, hold, arg):
        self.n, self.kind, self.at, self.hold, self.arg = n, kind, at, hold, arg
        self.injected = None    # wall-clock time of the injection
        self.healed = None      # ... when the nemesis stopped acting (restarted, resumed, mended)
        self.settled = None     # ... when the cluster was whole again (promotion, switchover done)
        self.status = "planned"
        self.note = ""
        self.waiting = None     # since when it waits for the cluster to be able to take it
        self.why = ""           # ... and for what
        self.attempts = ""      # attempts that did not happen (a switchover patronictl gave up)
        self.giving_way = None  # since when it gives way to a kind of LANE with fewer (FAIR_MAX)

    def plan(self):
        return {"n": self.n, "kind": self.kind, "at": round(self.at, 2), "hold": round(self.hold, 2),
                "arg": self.arg}

    def record(self):
        d = self.plan()
        d.update(injected=self.injected, healed=self.healed, settled=self.settled, status=self.status,
                 note=self.note)
        return d


def available_kinds(mode, netns, tmpfs):
    kinds = []
    for k in KINDS:
        if k in PAIR_ONLY and mode != "pair":
            continue
        if k == "partition" and not netns:
            continue
        if k == "state_full" and not tmpfs:
            continue
        kinds.append(k)
    return kinds


def make_schedule(seed, seconds, kinds, per_minute, roles, mode, warmup=8.0, cooldown=8.0):
    """The whole schedule, from the seed and the run's shape only (so that --seed replays it)."""
    rng = random.Random("%s/nemesis" % seed)
    lo, hi = warmup, max(warmup + 1, seconds - cooldown)
    events = []
    for kind in kinds:
        count = max(1, round(per_minute * seconds / 60.0))
        for _ in range(count):
            at = rng.uniform(lo, hi)
            hold, arg = 0.0, {}
            if kind == "applier_kill":
                hold = rng.uniform(0, 3)                       # dead this long before the restart
            elif kind == "backend_kill":
                arg = {"pick": rng.random()}                   # which apply backend
            elif kind == "server_crash":
                hold = rng.uniform(0, 2)                       # down this long (single server)
            elif kind == "walsender_stall":
                arg = {"which": rng.choice(["logical", "physical"]) if mode == "pair" else "logical"}
                hold = rng.uniform(1, 6)
            elif kind == "failover":
                # Half of them at the worst moment: the replica's stream stopped before the crash.
                arg = {"stall": round(rng.uniform(1, 3), 2) if rng.random() < 0.5 else 0}
                hold = rng.uniform(0, 5)                       # old primary back this long after promotion
            elif kind == "partition":
                hold = rng.uniform(2, 12)
            elif kind == "state_full":
                hold = rng.uniform(2, 8)
            elif kind == "privilege_revoke":
                arg = {"role": rng.choice(roles)}
                hold = rng.uniform(1, 6)
            events.append((at, kind, hold, arg))
    events.sort(key=lambda e: e[0])
    return [Event(i + 1, k, at, hold, arg) for i, (at, k, hold, arg) in enumerate(events)]


class Nemesis(threading.Thread):
    def __init__(self, env, events, log):
        super().__init__(name="nemesis", daemon=True)
        self.env = env
        self.events = events
        self.log = log
        self.t0 = None
        self.stop_at = None
        self._q = []
        self._seq = 0
        self._halt = threading.Event()
        self.active = {}            # kind -> event in progress (one per kind at a time)
        self.patroni_busy = None    # the failover/switchover in progress
        self.applier_down = False   # killed on purpose, restart pending
        self.applier_pid = None
        self.applier_exits = []     # exits the nemesis did not cause: (time, status, faults, log)
        self.since_start = set()    # kinds of fault in progress at some time since the applier started
        self.rss = []               # (time, pid, kB)
        self.patroni_waiting = None  # since when a failover/switchover waits for the pair
        self.replica_down_since = {}  # replica -> since when it has not streamed
        self.rewinding = {}         # failover's old primary -> when it was started again (until it streams)
        self.reinits = []           # (time, member, why): replicas rebuilt (patronictl reinit)
        self.rebuild_checkpoint = 0.0  # when the last CHECKPOINT for a replica's rebuild ran
        self.last_end = {}          # kind -> when its last fault ended (healed, settled)
        self.injected_n = {}        # kind -> faults injected so far
        # kind -> the fault of that kind that waits first; the others of its kind wait behind it
        # without asking the cluster (a 30-minute round's backlog would otherwise poll it dozens of
        # times a second)
        self.head = {}
        self.revoked_last = {}      # role index -> the last privilege_revoke event of that role
        self.regrants = 0           # GRANTs lost in a failover and made again (_grants_doctor)
        self.errors = []
        self.lock = threading.Lock()

    # --- plumbing ------------------------------------------------------------------------------
    def push(self, when, fn, *args):
        self._seq += 1
        heapq.heappush(self._q, (when, self._seq, fn, args))

    def say(self, msg):
        self.log("nemesis: " + msg)

    def sql(self, statement, args=None, fetch=False):
        """One statement on the primary as postgres (a fresh connection: the primary moves). It
        never waits for the standby (a GRANT must heal a revoke while the replica's stream is
        stopped) nor for long."""
        c = psycopg2.connect(self.env.dsn, connect_timeout=3,
                             options="-c synchronous_commit=local -c statement_timeout=20s -c lock_timeout=10s")
        try:
            c.autocommit = True
            cur = c.cursor()
            cur.execute(statement, args)
            return cur.fetchall() if fetch else None
        finally:
            c.close()

    def start_applier(self):
        rc, r, _ = self.env.harness.call("soak_applier_start")
        with self.lock:
            self.applier_pid = int(r["pid"]) if rc == 0 and r.get("pid") else None
            self.applier_down = False
            self.since_start = set(self.active)
        return rc == 0

    def run(self):
        self.t0 = time.time()
        for e in self.events:
            self.push(self.t0 + e.at, self._inject, e)
        self.push(self.t0 + 1, self._supervise)
        self.push(self.t0 + 1, self._sample_rss)
        while not self._halt.is_set():
            if not self._q:
                self._halt.wait(0.2)
                continue
            when, _, fn, args = self._q[0]
            now = time.time()
            if when > now:
                self._halt.wait(min(0.2, when - now))
                continue
            heapq.heappop(self._q)
            try:
                fn(*args)
            except Exception as ex:   # a broken action must not end the schedule
                self.errors.append("%s%s: %r" % (fn.__name__, args[:1], ex))
                self.say("error in %s: %r" % (fn.__name__, ex))

    def finish(self):
        """Stops injecting and heals whatever is still broken (also a killed applier)."""
        self._halt.set()
        self.join(60)
        # Streams first: while the replica's is stopped, every commit waits for it.
        order = ["walsender_stall", "partition", "state_full", "server_crash", "applier_kill"]
        for e in sorted(self.active.values(), key=lambda e: order.index(e.kind) if e.kind in order else 9):
            self._heal(e, final=True)
        if self.patroni_busy is not None:
            self._settle_patroni(self.patroni_busy)
        for e in self.events:   # an old primary whose restart was still to come (the lane went on)
            if e.kind == "failover" and e.injected and e.arg.get("node") and not e.arg.get("rejoined"):
                self._rejoin(e)
        for e in self.events:
            if e.status == "planned":
                e.status = "not reached"
                if e.waiting is not None:
                    e.note = "waited %.0f s: %s%s" % (time.time() - e.waiting, e.why,
                                                       ";" + e.attempts if e.attempts else "")
        with self.lock:
            down = self.applier_down
        r = self.env.harness.call("soak_applier_reap")[1]
        if down or r.get("state") != "running":
            if r.get("state") == "exited":
                self.applier_exits.append((time.time(), r.get("rc"), "at the end", r.get("why", "")))
            self.start_applier()

    # --- the schedule --------------------------------------------------------------------------
    def _defer(self, e, why):
        """Not yet: tried again RETRY s later (until the schedule ends), and said once."""
        now = time.time()
        if e.waiting is None:
            e.waiting = now
            self.say("#%d %s waits: %s" % (e.n, e.kind, why))
        elif e.kind in PATRONI and why.split(" (")[0] != e.why.split(" (")[0] and "waits before it" not in why:
            # Each change of what a failover or switchover waits for, with its time: where the
            # Patroni lane's time goes (docs/reliability.md)
            self.say("#%d %s now waits: %s (%.1f s since its first try)" % (e.n, e.kind, why, now - e.waiting))
        e.why = why
        self.push(now + (PATRONI_RETRY if e.kind in PATRONI else RETRY), self._inject, e)

    def _inject(self, e):
        now = time.time()
        head = self.head.get(e.kind)
        if head is not None and head is not e and head.status == "planned":
            return self._defer(e, "#%d %s waits before it" % (head.n, head.kind))
        self.head[e.kind] = e
        if e.kind in self.active:
            return self._defer(e, "the previous %s still in progress" % e.kind)
        if e.kind in PATRONI and self.patroni_busy is not None:
            if self.patroni_waiting is None:
                self.patroni_waiting = now
            return self._defer(e, "#%d %s still in progress" % (self.patroni_busy.n, self.patroni_busy.kind))
        if now - self.last_end.get(e.kind, 0.0) < MIN_GAP:
            return self._defer(e, "the previous %s just ended" % e.kind)
        # A switchover's demote (a fast shutdown) waits for every walsender to send its WAL out: one
        # that a partition cuts off or a SIGSTOP holds kept it until Patroni's primary_stop_timeout,
        # 30 s (a 5-minute round: "Switchover status unknown", the new primary 34 s later). They do
        # not meet: a failover (a host crash) has no such wait, and meets both. A switchover that
        # waits for them to end starts no new ones; and while switchovers are behind failovers, no
        # new partition starts (their holds are long, up to 12 s, and with a backlog they left the
        # switchover no moment: seed 3031 had 23 failovers to 16 switchovers after 10 minutes, 64% of
        # the switchovers' waiting spent on partitions and stalls).
        held = [k for k in HOLD_DEMOTE if k in self.active]
        if e.kind == "switchover" and held:
            return self._defer(e, "a %s in progress would hold the demote" % held[0])
        if e.kind in HOLD_DEMOTE:
            sw = self.head.get("switchover")
            if self.patroni_busy is not None and self.patroni_busy.kind == "switchover":
                return self._defer(e, "#%d switchover in progress" % self.patroni_busy.n)
            if sw is not None and sw.status == "planned" and sw.why.endswith("would hold the demote"):
                return self._defer(e, "#%d switchover waits for the walsenders to be free" % sw.n)
            if e.kind == "partition" and sw is not None and sw.status == "planned" and sw.waiting is not None \
                    and self.injected_n.get("switchover", 0) < self.injected_n.get("failover", 0):
                return self._defer(e, "#%d switchover waits, behind the failovers" % sw.n)
        if e.kind in PATRONI and self.rewinding:
            self._rejoined()
        rejoining = sorted(m for m, since in self.rewinding.items() if now - since < REJOIN)
        missing = None
        if e.kind in PATRONI and (rejoining or (missing := self.env.pair_not_ready())):
            if self.patroni_waiting is None:
                self.patroni_waiting = now
            if rejoining:
                return self._defer(e, "%s rejoins" % ", ".join(rejoining))
            return self._defer(e, "pair not ready: %s (members %s)" % (missing, self.env.members_note()))
        if e.kind in YIELD_TO_PATRONI:
            # A failover or switchover under way, or a failover's old primary in pg_rewind, is
            # always waited out (each ends within _wait_patroni's 120 s or REJOIN s): a kill 1 s
            # into a switchover left PostgreSQL 15's demoting postmaster unable to stop, and Patroni
            # held the leader lock for the rest of a 30-minute round; kills during a rewind broke it
            # off (replicas to rebuild). Only the wait for a pair to become ready is capped.
            if self.patroni_busy is not None:   # until a failover's old primary is started again
                return self._defer(e, "#%d %s in progress" % (self.patroni_busy.n, self.patroni_busy.kind))
            if rejoining:
                return self._defer(e, "%s rejoins" % ", ".join(rejoining))
            behind = self.injected_n.get(e.kind, 0) < min(self.injected_n.get(k, 0) for k in PATRONI)
            # The clock starts again at each fault of the lane: crashes 6 s apart once it had run out
            # kept a pair from ever being ready (a 5-minute round, 140 s without a Patroni fault).
            since = max([self.patroni_waiting or now] + [self.last_end.get(k, 0.0) for k in LANE])
            if not behind and self.patroni_waiting is not None and now - since < YIELD_MAX:
                return self._defer(e, "a failover or switchover waits for the pair")
        if e.kind in LANE and self.env.mode == "pair":
            n = self.injected_n.get(e.kind, 0)
            fewer = sorted(k for k in LANE if self.injected_n.get(k, 0) < n and self.head.get(k) is not None
                           and self.head[k].status == "planned" and self.head[k].waiting is not None)
            if fewer:
                if e.giving_way is None:
                    e.giving_way = now
                if now - e.giving_way < FAIR_MAX:
                    return self._defer(e, "a waiting %s goes first (fewer so far)" % fewer[0])
        if e.kind in PATRONI:
            self.patroni_waiting = None
        # Stamped when the injection begins: a failover's kill comes first and its call returns
        # about 1.6 s later, which counted as recovery before.
        started = time.time()
        try:
            ok, note = getattr(self, "_inject_" + e.kind)(e)
        except (psycopg2.Error, OSError) as ex:
            ok, note = False, str(ex).strip().splitlines()[0] if str(ex).strip() else repr(ex)
        if not ok:
            return self._defer(e, note or "injection failed")
        e.injected = started
        if e.waiting is not None:
            note = "%s (waited %.0f s: %s)" % (note or "", e.injected - e.waiting, e.why)
        if e.attempts:
            note = "%s;%s" % (note or "", e.attempts)
        e.status = "injected"
        self.injected_n[e.kind] = self.injected_n.get(e.kind, 0) + 1
        with self.lock:
            self.since_start.add(e.kind)
        e.note = note or ""
        self.say("#%d %s injected (%s) %s" % (e.n, e.kind, json.dumps(e.arg), e.note))
        if e.kind in PATRONI:
            self.patroni_busy = e
            self.push(time.time() + PATRONI_RETRY, self._wait_patroni, e)
        elif e.hold > 0 or e.kind in ("applier_kill", "server_crash"):
            self.active[e.kind] = e
            self.push(e.injected + e.hold, self._heal, e)
        else:
            e.healed = e.settled = e.injected
            e.status = "done"
            self.last_end[e.kind] = e.injected

    def _heal(self, e, final=False):
        if self.active.get(e.kind) is not e:
            return
        ok = False
        for attempt in range(120 if final else 1):
            try:
                ok = getattr(self, "_heal_" + e.kind)(e)
            except (psycopg2.Error, OSError) as ex:
                ok = False
                e.note += " heal: %s" % (str(ex).strip().splitlines() or [repr(ex)])[0]
            if ok or not final:
                break
            time.sleep(1)
        if not ok and not final:
            self.push(time.time() + 1.0, self._heal, e)   # e.g. GRANT while the server is down
            return
        e.healed = e.settled = time.time()
        e.status = "done" if ok else "heal failed"
        del self.active[e.kind]
        self.last_end[e.kind] = e.healed
        self.say("#%d %s healed" % (e.n, e.kind))

    # --- each fault ----------------------------------------------------------------------------
    def _inject_applier_kill(self, e):
        with self.lock:
            self.applier_down = True
        self.env.harness.call("soak_applier_kill")
        return True, ""

    def _heal_applier_kill(self, e):
        return self.start_applier()

    def _inject_backend_kill(self, e):
        rows = self.sql("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'atx-applier apply%%' "
                        "ORDER BY state = 'active' DESC, pid", fetch=True)
        if not rows:
            return False, "no apply backend"
        active = [r[0] for r in rows]
        pid = active[min(len(active) - 1, int(e.arg["pick"] * len(active)))]
        os.kill(pid, signal.SIGKILL)
        return True, "pid %d" % pid

    def _inject_server_crash(self, e):
        # Patroni restarts a crashed primary by itself: a backlog of crashes waits for it to take
        # writes again rather than crashing it again in its crash recovery.
        if self.env.mode == "pair" and not self.env.writable():
            return False, "the primary does not take writes yet"
        rc = self.env.harness.call("soak_crash")[0]
        return rc == 0, "" if rc == 0 else "no running primary"

    def _heal_server_crash(self, e):
        if self.env.mode == "pair":
            return True      # Patroni starts it again itself
        return self.env.harness.call("soak_server_start")[0] == 0

    def _inject_walsender_stall(self, e):
        rc, r, _ = self.env.harness.call("soak_stall", e.arg["which"])
        return rc == 0, "pid %s" % r.get("pid", "-") if rc == 0 else "no %s walsender" % e.arg["which"]

    def _heal_walsender_stall(self, e):
        return self.env.harness.call("soak_resume")[0] == 0

    def _inject_failover(self, e):
        if e.arg.get("stall"):
            rc = self.env.harness.call("soak_stall", "physical")[0]
            if rc != 0:
                return False, "no physical walsender to stall"
            time.sleep(e.arg["stall"])
        rc, r, _ = self.env.harness.call("soak_failover")
        if rc != 0:
            self.env.harness.call("soak_resume")
            return False, "host crash failed"
        e.arg["node"] = r.get("node")
        return True, "killed %s%s" % (r.get("node"), " %.1f s into a replica stall" % e.arg["stall"]
                                          if e.arg.get("stall") else "")

    def _inject_switchover(self, e):
        rc, r, _ = self.env.harness.call("soak_switchover")
        if rc != 0:
            return False, "no leader and replica"
        e.arg["from"], e.arg["to"] = r.get("from"), r.get("to")
        return True, "%s -> %s" % (r.get("from"), r.get("to"))

    def _wait_patroni(self, e):
        """Follows a failover or switchover until a new primary takes writes; a failover's old
        primary is started again after its hold (it rejoins by pg_rewind)."""
        if e.settled is not None or self.patroni_busy is not e:
            return
        old = e.arg.get("node") or e.arg.get("from")
        leader = self.env.leader()
        if leader and leader != old and self.env.writable():
            e.healed = e.injected
            e.settled = time.time()
            e.note += "; new primary %s after %.1f s" % (leader, e.settled - e.injected)
            if e.kind == "failover":
                self.push(time.time() + e.hold, self._rejoin, e)
                if len(self.env.nodes) >= 3:
                    # A synchronous standby may be left while the old primary is down: the lane is
                    # free for the next failover or switchover once the cluster is ready for it
                    # (a second host lost before the first is back), not after the hold.
                    self._patroni_done(e)
            else:
                self._patroni_done(e)
            return
        now = time.time()
        if e.kind == "switchover" and leader == old and now - e.injected > SWITCHOVER_MAX and self.env.writable():
            e.attempts += " an attempt at %s did not switch (%s still led after %d s)" % (
                time.strftime("%H:%M:%S", time.localtime(e.injected)), old, SWITCHOVER_MAX)
            self.say("#%d switchover did not happen: %s still leads; tried again" % (e.n, old))
            e.injected, e.status, e.note = None, "planned", ""
            self.injected_n[e.kind] -= 1
            self.patroni_busy = None
            self.last_end[e.kind] = now
            e.waiting, e.why = now, "its last attempt did not switch"
            self.push(now + RETRY, self._inject, e)
            return
        if time.time() - e.injected > 120:
            e.note += "; no new primary within 120 s"
            e.settled = time.time()
            if e.kind == "failover":
                self._rejoin(e)
            else:
                self._patroni_done(e)
            return
        self.push(time.time() + PATRONI_RETRY, self._wait_patroni, e)

    def _rejoin(self, e):
        if e.arg.get("rejoined"):
            return
        e.arg["rejoined"] = True
        self.rewinding[e.arg["node"]] = time.time()
        self.env.harness.call("soak_node_start", e.arg["node"])
        e.note += "; %s restarted" % e.arg["node"]
        self._patroni_done(e)

    def _patroni_done(self, e):
        if self.patroni_busy is not e:
            return   # done already (the lane was freed before the old primary's restart)
        if e.healed is None:
            e.healed = e.injected
        if e.settled is None:
            e.settled = time.time()
        e.status = "done"
        self.patroni_busy = None
        self.last_end[e.kind] = e.settled
        self.say("#%d %s done: %s" % (e.n, e.kind, e.note))

    def _rejoined(self):
        """Forgets the failovers' old primaries that stream again (the supervisor does too, once a
        second; a waiting failover or switchover looks at each try)."""
        for member, since in list(self.rewinding.items()):
            if self.env.streams(member):
                self.rewinding.pop(member, None)
                self.say("%s streams again, %.1f s after its restart" % (member, time.time() - since))

    def _settle_patroni(self, e):
        """At the end: the failover or switchover in progress finished now, the old primary back."""
        deadline = time.time() + 120
        while e.settled is None and time.time() < deadline:
            self._wait_patroni(e)   # sets settled once a new primary takes writes
            if e.settled is None:
                time.sleep(0.5)
        if e.kind == "failover" and not e.arg.get("rejoined"):
            self._rejoin(e)
        elif self.patroni_busy is e:
            self._patroni_done(e)

    def _inject_partition(self, e):
        e.arg["pair"] = self.env.leader_index()
        rc = self.env.harness.call("soak_partition", e.arg["pair"])[0]
        return rc == 0, "applier cut from %s" % (self.env.leader() or "the server")

    def _heal_partition(self, e):
        return self.env.harness.call("soak_heal", e.arg["pair"])[0] == 0

    def _inject_state_full(self, e):
        rc, r, _ = self.env.harness.call("soak_fill")
        return rc == 0, "%s kB left" % r.get("free_kb", "?")

    def _heal_state_full(self, e):
        return self.env.harness.call("soak_unfill")[0] == 0

    def _inject_privilege_revoke(self, e):
        self.sql("REVOKE INSERT ON soak_applied, soak_audited FROM %s" % self.env.role(e.arg["role"]))
        with self.lock:
            self.revoked_last[e.arg["role"]] = e
        return True, self.env.role(e.arg["role"])

    def _heal_privilege_revoke(self, e):
        self.sql("GRANT INSERT ON soak_applied, soak_audited TO %s" % self.env.role(e.arg["role"]))
        return True

    # --- watchers ------------------------------------------------------------------------------
    def _supervise(self):
        """What a service manager does: an applier that exited by itself is started again (and
        counted: the report lists each exit with the faults in progress then)."""
        with self.lock:
            down = self.applier_down
        if not down:
            r = self.env.harness.call("soak_applier_reap")[1]
            if r.get("state") in ("exited", "none"):
                with self.lock:
                    faults = ",".join(sorted(self.since_start | set(self.active))) or "none"
                self.applier_exits.append((time.time(), r.get("rc"), faults, r.get("why", "")))
                self.say("applier exited by itself (status %s; faults since it started: %s); restarting"
                         % (r.get("rc"), faults))
                self.start_applier()
        if self.env.mode == "pair":
            self._replica_doctor()
        self._grants_doctor()
        self.push(time.time() + 1.0, self._supervise)

    def _grants_doctor(self):
        """The GRANT that heals a revoke commits on the primary without waiting for the standby
        (the replica's stream may be stopped then), so a failover soon after can lose it: the role
        then stays revoked on the new primary, for good (seed 2025, pair: 130 dead letters 42501
        after the heal). Once no revoke is in progress, each role revoked before is checked on the
        current primary and granted again if needed; the revoke's window then extends to that
        moment (the checker explains its dead letters by it), and the note says so."""
        with self.lock:
            if "privilege_revoke" in self.active or not self.revoked_last:
                return
            last = dict(self.revoked_last)
        roles = {i: self.env.role(i) for i in last}
        try:
            rows = self.sql("SELECT r, has_table_privilege(r, 'soak_applied', 'INSERT') AND "
                            "has_table_privilege(r, 'soak_audited', 'INSERT') FROM unnest(%s::text[]) r",
                            (list(roles.values()),), fetch=True)
        except psycopg2.Error:
            return  # the primary is moving: next second
        lost = [r for r, ok in rows if not ok]
        for i, role in roles.items():
            if role not in lost:
                continue
            try:
                self.sql("GRANT INSERT ON soak_applied, soak_audited TO %s" % role)
            except psycopg2.Error:
                return
            e = last[i]
            e.healed = e.settled = time.time()
            if "granted again" not in e.note:
                e.note += "; its GRANT was lost (a failover to a replica without it): granted again"
            self.regrants += 1
            self.say("#%d privilege_revoke: the GRANT of %s was lost; granted again" % (e.n, role))

    def _replica_doctor(self):
        """What an operator does for a replica that streams no more (Patroni 3.0 starts a node whose
        WAL went past the new primary's fork point as a replica that waits forever: "requested
        starting point ... is not in this server's history"): patronictl reinit. Counted. A replica
        being rebuilt is left to it; meanwhile a CHECKPOINT on the primary every few seconds ends
        the one its base backup waits for (pg_basebackup asks for a spread one by default, which
        kept a rebuild "creating replica" for more than 45 s, and the doctor then started it again)."""
        state = self.env.replicas_streaming() if self.patroni_busy is None else None
        if not state:
            self.replica_down_since = {}
            return
        now = time.time()
        rebuilding = [m for m, streaming in state.items() if streaming is None]
        if rebuilding and now - self.rebuild_checkpoint >= REBUILD_CHECKPOINT:
            self.rebuild_checkpoint = now
            try:
                self.sql("CHECKPOINT")
            except psycopg2.Error:
                pass
        for member, streaming in state.items():
            if streaming or streaming is None:
                self.replica_down_since.pop(member, None)
                since = self.rewinding.pop(member, None)
                if streaming and since is not None:
                    self.say("%s streams again, %.1f s after its restart" % (member, now - since))
                continue
            since = self.replica_down_since.setdefault(member, now)
            if now - since >= STUCK_REPLICA:
                self.say("replica %s has not streamed for %.0f s: patronictl reinit" % (member, now - since))
                self.env.harness.call("soak_reinit", member)
                self.reinits.append((now, member, "not streaming for %d s" % STUCK_REPLICA))
                self.replica_down_since.pop(member, None)

    def _sample_rss(self):
        with self.lock:
            pid = self.applier_pid
        if pid:
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.rss.append((time.time(), pid, int(line.split()[1])))
            except OSError:
                pass
        self.push(time.time() + 2.0, self._sample_rss)
