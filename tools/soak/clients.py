"""The soak's clients: one thread, one role and one connection at a time each, calling pg_atx in
every way a user does, and writing each call with its outcome to the history (a JSON line per call,
in the client's own order).

Outcomes: ack (the call returned: the message is durable), error (the server refused it before
writing anything, e.g. 42501 while a privilege is revoked), unknown (the connection broke, the
server shut down, or an atx_exec caller stopped waiting: the message may or may not land)."""
import json
import random
import threading
import time

import psycopg2

# Weights of the kinds of call (every client makes every kind, in its own seeded order).
KINDS = [
    ("log", 14),            # atx_log in autocommit
    ("log_commit", 12),     # atx_log in a transaction that commits (with a plain control insert)
    ("log_rollback", 12),   # atx_log in a transaction that rolls back
    ("keyed", 14),          # atx_log_keyed, keys repeated (a retrying caller; a key other roles use)
    ("exec", 14),           # atx_exec: waits, returns the row's id
    ("nested", 8),          # the message emits two more (soak_nested)
    ("nested_exec", 5),     # the message waits for a nested atx_exec (soak_nested_exec)
    ("audit_commit", 8),    # the audit trigger in a transaction that commits
    ("audit_rollback", 8),  # ... that rolls back
    ("nonatomic", 1),       # needs a top-level statement (soak_nonatomic): at most once
]
# Messages each kind makes (subs); audit rows are counted in atx.audit_log instead.
SUBS = {"nested": (0, 1, 2), "nested_exec": (0, 1), "nonatomic": (0, 1)}
ID_BASE = 100_000_000   # call_id = client * ID_BASE + seq

LOG_SQL = "INSERT INTO soak_applied (call_id, sub) VALUES ($1, 0)"

# SQLSTATEs after which the message may have been written or applied all the same.
UNKNOWN_CLASSES = ("08", "57P", "53", "58", "XX", "40")
EXEC_ABANDONED = ("55P03", "57014")   # atx_exec stopped waiting (exec_timeout, cancel)


def outcome_of(err, kind):
    code = getattr(err, "pgcode", None) or ""
    if not code or code.startswith(UNKNOWN_CLASSES):
        return "unknown"
    if kind in ("exec",) and code in EXEC_ABANDONED:
        return "unknown"
    return "error"


class Client(threading.Thread):
    def __init__(self, n, seed, dsn, role, history_path, stop, pace):
        super().__init__(name="client%d" % n, daemon=True)
        self.n = n
        self.rng = random.Random("%s/client/%d" % (seed, n))
        self.dsn = dsn
        self.role = role
        self.stop = stop
        self.pace = pace
        self.out = open(history_path, "w", buffering=1)
        self.conn = None
        self.conn_no = 0
        self.seq = 0
        self.keys = []          # recently used keys, reused by later keyed calls
        self.calls = 0
        self.connect_failures = 0
        self.last_ack = 0.0
        self.busy_since = None   # when the call in progress began (a hung call shows here)

    # --- connection --------------------------------------------------------------------------
    def _connect(self):
        delay = 0.2
        while not self.stop.is_set():
            try:
                c = psycopg2.connect(self.dsn, user=self.role, application_name="soak client %d" % self.n,
                                     connect_timeout=3)
                c.autocommit = True
                self.conn = c
                self.conn_no += 1
                return True
            except psycopg2.Error:
                self.connect_failures += 1
                self.stop.wait(delay)
                delay = min(delay * 2, 2.0)
        return False

    def _drop(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        self.conn = None

    # --- calls -------------------------------------------------------------------------------
    def _key(self):
        r = self.rng.random()
        if r < 0.1:
            return "shared-%d" % self.rng.randrange(40)       # the same key in every role
        if r < 0.5 and self.keys:
            return self.rng.choice(self.keys)                 # a retry of an earlier call
        k = "c%d-%d" % (self.n, self.seq)
        self.keys = (self.keys + [k])[-10:]
        return k

    def _call(self, kind, cid, rec):
        cur = self.conn.cursor()
        if kind == "log":
            cur.execute("SELECT atx_log(%s, %s::bigint)", (LOG_SQL, cid))
            rec["o"] = "ack"
        elif kind in ("log_commit", "log_rollback"):
            cur.execute("BEGIN")
            if kind == "log_commit":
                cur.execute("INSERT INTO soak_control VALUES (%s)", (cid,))
            cur.execute("SELECT atx_log(%s, %s::bigint)", (LOG_SQL, cid))
            rec["o"] = "ack"
            self._finish(cur, kind.endswith("commit"), rec)
        elif kind == "keyed":
            rec["key"] = self._key()
            cur.execute("SELECT atx_log_keyed(%s, %s, %s::bigint)", (rec["key"], LOG_SQL, cid))
            rec["o"] = "ack"
        elif kind == "exec":
            cur.execute("SELECT atx_exec(%s, %s::bigint)", (LOG_SQL + " RETURNING id", cid))
            res = cur.fetchone()[0]
            rec["o"] = "ack"
            rec["r"] = res.get("result", [{}])[0].get("id") if isinstance(res, dict) and res.get("result") else None
            rec["st"] = res.get("status") if isinstance(res, dict) else None
        elif kind == "nested":
            cur.execute("SELECT atx_log('SELECT soak_nested($1)', %s::bigint)", (cid,))
            rec["o"] = "ack"
        elif kind == "nested_exec":
            cur.execute("SELECT atx_log('SELECT soak_nested_exec($1)', %s::bigint)", (cid,))
            rec["o"] = "ack"
        elif kind in ("audit_commit", "audit_rollback"):
            cur.execute("BEGIN")
            cur.execute("INSERT INTO soak_audited VALUES (%s, 'x')", (cid,))
            rec["o"] = "ack"   # the trigger's message is durable once the INSERT returned
            self._finish(cur, kind.endswith("commit"), rec)
        elif kind == "nonatomic":
            cur.execute("SELECT atx_log('CALL soak_nonatomic($1)', %s::bigint)", (cid,))
            rec["o"] = "ack"
        else:
            raise ValueError(kind)

    def _finish(self, cur, commit, rec):
        """Ends the caller's own transaction; tx says how it ended (audit rows are checked against it)."""
        try:
            cur.execute("COMMIT" if commit else "ROLLBACK")
            rec["tx"] = "commit" if commit else "rollback"
        except psycopg2.Error:
            rec["tx"] = "unknown"
            raise

    def run(self):
        kinds = [k for k, _ in KINDS]
        weights = [w for _, w in KINDS]
        while not self.stop.is_set():
            if self.conn is None and not self._connect():
                break
            kind = self.rng.choices(kinds, weights)[0]
            self.seq += 1
            cid = self.n * ID_BASE + self.seq
            rec = {"c": self.n, "s": self.seq, "id": cid, "k": kind, "conn": self.conn_no, "t0": time.time()}
            self.busy_since = rec["t0"]
            try:
                self._call(kind, cid, rec)
            except psycopg2.Error as e:
                o = outcome_of(e, kind)
                if rec.get("o") != "ack":   # an error after the message was written keeps the ack
                    rec["o"] = o
                    rec["st"] = getattr(e, "pgcode", None)
                    rec["err"] = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                if self.conn is not None and self.conn.closed:
                    self._drop()
                elif o == "unknown" and not getattr(e, "pgcode", None):
                    self._drop()
                else:
                    try:
                        self.conn.cursor().execute("ROLLBACK")
                    except psycopg2.Error:
                        self._drop()
            rec["t1"] = time.time()
            self.busy_since = None
            if rec["o"] == "ack":
                self.last_ack = rec["t1"]
            self.out.write(json.dumps(rec, separators=(",", ":")) + "\n")
            self.calls += 1
            if self.pace > 0:
                self.stop.wait(self.rng.uniform(0, 2 * self.pace))
        self._drop()
        self.out.close()


def read_history(paths):
    calls = []
    for p in paths:
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line:
                    calls.append(json.loads(line))
    return calls
