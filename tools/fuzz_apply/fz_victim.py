"""The victim: a role writing a steady stream through pg_atx and checking what it sees.

Three sessions (lanes), each with settings of its own:
  lane 0  atx_log of numbered rows; the row-5 probe statements (texts an attacker also sends);
          nested atx_exec; non-atomic messages (a procedure that COMMITs)
  lane 1  the same stream under other settings (DateStyle, TimeZone, a placeholder, search_path)
  lane 2  atx_exec: statements that return what they see, one that fails with its own error, and,
          while the rogue operator plays, slow ones it tries to dead-letter with text of its choosing
  lane 3  atx_exec that gives up at once (atx.exec_timeout = 1 ms: "it will not be applied"),
          twice a second, so that cancelled messages wait in every stall
Every row records what the statement saw (victim.seen(): the probed settings, current_user,
functions resolved through search_path), and the lane and number that make exactly-once countable.
"""
import random
import threading
import time

import psycopg2

from fz_vocab import PLACEHOLDERS, PROBES, SETTINGS
from fz_verdicts import message_id_in

# Settings victim.seen() reports. Not application_name and synchronous_commit: the applier sets
# those per session and per batch, so they differ legitimately between the victim's own messages.
# The attackers' placeholders are never set by the victim: it must see NULL for each (issue row 13),
# an explicit expectation. Lane 1 sets a placeholder of its own (victim.tenant).
PROBED = sorted([s for s in SETTINGS if s not in ("application_name", "synchronous_commit")
                 and s not in PLACEHOLDERS] + ["transaction_isolation", "transaction_read_only",
                                               "is_superuser", "session_authorization", "victim.tenant"]) + PLACEHOLDERS

LANES = {
    0: [("TimeZone", "UTC"), ("DateStyle", "ISO, MDY")],
    1: [("DateStyle", "SQL, DMY"), ("TimeZone", "Asia/Kathmandu"), ("victim.tenant", "victim"),
        ("IntervalStyle", "iso_8601"), ("search_path", "victim, public")],
    2: [("TimeZone", "UTC"), ("atx.exec_timeout", "8s")],
    3: [("TimeZone", "UTC"), ("atx.exec_timeout", "1")],
}
RATE = {0: 8.0, 1: 8.0, 2: 4.0, 3: 2.0}
# Settings one victim lane changes that the server does not carry for the others: judged only in
# the lanes that set them (what one of the victim's own sessions leaves in an apply session is not
# another role's doing).
OWN_LANE_ONLY = {name for lane in LANES.values() for name, _ in lane} - {"TimeZone", "DateStyle", "IntervalStyle",
                                                                           "search_path"}

LOG_SQL = "INSERT INTO victim.log(lane, n, kind, t0, seen) VALUES ($1, $2, '{kind}', $3, victim.seen())"
NESTED_SQL = ("SELECT atx_exec('INSERT INTO victim.log(lane, n, kind, t0, seen) "
              "VALUES ($1, $2, ''nested'', $3, victim.seen())', $1, $2, $3)")
NONATOMIC_SQL = "CALL victim.mark($1, $2, $3)"
EXEC_SQL = LOG_SQL.format(kind="exec") + " RETURNING seen"
CANCEL_SQL = LOG_SQL.format(kind="exec_cancel")
ERR_SQL = "SELECT 1 / 0 AS fz_div"
ERR_EXPECTED = ("22012", "division by zero")
ROGUE_MARK = "fz-rogue-target"
SLOW_SQL = f"SELECT pg_sleep(1.5), '{ROGUE_MARK}' AS mark"

# What each probe must give under lane 0's settings (standard_conforming_strings on, ISO/MDY, UTC,
# transform_null_equals off, pg_catalog before fz_att): column -> expected rows for one tag.
PROBE_EXPECT = {
    "scs": ("msg", sorted(["x\\", "); DELETE FROM victim.secret; --"])),
    "datestyle": ("d", ["2001-03-04"]),
    "timezone": ("ts", ["981173106"]),          # 2001-02-03 04:05:06 UTC, epoch seconds
    "tne": ("b", ["true"]),
    "path": ("msg", ["A"]),
}


class VEmit:
    """One victim call and what it was told."""
    __slots__ = ("lane", "n", "kind", "t", "id", "state", "result", "err", "tag", "dur", "pid")

    def __init__(self, lane, n, kind, tag=None):
        self.lane, self.n, self.kind, self.tag = lane, n, kind, tag
        self.t = time.time()
        self.id = None
        self.state = None     # ok | error | lost (the connection broke: emitted or not, unknown)
        self.result = None
        self.err = None       # (sqlstate, message, detail, hint)
        self.dur = None
        self.pid = None       # the backend (its session is the message's lane)


class Victim:
    def __init__(self, cluster, seed, log):
        self.cluster = cluster
        self.log = log
        self.rngs = {lane: random.Random(f"victim:{seed}:{lane}") for lane in LANES}
        self.emits = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.rogue = False
        self.paused = False
        self.counters = {lane: 0 for lane in LANES}
        self.pids = {}          # lane -> set of backend pids it used (lane attribution)
        self.session_seen = {}  # lane -> victim.seen() in the lane's own client session
        self.threads = []

    def start(self):
        for lane in LANES:
            t = threading.Thread(target=self._run, args=(lane,), name=f"victim-{lane}", daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stop_ev.set()
        deadline = time.time() + 3      # a lane still waiting in atx_exec dies with the cluster
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.time()))

    def all_pids(self):
        with self.lock:
            return set().union(*self.pids.values()) if self.pids else set()

    def _connect(self, lane):
        while not self.stop_ev.is_set():
            try:
                c = self.cluster.connect("fz_victim", app=f"fz-victim-{lane}")
                with c.cursor() as cur:
                    for name, value in LANES[lane]:
                        cur.execute("SELECT set_config(%s, %s, false)", (name, value))
                    cur.execute("SELECT pg_backend_pid(), victim.seen()")
                    pid, seen = cur.fetchone()
                with self.lock:
                    self.pids.setdefault(lane, set()).add(pid)
                    self.session_seen[lane] = seen
                return c
            except psycopg2.Error:
                time.sleep(0.5)
        return None

    # The first calls of each lane go through every kind (twice), so that the warm-up sees each.
    WARMUP = {0: ["log", "probe", "nested", "nonatomic"] * 2, 1: ["log", "nested", "nonatomic"] * 2,
              2: ["exec", "exec_err"] * 2, 3: []}

    def _kind(self, lane):
        r = self.rngs[lane]
        n = self.counters[lane]
        if n <= len(self.WARMUP[lane]):
            return self.WARMUP[lane][n - 1]
        if lane == 0:
            return r.choices(["log", "probe", "nested", "nonatomic"], [55, 37, 5, 3])[0]
        if lane == 1:
            return r.choices(["log", "nested", "nonatomic"], [85, 10, 5])[0]
        if lane == 3:
            return "exec_cancel"
        kinds, weights = ["exec", "exec_err"], [80, 20]
        if self.rogue:
            kinds.append("exec_slow")
            weights.append(60)
        return r.choices(kinds, weights)[0]

    def _run(self, lane):
        conn = self._connect(lane)
        period = 1.0 / RATE[lane]
        next_t = time.time()
        while conn is not None and not self.stop_ev.is_set():
            if self.paused:
                time.sleep(0.05)
                next_t = time.time()
                continue
            with self.lock:
                self.counters[lane] += 1
                n = self.counters[lane]
            kind = self._kind(lane)
            tag = None
            if kind == "probe":
                tag = f"p{lane}.{n}." + self.rngs[lane].choice(sorted(PROBES))
            e = VEmit(lane, n, kind, tag)
            with self.lock:
                self.emits.append(e)
            try:
                self._emit(conn, e)
            except psycopg2.Error as ex:
                # Lost only when the connection is gone (psycopg2 maps whole SQLSTATE classes such as
                # 55 and 57 to OperationalError: not a sign of a broken connection).
                if conn.closed or ex.pgcode is None:
                    e.state = "lost"
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                    conn = self._connect(lane)
                else:
                    e.state = "error"
                    e.err = (ex.pgcode, ex.diag.message_primary, ex.diag.message_detail, ex.diag.message_hint)
                    e.id = e.id or message_id_in(ex.diag.message_primary) or message_id_in(ex.diag.message_detail)
            e.dur = time.time() - e.t
            next_t += period
            delay = next_t - time.time()
            if delay > 0:
                self.stop_ev.wait(delay)
            else:
                next_t = time.time()
        if conn is not None:
            conn.close()

    def _emit(self, conn, e):
        cur = conn.cursor()
        lane, n = e.lane, e.n
        e.pid = conn.info.backend_pid
        if e.kind in ("log", "nested", "nonatomic"):
            sql = {"log": LOG_SQL.format(kind="log"), "nested": NESTED_SQL, "nonatomic": NONATOMIC_SQL}[e.kind]
            cur.execute("SELECT atx_log(%s, %s::int, %s::int, clock_timestamp())", (sql, lane, n))
            e.id = str(cur.fetchone()[0])
        elif e.kind == "probe":
            cur.execute("SELECT atx_log(%s, %s::text)", (PROBES[e.tag.rsplit(".", 1)[1]], e.tag))
            e.id = str(cur.fetchone()[0])
        elif e.kind == "exec":
            cur.execute("SELECT atx_exec(%s, %s::int, %s::int, clock_timestamp())", (EXEC_SQL, lane, n))
            e.result = cur.fetchone()[0]
            e.id = e.result.get("message_id")
        elif e.kind == "exec_err":
            cur.execute("SELECT atx_exec(%s)", (ERR_SQL,))
            e.result = cur.fetchone()[0]
            e.id = e.result.get("message_id")
        elif e.kind == "exec_slow":
            cur.execute("SELECT atx_exec(%s)", (SLOW_SQL,))
            e.result = cur.fetchone()[0]
            e.id = e.result.get("message_id")
        elif e.kind == "exec_cancel":
            cur.execute("SELECT atx_exec(%s, %s::int, %s::int, clock_timestamp())", (CANCEL_SQL, lane, n))
            e.result = cur.fetchone()[0]
            e.id = e.result.get("message_id")
        e.state = "ok"

    def snapshot(self, t_from=None, t_to=None):
        with self.lock:
            return [e for e in self.emits if (t_from is None or e.t >= t_from) and (t_to is None or e.t < t_to)]
