"""The attackers' clients: one connection per planned session, its units run in order."""
import threading
import time

import psycopg2
import psycopg2.extensions

from fz_grammar import unit_sql


class UnitRun:
    __slots__ = ("session", "unit", "t0", "t1", "pid", "results")

    def __init__(self, session, unit):
        self.session, self.unit = session, unit
        self.t0 = self.t1 = None
        self.pid = None
        self.results = []       # (statement head, 'ok' | sqlstate, message, first value)


class AttackerSession(threading.Thread):
    """Runs one planned session. A statement that runs past cap_s is cancelled (the fuzzer's own
    bound on its clients, not a check); a broken connection is replaced for the next unit."""

    def __init__(self, cluster, idx, session, rls_functions, cap_s, stop_ev):
        super().__init__(name=f"attacker-{idx}", daemon=True)
        self.cluster, self.idx, self.session = cluster, idx, session
        self.rls_functions, self.cap_s, self.stop_ev = rls_functions, cap_s, stop_ev
        self.runs = []
        self.notifications = []     # (t, channel, payload) heard while LISTENing
        self.pids = set()
        self.cur_pid = None
        self.done_at = None
        self.listening = False
        self.conn = None

    def _connect(self):
        for _ in range(50):
            if self.stop_ev.is_set():
                return None
            try:
                c = self.cluster.connect(self.session.login, app=f"fz-attacker-{self.idx}")
                with c.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    self.cur_pid = cur.fetchone()[0]
                    self.pids.add(self.cur_pid)
                if self.listening:
                    with c.cursor() as cur:
                        cur.execute("LISTEN atx_dead_letter")
                return c
            except psycopg2.Error:
                time.sleep(0.3)
        return None

    def _drain(self):
        c = self.conn
        if c is None or c.closed:
            return
        try:
            c.poll()
        except psycopg2.Error:
            return
        while c.notifies:
            n = c.notifies.pop(0)
            self.notifications.append((time.time(), n.channel, n.payload))

    def run(self):
        self.conn = self._connect()
        for j, u in enumerate(self.session.units):
            if self.stop_ev.wait(u.gap) or self.conn is None:
                break
            ur = UnitRun(self.idx, j)
            ur.t0 = time.time()
            ur.pid = self.cur_pid
            for stmt in unit_sql(u, self.rls_functions):
                ur.results.append(self._execute(stmt))
                if self.conn is None:
                    break
            if u.kind == "listen":
                self.listening = True
            self._end_transaction()
            ur.t1 = time.time()
            self.runs.append(ur)
            self._drain()
            if self.conn is None:
                self.conn = self._connect()
        self.done_at = time.time()
        while self.listening and not self.stop_ev.is_set():
            self._drain()
            self.stop_ev.wait(0.2)
        self._drain()
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass

    def _execute(self, stmt):
        head = stmt[:120]
        timer = threading.Timer(self.cap_s, self._cancel)
        timer.start()
        try:
            with self.conn.cursor() as cur:
                cur.execute(stmt)
                first = None
                if cur.description:
                    row = cur.fetchone()
                    first = str(row[0])[:200] if row else None
                return (head, "ok", None, first)
        except psycopg2.Error as e:
            if self.conn.closed or e.pgcode is None:
                self.conn = None if self.conn.closed else self.conn
                return (head, "lost", str(e).strip()[:300], None)
            return (head, e.pgcode, (e.diag.message_primary or "")[:300], None)
        finally:
            timer.cancel()

    def _cancel(self):
        try:
            if self.conn is not None and not self.conn.closed:
                self.conn.cancel()
        except psycopg2.Error:
            pass

    def _end_transaction(self):
        c = self.conn
        if c is None or c.closed:
            return
        try:
            if c.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                with c.cursor() as cur:
                    cur.execute("ROLLBACK")
        except psycopg2.Error:
            pass
