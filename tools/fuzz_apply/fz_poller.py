"""The observer: what became of every message, the slot, the apply backends' memory.

One thread, a few times a second, as the superuser (and as the applier role where it plays the
operator): reads the new messages from the WAL, asks atx.applied / atx.dead_letter /
atx.apply_horizon which of the pending ones are final, samples the slot's confirmed position and
the horizon, reads the resident memory of idle apply backends from /proc. When the round says so
it also plays two outsiders: the crash-killer (SIGKILLs a backend whose message marked itself
'fz-poison', as an out-of-memory kill would) and the rogue operator (a member of atx_applier that
dead-letters the victim's waiting atx_exec with a text of its choosing, issue row 12).
"""
import os
import signal
import threading
import time
import traceback

import psycopg2

import fz_verdicts as V
from fz_cluster import APPLIER_ROLE, proc_memory_kb
from fz_sql import CANARY
from fz_victim import ROGUE_MARK
from fz_wal import WalScanner, lsn_int

INTERVAL_S = 0.4
PHISH = ('password authentication failed for user "fz_victim" ' + CANARY +
         ': re-enter it at https://evil.example/login')


class Poller:
    """Two threads: one reads the WAL (which can be slow when attackers write gigabytes), one
    watches what the server records (atx.applied, atx.dead_letter, the horizon, the slot) a few
    times a second. A message's final time is when the watcher first saw it final, whenever the
    reader found the message itself."""

    def __init__(self, cluster, start_lsn, log):
        self.cluster = cluster
        self.log = log
        self.scanner = WalScanner(start_lsn)
        self.lock = threading.Lock()
        self.msgs = {}              # id -> Msg
        self.order = []             # Msgs by LSN
        self.pending = set()
        self.seen_final = {}        # id -> (status, sqlstate, error, first seen)
        self.run_start = {}         # id -> when its (last) run began: atx.apply_activity() when seen
                                    # running, else its record's handled_at (its batch began; its run
                                    # was short)
        self.runs_seen = {}         # id -> every distinct started_at the registry showed (diagnostics)
        self.watch_lsn = start_lsn  # atx.applied records from here on are watched
        self.watch_time = time.time()
        self.slot = []              # (t, confirmed, horizon) as ints
        self.rss = []               # (t, pid, application_name, private kB, VmRSS kB)
        self.kills = []             # (t, pid)
        self.rogue_hits = []        # (t, message id, result)
        self.poison = False
        self.rogue = False
        self.round_start = 0.0
        self.errors = 0
        self.stop_ev = threading.Event()
        self._conns = {}
        self._last_rss = 0.0
        self.threads = [threading.Thread(target=self._loop, args=(self.watch, "watch", INTERVAL_S), daemon=True),
                        threading.Thread(target=self._loop, args=(self.read_wal, "wal", 0.3), daemon=True)]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_ev.set()
        deadline = time.time() + 3
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.time()))
        for c in self._conns.values():
            try:
                c.close()
            except psycopg2.Error:
                pass

    def _conn(self, name, role="postgres"):
        c = self._conns.get(name)
        if c is None or c.closed:
            c = self.cluster.connect(role, app="fz-poller")
            self._conns[name] = c
        return c

    def _loop(self, fn, name, interval):
        while not self.stop_ev.is_set():
            t0 = time.time()
            try:
                fn()
            except Exception as e:      # noqa: BLE001 - the observer must outlive anything
                self.errors += 1
                if not isinstance(e, psycopg2.Error) and self.errors < 5:
                    self.log(f"  poller: {type(e).__name__}: {e}\n{traceback.format_exc()}")
                c = self._conns.pop(name, None)
                if c is not None:
                    try:
                        c.close()
                    except psycopg2.Error:
                        pass
                self.stop_ev.wait(0.3)
            self.stop_ev.wait(max(0.02, interval - (time.time() - t0)))

    def read_wal(self):
        with self._conn("wal").cursor() as cur:
            new = self.scanner.scan(cur, time.time())
        with self.lock:
            for m in new:
                if m.id in self.msgs:
                    continue            # a retried parent writes its nested messages again
                self.msgs[m.id] = m
                self.order.append(m)
                self.pending.add(m.id)
            self._resolve()

    def _resolve(self):
        """Pending messages the watcher saw final (under the lock)."""
        for mid in [i for i in self.pending if i in self.seen_final]:
            m = self.msgs[mid]
            m.status, m.sqlstate, m.error, m.final_at = self.seen_final[mid]
            m.run_start = self.run_start.get(mid)
            self.pending.discard(mid)

    def watch(self):
        with self._conn("watch").cursor() as cur:
            now = time.time()
            if self.poison:
                self._kill_poison(cur, now)
            cur.execute("SELECT message_id::text, status, extract(epoch FROM handled_at)::float8 FROM atx.applied "
                        "WHERE lsn >= %s::pg_lsn AND status IN ('applied', 'duplicate', 'dead', 'cancelled')",
                        (self.watch_lsn,))
            applied = cur.fetchall()
            # What runs now and since when (the server's apply registry): a message waits for its
            # lane and its principal's budget before it runs, and its bound counts from its run.
            cur.execute("SELECT message_id::text, extract(epoch FROM started_at)::float8 FROM atx.apply_activity() "
                        "WHERE message_id IS NOT NULL AND started_at IS NOT NULL")
            running = cur.fetchall()
            cur.execute("SELECT message_id::text, sqlstate, left(error, 400), extract(epoch FROM first_failed_at)::float8 "
                        "FROM atx.dead_letter WHERE dead_at >= to_timestamp(%s)", (self.watch_time - 300,))
            dead = cur.fetchall()
            # A parked message is handled for the slot (the horizon passes it) but runs later,
            # from its record's copy: below the horizon it is not final until that run is.
            cur.execute("SELECT message_id::text FROM atx.applied WHERE status = 'parked' AND lsn >= %s::pg_lsn",
                        (self.watch_lsn,))
            parked = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT (SELECT lsn::text FROM atx.apply_horizon), "
                        "(SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                        "WHERE slot_name = atx.slot_name())")
            horizon, confirmed = cur.fetchone()
            now = time.time()
            h = lsn_int(horizon) if horizon else 0
            with self.lock:
                # A run cut short by a server restart (a kill between its start and this one) is
                # run again, as a suspect, once the suspects ahead of it are done (one at a time per
                # database: the crash's attribution): that wait is the applier's, so the new run
                # counts. Any other later run (a retry) does not: retries are in the bound.
                for mid, started in running:
                    seen = self.runs_seen.setdefault(mid, [])
                    if started not in seen:
                        seen.append(started)
                    first = self.run_start.get(mid)
                    if first is None or (started > first and any(first <= k[0] <= started for k in self.kills)):
                        self.run_start[mid] = started
                for mid, status, handled in applied:
                    if mid not in self.seen_final:
                        self.seen_final[mid] = (status, None, None, now)
                    self.run_start.setdefault(mid, handled)
                for mid, sqlstate, error, first_failed in dead:
                    # When its first run failed, as handled_at above: a message dead-lettered
                    # after a run too short for the registry to show (one cancelled for its gone
                    # waiter) may have waited for its principal's sessions, and its record may be
                    # pruned before it is read. The first failure, so that retries stay in the bound.
                    self.run_start.setdefault(mid, first_failed)
                    first = self.seen_final.get(mid, (None, None, None, now))[3]
                    self.seen_final[mid] = ("dead", sqlstate, error, first)
                    m = self.msgs.get(mid)
                    if m is not None and m.final_at is not None and m.sqlstate is None:
                        m.status, m.sqlstate, m.error = "dead", sqlstate, error
                self.slot.append((now, lsn_int(confirmed) if confirmed else 0, h))
                self._resolve()
                for mid in list(self.pending):
                    m = self.msgs[mid]
                    if lsn_int(m.lsn) < h and mid not in parked:
                        # Its run, if the registry showed it, bounds it as for the others: a
                        # message that waited for its principal's share is not late for that.
                        m.status, m.final_at, m.run_start = "pruned", now, self.run_start.get(mid)
                        self.pending.discard(mid)
            if now - self._last_rss >= 1.0:
                self._last_rss = now
                self._sample_rss(cur, now)
        if self.rogue:
            self._play_rogue(now)

    def _sample_rss(self, cur, now):
        cur.execute(V.APPLY_BACKENDS_SQL, (APPLIER_ROLE,))
        for pid, state, app in cur.fetchall():
            if state != "idle":
                continue          # retained memory is what an idle session still holds
            mem = proc_memory_kb(pid)
            if mem and "VmRSS" in mem:
                private = mem["VmRSS"] - mem.get("RssShmem", 0)
                with self.lock:
                    self.rss.append((now, pid, app, private, mem["VmRSS"]))

    MAX_KILLS = 8       # per round: a message still re-run after that many losses is reported anyway

    def _kill_poison(self, cur, now):
        with self.lock:
            if len([k for k in self.kills if k[0] >= self.round_start]) >= self.MAX_KILLS:
                return
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'fz-poison'")
        for (pid,) in cur.fetchall():
            try:
                os.kill(pid, signal.SIGKILL)
                with self.lock:
                    self.kills.append((now, pid))
                self.log(f"  crash-killer: SIGKILL apply backend {pid} (it ran a message marked fz-poison)")
            except OSError:
                pass

    def _play_rogue(self, now):
        with self.lock:
            targets = [m for m in self.order[-400:] if m.id in self.pending and m.waited and m.role == "fz_victim"
                       and ROGUE_MARK in (m.statement or "") and not any(h[1] == m.id for h in self.rogue_hits)]
        if not targets:
            return
        app = self._conn("rogue", APPLIER_ROLE)
        for m in targets:
            with app.cursor() as cur:
                try:
                    cur.execute("SELECT atx.dead_letter_message(%s::pg_lsn, '28P01', %s, 1, now())::text",
                                (m.lsn, PHISH))
                    res = cur.fetchone()[0]
                except psycopg2.Error as e:
                    res = f"refused {e.pgcode}"
            with self.lock:
                self.rogue_hits.append((now, m.id, res))

    # ---- views for the round
    def messages_since(self, lsn_from):
        lo = lsn_int(lsn_from)
        with self.lock:
            return [m for m in self.order if lsn_int(m.lsn) >= lo]

    def wait_scanned(self, lsn, timeout=10):
        """Until the WAL up to lsn was read."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if lsn_int(self.scanner.next_lsn) >= lsn_int(lsn):
                return True
            time.sleep(0.1)
        return False
