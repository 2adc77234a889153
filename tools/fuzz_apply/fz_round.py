"""A live environment (a copy of the template cluster, the applier, the victim, the observer) and
the rounds played in it."""
import re
import shutil
import threading
import time
import datetime

import psycopg2

import fz_checks
import fz_verdicts as V
from fz_attack import AttackerSession
from fz_cluster import APPLIER_ROLE, Applier
from fz_poller import Poller
from fz_victim import Victim
from fz_wal import current_lsn, lsn_int

TAIL_S = 8.0
GATE = re.compile(r"fz_att\.gate WHERE g = (\d+)")


class Env:
    def __init__(self, template, name, applier_bin, applier_args, bounds, seed, log):
        self.template, self.name = template, name
        self.applier_bin, self.applier_args = applier_bin, applier_args
        self.bounds, self.seed, self.log = bounds, seed, log
        self.cluster = self.applier = self.victim = self.poller = None
        self.baseline = {}
        self.rls_functions = []
        self.log_offset = 0

    def start(self, warmup_s):
        t0 = time.time()
        self.cluster = self.template.copy(self.name)
        self.applier = Applier(self.applier_bin, self.cluster, self.applier_args)
        self.applier.start()
        if not self.applier.wait_streaming():
            raise RuntimeError(f"the applier did not start streaming (log: {self.applier.log_path})")
        # Issue row 14 / invariant 5: whatever PUBLIC may execute in schema atx that takes a table.
        self.rls_functions = [r[0] for r in self.cluster.sql(
            "SELECT p.oid::regproc::text FROM pg_proc p WHERE p.pronamespace = 'atx'::regnamespace "
            "AND p.proargtypes[0] = 'regclass'::regtype AND p.pronargs - p.pronargdefaults <= 1 "
            "AND has_function_privilege('fz_mal1', p.oid, 'EXECUTE') ORDER BY 1")]
        lsn0 = self.cluster.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0]
        self.poller = Poller(self.cluster, lsn0, self.log)
        self.poller.start()
        self.victim = Victim(self.cluster, self.seed, self.log)
        tw = time.time()
        self.victim.start()
        time.sleep(warmup_s)
        self.victim.paused = True
        time.sleep(0.3)
        warm = self.victim.snapshot(tw)
        self._settle_victim(warm, time.time())
        with self.poller.lock:
            done = sum(1 for e in warm if e.id in self.poller.msgs and self.poller.msgs[e.id].final_at)
        if done < len(warm) / 2:
            tail = self.applier.log_since(max(0, self.applier.log_size() - 1500)).decode("utf-8", "replace")
            raise RuntimeError(f"only {done} of the victim's {len(warm)} warm-up messages were handled: the applier "
                               f"does not work with this server's pg_atx? Its log ends:\n{tail}")
        self.baseline = fz_checks.baseline(self.cluster, self.victim.snapshot(tw))
        self.victim.paused = False
        self.log_offset = self.applier.log_size()
        self.log(f"{self.name}: cluster, applier and victim up in {time.time() - t0:.1f} s "
                 f"(baseline from {len(self.victim.snapshot(tw))} victim messages)")

    def _settle_victim(self, emits, t_pause):
        """Until the victim's messages are final, or past their bound."""
        ids = {e.id for e in emits if e.id}
        deadline = t_pause + self.bounds.victim() + 2
        while time.time() < deadline:
            with self.poller.lock:
                if not any(i in self.poller.pending or i not in self.poller.msgs for i in ids):
                    return
            time.sleep(0.3)

    def stop(self, keep=False):
        # Quickly, also when stopped from outside: the cluster goes first (it ends every wait),
        # then the applier.
        for part in (self.victim, self.poller):
            if part is not None:
                part.stop()
        if self.cluster is not None:
            self.cluster.stop("immediate")
        if self.applier is not None:
            self.applier.stop(grace_s=5)
        if self.cluster is not None and not keep:
            shutil.rmtree(self.cluster.dir, ignore_errors=True)

    # ------------------------------------------------------------------------------------------
    def run_round(self, plan, round_no, window_cap_s=40.0, early_stop=None):
        """Plays a plan against the running environment; returns the RoundResult for the checks.
        early_stop(result) may end the settling early (shrinking: the failure already showed)."""
        b = self.bounds
        with _su(self.cluster) as cur:
            lsn0 = current_lsn(cur)
        t0 = time.time()
        self.poller.watch_lsn, self.poller.watch_time = lsn0, t0
        res = fz_checks.RoundResult(round_no, plan, t0, lsn0, b)
        self.poller.round_start = t0
        self.poller.poison, self.poller.rogue = plan.poison, plan.rogue
        self.victim.rogue = plan.rogue
        kills0 = len(self.poller.kills)
        stop_ev = threading.Event()
        cap = b.message() + 5
        sessions = [AttackerSession(self.cluster, i, s, self.rls_functions, cap, stop_ev)
                    for i, s in enumerate(plan.sessions)]
        for s in sessions:
            s.start()
        while time.time() < t0 + window_cap_s and any(s.done_at is None for s in sessions):
            time.sleep(0.1)
        res.t_emit_end = time.time()
        with _su(self.cluster) as cur:
            self.poller.wait_scanned(current_lsn(cur), timeout=30)
        # Settle: the attackers' messages final (or past their bounds), with the victim writing on,
        # at least TAIL_S: the victim's statements after an attack are where a leak shows.
        self._settle(res, sessions, early_stop)
        while time.time() < res.t_emit_end + TAIL_S and not res.stopped_early:
            if early_stop is not None and early_stop(self, res):
                res.stopped_early = True
            time.sleep(0.2)
        self.victim.paused = True
        res.t_pause = time.time()
        if not res.stopped_early:
            self._settle(res, sessions, early_stop, victim_too=True)
            self._operator(res, sessions)
        # Samples for the slot and horizon checks, then everything the checks read.
        time.sleep(max(b.slot_slack(), b.horizon_slack()) if not res.stopped_early else 0.5)
        if not res.stopped_early:
            self._rescue(res)
        stop_ev.set()
        for s in sessions:
            s.join(timeout=5)
        self.poller.poison = self.poller.rogue = self.victim.rogue = False
        res.t_end = time.time()
        res.kills = self.poller.kills[kills0:]
        res.runs_seen = self.poller.runs_seen
        self._collect(res, sessions)
        self.victim.paused = False
        return res

    def _attribute(self, res, sessions):
        """Which messages belong to the round, and to which planned unit."""
        attacker_pids = {}
        for s in sessions:
            for ur in s.runs:
                if ur.pid is not None:
                    attacker_pids.setdefault(ur.pid, []).append(ur)
        victim_ids = {e.id for e in self.victim.snapshot(res.t0, res.t_pause) if e.id}
        victim_pids = self.victim.all_pids()
        msgs = self.poller.messages_since(res.lsn0)
        by_id = {m.id: m for m in msgs}
        out = []
        for m in msgs:
            root, hops = m, 0
            while root.depth > 0 and root.lane in by_id and hops < 20:
                root, hops = by_id[root.lane], hops + 1
            if root.depth > 0:
                continue              # a nested message whose parent is older than the round
            pid = V.lane_pid(root.lane)
            if pid in victim_pids:
                if root.id not in victim_ids and not res.t0 <= root.emitted < (res.t_pause or float("inf")):
                    continue
                m.origin = ("victim", None, None)
            elif pid in attacker_pids:
                unit = None
                for ur in attacker_pids[pid]:
                    if ur.t0 - 0.5 <= root.emitted <= (ur.t1 or time.time()) + 0.5:
                        unit = ur
                if unit is None:
                    continue
                m.origin = ("attacker", unit.session, unit.unit)
            else:
                continue
            m.round = res.round_no
            out.append(m)
        return out

    def _settle(self, res, sessions, early_stop, victim_too=False):
        b = self.bounds
        # However long the lanes queue behind each other, a round ends: what is open by then is
        # reported as such.
        cap = time.time() + (b.victim() + 2 if victim_too else b.message() + 5)
        while time.time() < cap:
            time.sleep(0.4)
            res.messages = self._attribute(res, sessions)
            now = time.time()
            mine = [m for m in res.messages if victim_too or m.origin[0] == "attacker"]
            crashes = len(self.poller.kills)
            deadlines = fz_checks.deadlines(res.messages, b, self.poller.kills, self.poller.runs_seen)
            open_ = [m for m in mine if m.final_at is None]
            if early_stop is not None and early_stop(self, res):
                res.stopped_early = True
                return
            if not open_ and all(s.done_at is not None for s in sessions):
                if victim_too:
                    vids = {e.id for e in self.victim.snapshot(res.t0, res.t_pause) if e.id}
                    with self.poller.lock:
                        if any(i not in self.poller.msgs for i in vids):
                            if now < res.t_pause + b.victim():
                                continue
                return
            latest = max([deadlines.get(m.id, now) for m in open_] + [now - 1])
            if victim_too:
                latest = max(latest, res.t_pause + b.victim() + 1)
            if now > latest + 0.5 and crashes == len(self.poller.kills):
                return

    def _operator(self, res, sessions):
        """Issue row 11: the operator fixes the cause of a dead letter (opens its gate) once the
        prune has passed it, and retries it as the applier role."""
        b = self.bounds
        todo = []
        for m in res.messages:
            if m.origin[0] == "attacker" and m.status == "dead" and m.sqlstate == "22012":
                g = GATE.search(m.statement or "")
                if g:
                    todo.append((m, int(g.group(1))))
        if not todo:
            return
        deadline = time.time() + b.horizon_slack() + 5
        last = max(lsn_int(m.lsn) for m, _ in todo)
        while time.time() < deadline:
            with self.poller.lock:
                h = self.poller.slot[-1][2] if self.poller.slot else 0
            if h > last:
                break
            time.sleep(0.3)
        with _su(self.cluster) as cur:
            lsn_before = current_lsn(cur)
        conn = self.cluster.connect(APPLIER_ROLE, app="fz-operator")
        try:
            with conn.cursor() as cur:
                for m, g in todo:
                    self.cluster.sql("INSERT INTO fz_att.gate VALUES (%s)", (g,))
                    try:
                        cur.execute("SELECT id FROM atx.dead_letter WHERE message_id = %s", (m.id,))
                        row = cur.fetchone()
                        if row is None:
                            res.retries.append((m.id, "no dead letter"))
                            continue
                        cur.execute("SELECT status, sqlstate FROM atx.retry_dead_letter(%s)", (row[0],))
                        res.retries.append((m.id, " ".join(str(x) for x in cur.fetchone() if x)))
                    except psycopg2.Error as e:
                        res.retries.append((m.id, f"refused {e.pgcode}: {e.diag.message_primary}"))
        finally:
            conn.close()
        # The retried parents emit their nested messages again (same ids): let them be handled.
        with _su(self.cluster) as cur:
            lsn = current_lsn(cur)
        self.poller.wait_scanned(lsn)
        end = time.time() + 10
        while time.time() < end:
            if all(m.final_at for m in self.poller.messages_since(lsn_before)):
                break
            time.sleep(0.3)
        time.sleep(1.0)

    def _rescue(self, res, most=3):
        """The operator dead-letters (by LSN) the oldest messages that are still open past their
        bounds: that must always be possible (issue 21, invariant 2)."""
        now = time.time()
        dl = fz_checks.deadlines(res.messages, self.bounds, self.poller.kills, self.poller.runs_seen)
        overdue = sorted((m for m in res.messages if m.final_at is None and now > dl[m.id]),
                         key=lambda m: lsn_int(m.lsn))[:most]
        if not overdue:
            return
        conn = self.cluster.connect(APPLIER_ROLE, app="fz-operator")
        try:
            with conn.cursor() as cur:
                for m in overdue:
                    try:
                        cur.execute(V.OPERATOR_DEAD_LETTER_SQL, (m.lsn,))
                        res.rescues.append((m, f"ok {cur.fetchone()[0]}"))
                    except psycopg2.Error as e:
                        res.rescues.append((m, f"refused {e.pgcode}: {(e.diag.message_primary or '')[:200]}"))
        finally:
            conn.close()

    def _collect(self, res, sessions):
        with _su(self.cluster) as cur:
            self.poller.wait_scanned(current_lsn(cur), timeout=30)
        res.messages = self._attribute(res, sessions)
        res.victim = self.victim.snapshot(res.t0, res.t_pause)
        res.notifications = [n for s in sessions for n in s.notifications]
        res.attacker_runs = [ur for s in sessions for ur in s.runs]
        with self.poller.lock:
            everything, kills = list(self.poller.order), list(self.poller.kills)
        mine = {m.id for m in res.messages}
        dl = fz_checks.deadlines(everything, self.bounds, kills, self.poller.runs_seen)
        res.earlier = [(m, dl[m.id]) for m in everything
                       if m.id not in mine and (m.final_at is None or m.final_at >= res.t0)]
        with self.poller.lock:
            res.slot = [x for x in self.poller.slot if x[0] >= res.t0]
            res.rss = [x for x in self.poller.rss if x[0] >= res.t0]
            res.rogue_hits = [x for x in self.poller.rogue_hits if x[0] >= res.t0]
        size = self.applier.log_size()
        res.applier_log = self.applier.log_since(self.log_offset)
        self.log_offset = size
        _own_share_waits(res)
        res.applier_alive = self.applier.alive()
        res.applier_stderr = self.applier.stderr_text()
        res.db = fz_checks.read_state(self.cluster, res)


_DEFERRED = re.compile(rb'^(\S+) .*event=top_level_run_deferred message_id=(\S+) .*reason="no background worker share free for its principal"')
_TOP_RUN = re.compile(rb'^(\S+) .*event=top_level_run message_id=(\S+) ')


def _log_time(ts):
    return datetime.datetime.strptime(ts.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def _own_share_waits(res):
    """A non-atomic message waits for its principal's background worker share (the applier logs
    event=top_level_run_deferred): that is waiting for its own role's earlier work, which
    invariant 1 does not count (fz_checks.deadlines); invariant 4 watches the others. Its run
    counts from its last event=top_level_run: an earlier one was cut short (a server restart
    ended it, or freed the share at the moment it went down: the CI run of seed 21, round 3, a
    chain link whose first run began 0.1 s after the crash-killer's kill, then waited for the
    restart and the suspects). One still waiting when the round ends is not judged (its run
    starts at the round's end at the earliest: counting from the victim's pause, as before, judged
    a chain of 13 that queued for one share 27 s after the pause, round 24 of seed 2614)."""
    deferred, started = {}, {}
    for line in res.applier_log.splitlines():
        m = _DEFERRED.match(line)
        if m:
            deferred[m.group(2).decode()] = _log_time(m.group(1))
            continue
        m = _TOP_RUN.match(line)
        if m:
            started[m.group(2).decode()] = _log_time(m.group(1))
    for msg in res.messages:
        run, waited = started.get(msg.id), deferred.get(msg.id)
        if waited is not None and (run is None or waited > run):
            at = res.t_end
        elif run is not None:
            at = run
        else:
            continue
        msg.run_start = at if msg.run_start is None else max(msg.run_start, at)


class _su:
    """A short superuser cursor: `with _su(cluster) as cur:`."""

    def __init__(self, cluster):
        self.cluster = cluster

    def __enter__(self):
        for _ in range(100):
            try:
                self.conn = self.cluster.connect(app="fz-round")
                break
            except psycopg2.Error:
                time.sleep(0.3)
        self.cur = self.conn.cursor()
        return self.cur

    def __exit__(self, *exc):
        self.conn.close()
        return False
