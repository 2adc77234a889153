"""Invariants 1-6 of issue 21, checked black-box after every round (SQL and /proc only).

  1 final state in bounded time   every message of the round (nested ones included) is applied,
                                  a duplicate or dead-lettered within its bound (fz_verdicts.Bounds,
                                  counted from when its lane let it start); one that kills its
                                  backend each time is dead-lettered after --max-backend-losses; a
                                  dead letter is readable by its own role; the applier still runs
  2 the slot always moves         confirmed_flush_lsn passes each message once every message before
                                  it is due, plus two status intervals; atx.apply_horizon a prune
                                  interval later; no batch failing again and again in the log; the
                                  text format never raises; the operator can dead-letter by LSN
  3 nothing crosses roles         the victim's statements see their own session's settings (those
                                  a message does not carry: as in the quiet warm-up), the row-5
                                  probes give what the victim's settings give, victim.secret and
                                  victim.aud are untouched, no attacker text in the victim's rows;
                                  idle apply backends hold <= 256 MB
  4 budgets                       every victim message applied within the limit + 10 s whatever
                                  the attackers hold (latencies recorded, never asserted in ms);
                                  a non-atomic one whose run a server restart ended is in doubt
                                  (40003), never run twice: counted, not a violation
  5 what a caller is told is true a victim atx_exec told "it will not be applied" never is; its
                                  errors are its own or fixed verdicts, never attacker text; no
                                  other role hears the victim's message ids; one event per log line
  6 exactly once                  each victim message's row once, per-lane order kept; each tagged
                                  insert (nested emits, after prunes and operator retries) once
"""
import bisect
import json
import statistics

import psycopg2

import fz_verdicts as V
from fz_sql import CANARY
from fz_vocab import PROBES
from fz_victim import ERR_EXPECTED, LANES, OWN_LANE_ONLY, PROBE_EXPECT
from fz_wal import lsn_int

NAMES = {1: "final state in bounded time", 2: "the slot always moves", 3: "nothing crosses roles",
         4: "budgets: the victim keeps being served", 5: "what a caller is told is true", 6: "exactly once"}
POLL_SLACK = 1.0            # the poller sees a final state up to one tick late
ROW_KINDS = ("log", "probe", "exec", "nested", "nonatomic")   # victim calls that must be applied


class RoundResult:
    def __init__(self, round_no, plan, t0, lsn0, bounds):
        self.round_no, self.plan, self.t0, self.lsn0, self.bounds = round_no, plan, t0, lsn0, bounds
        self.t_emit_end = self.t_pause = self.t_end = None
        self.messages, self.victim, self.notifications, self.attacker_runs = [], [], [], []
        self.slot, self.rss, self.rogue_hits, self.kills, self.retries = [], [], [], [], []
        self.runs_seen = {}         # id -> the run starts the poller saw in the registry
        self.rescues = []           # (Msg, result) the operator's dead-lettering of overdue messages
        # (Msg, deadline) of messages not of this round (an earlier round's chain, a nested
        # message whose parent is older) still open when it began: they hold the slot as much as
        # its own, so the slot's bounds count them (invariant 2).
        self.earlier = []
        self.applier_log, self.applier_alive, self.db = b"", True, {}
        self.applier_stderr = b""
        self.stopped_early = False


class Violation:
    def __init__(self, inv, text, msgs=(), units=()):
        self.inv, self.text = inv, text
        self.msgs = list(msgs)          # Msg objects involved
        self.units = set(units)         # (session, unit) of the plan that caused it, when known

    def to_json(self):
        return {"invariant": self.inv, "text": self.text, "messages": [m.id for m in self.msgs],
                "units": sorted(self.units)}


def deadlines(msgs, b, kills, runs=None):
    """message id -> the time by which it must be final: its bound from when it could start (its
    emit, its lane's predecessor's final state, or, when it waited for its principal's budget, the
    start of its run as the server's registry showed it), plus a restart allowance per crash
    meanwhile. Waiting for its own role's earlier work is not its statement's doing; that the
    others are not kept waiting is invariant 4, that the slot moves on is invariant 2.
    A message whose run a crash cut short (runs: id -> the run starts the registry showed) is a
    suspect: it runs again alone, once the suspects ahead of it, each with its nested family, are
    done (docs/security.md, invariant 1). Until that run is seen (the poller then counts from it),
    its bound is the crash's restart plus one message's bound per suspect of the crashes so far."""
    lanes = {}
    for m in msgs:
        lanes.setdefault(m.lane, []).append(m)
    kill_times = [k[0] for k in kills]
    cut = {m.id: _cut_by(m, kill_times, runs) for m in msgs} if runs and kill_times else {}
    cut_times = sorted(t for t in cut.values() if t is not None)
    out = {}
    for ms in lanes.values():
        ms.sort(key=lambda m: lsn_int(m.lsn))
        prev = None
        for m in ms:
            start = m.emitted if prev is None else max(m.emitted, prev)
            if m.run_start is not None:
                start = max(start, m.run_start)
            if "fz-poison" in (m.statement or ""):
                d = start + b.poison()          # its own losses are in its bound
            else:
                d = start + b.message()
                d += V.Bounds.RESTART_S * sum(1 for k in kill_times if start <= k <= d)
            k = cut.get(m.id)
            if k is not None and (m.run_start is None or m.run_start <= k):
                suspects = bisect.bisect_right(cut_times, k)
                d = max(d, k + V.Bounds.RESTART_S + suspects * b.message())
            out[m.id] = d
            prev = min(m.final_at, d) if m.final_at else d
    return out


def _cut_by(m, kill_times, runs):
    """The last crash that cut a run of m short (a run the registry showed began before it, and m
    was not final by then), or None."""
    seen = runs.get(m.id)
    if not seen:
        return None
    first = min(seen)
    hit = [k for k in kill_times if first <= k and (m.final_at is None or k < m.final_at)]
    return max(hit) if hit else None


# ----------------------------------------------------------------------------------------------
# State read from the server after a round (as the superuser; dead letters as their own roles)

def _rows(cur, sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall()


def reference(cluster):
    c = cluster.connect(app="fz-checks")
    try:
        with c.cursor() as cur:
            return {"secret": _rows(cur, SECRET_SQL)[0], "aud": _rows(cur, AUD_SQL)[0]}
    finally:
        c.close()


SECRET_SQL = "SELECT count(*), md5(string_agg(k || ':' || coalesce(v, 'NULL'), ',' ORDER BY k)) FROM victim.secret"
AUD_SQL = "SELECT count(*), md5(string_agg(a::text, ',' ORDER BY id)) FROM victim.aud a"


def read_state(cluster, res):
    c = cluster.connect(app="fz-checks")
    db = {}
    try:
        with c.cursor() as cur:
            lanes = {}
            for e in res.victim:
                lo, hi = lanes.get(e.lane, (e.n, e.n))
                lanes[e.lane] = (min(lo, e.n), max(hi, e.n))
            db["rows"] = []
            for lane, (lo, hi) in lanes.items():
                db["rows"] += _rows(cur, "SELECT lane, n, kind, extract(epoch FROM t0)::float8, "
                                         "extract(epoch FROM t1)::float8, seen::text FROM victim.log "
                                         "WHERE lane = %s AND n BETWEEN %s AND %s", (lane, lo, hi))
            tags = [e.tag for e in res.victim if e.tag]
            db["probes"] = _rows(cur, "SELECT tag, msg, d::text, extract(epoch FROM ts)::bigint::text, b::text "
                                      "FROM victim.probe WHERE tag = ANY(%s)", (tags,))
            db["secret"] = _rows(cur, SECRET_SQL)[0]
            db["aud"] = _rows(cur, AUD_SQL)[0]
            db["canary"] = _rows(cur, "SELECT 'victim.log', count(*) FROM victim.log WHERE seen::text LIKE %s "
                                      "UNION ALL SELECT 'victim.probe', count(*) FROM victim.probe WHERE msg LIKE %s",
                                 (f"%{CANARY}%", f"%{CANARY}%"))
            db["once_dups"] = _rows(cur, "SELECT tag, count(*) FROM fz_att.once GROUP BY tag HAVING count(*) > 1")
            db["queue_dups"] = _rows(cur, "SELECT v, count(*) FROM victim.queue GROUP BY v HAVING count(*) > 1")
            # Looped enqueue tags of every round played on this cluster: the table keeps the
            # rows of earlier rounds, whose loops went on repeating by design (a round's own
            # plan named only its own, so round 43 counted round 42's loop as duplicates).
            plan = res.plan.to_json() if hasattr(res.plan, "to_json") else res.plan
            cluster.fz_looped_tags = getattr(cluster, "fz_looped_tags", set()) | _looped_enqueue_tags(plan)
            db["looped"] = set(cluster.fz_looped_tags)
            db["log_dups"] = _rows(cur, "SELECT lane, n, count(*) FROM victim.log GROUP BY lane, n HAVING count(*) > 1")
            # Dead letters as their own roles (row-level security).
            dead = {}
            for m in res.messages:
                if m.sqlstate is not None:
                    dead.setdefault(m.role, []).append(m.id)
            # Before what each role sees: a dead letter written in between is judged in neither.
            db["dead_now"] = {r[0] for r in _rows(
                cur, "SELECT message_id::text FROM atx.dead_letter WHERE message_id = ANY(%s::uuid[])",
                ([m.id for m in res.messages if m.sqlstate is not None],))}
            db["dead_visible"] = {}
            for role, ids in dead.items():
                try:
                    cur.execute("SET ROLE %s" % _ident(role))
                    db["dead_visible"][role] = {r[0] for r in _rows(
                        cur, "SELECT message_id::text FROM atx.dead_letter WHERE message_id = ANY(%s::uuid[])", (ids,))}
                finally:
                    cur.execute("RESET ROLE")
            try:
                db["text_format"] = ("ok",) + tuple(_rows(cur, V.TEXT_FORMAT_SQL)[0])
            except psycopg2.Error as e:
                db["text_format"] = ("error", e.pgcode, (e.diag.message_primary or "")[:300])
    finally:
        c.close()
    return db


def _ident(name):
    return '"' + name.replace('"', '""') + '"'


def baseline(cluster, emits):
    """(lane, kind) -> {setting: set of values} seen by the victim's statements with no attacker."""
    c = cluster.connect(app="fz-checks")
    out = {}
    try:
        with c.cursor() as cur:
            for lane in sorted({e.lane for e in emits}):
                ns = [e.n for e in emits if e.lane == lane]
                for kind, seen in _rows(cur, "SELECT kind, seen::text FROM victim.log WHERE lane = %s AND n BETWEEN %s "
                                             "AND %s AND seen IS NOT NULL", (lane, min(ns), max(ns))):
                    d = out.setdefault((lane, kind), {})
                    for k, v in json.loads(seen).items():
                        d.setdefault(k, set()).add(json.dumps(v))
    finally:
        c.close()
    return out


def overdue(res, now):
    """A message of the round already past its bound and not final: invariants 1 and 2 are
    certain to fail (a shrinking trial may stop there)."""
    dl = deadlines(res.messages, res.bounds, res.kills, res.runs_seen)
    return any(m.final_at is None and now > dl[m.id] + POLL_SLACK for m in res.messages)


def leaks_now(env, res, ref, session_seen):
    """Invariant 3 on what the server holds so far (a shrinking trial may stop at the first leak)."""
    res.victim = env.victim.snapshot(res.t0)
    res.db = read_state(env.cluster, res)
    v = []
    _inv3(res, env.baseline, ref, v, {}, session_seen)
    return bool(v)


# ----------------------------------------------------------------------------------------------
# The checks

def check_round(res, env_baseline, ref, session_seen):
    b = res.bounds
    dl = deadlines(res.messages, b, res.kills, res.runs_seen)
    v = []
    stats = {}
    _inv1(res, dl, v, stats)
    _inv2(res, dl, v, stats)
    _inv3(res, env_baseline, ref, v, stats, session_seen)
    _inv4(res, v, stats)
    _inv5(res, v, stats)
    _inv6(res, v, stats)
    return v, stats


def _looped_enqueue_tags(plan):
    """Tags of victim.enqueue calls inside a loop of the plan: each iteration is a call of its own
    (a message of its own), so their rows repeat by design and say nothing of exactly once."""
    out = set()

    def walk(x, in_loop):
        if isinstance(x, dict):
            in_loop = in_loop or x.get("kind") == "loop"
            expr = (x.get("args") or {}).get("expr", "") if isinstance(x.get("args"), dict) else ""
            if in_loop and "victim.enqueue('" in expr:
                out.add(expr.split("victim.enqueue('", 1)[1].split("'", 1)[0])
            for y in x.values():
                walk(y, in_loop)
        elif isinstance(x, list):
            for y in x:
                walk(y, in_loop)

    walk(plan, False)
    return out


def _unit_of(m):
    return {(m.origin[1], m.origin[2])} if m.origin and m.origin[0] == "attacker" else set()


def _inv1(res, dl, v, stats):
    now = res.t_end
    counts = {}
    for m in res.messages:
        counts[m.status or "open"] = counts.get(m.status or "open", 0) + 1
        d = dl[m.id]
        if m.final_at is None:
            if now > d + POLL_SLACK:
                v.append(Violation(1, f"not final {now - m.emitted:.1f} s after its emit (bound ends "
                                      f"{d - m.emitted:.1f} s after it): {m.describe()}", [m], _unit_of(m)))
        elif m.final_at > d + POLL_SLACK:
            v.append(Violation(1, f"final ({m.status}) only {m.final_at - m.emitted:.1f} s after its emit, "
                                  f"bound {d - m.emitted:.1f} s: {m.describe()}", [m], _unit_of(m)))
    retried = {mid for mid, _ in res.retries}
    for m in res.messages:
        if m.sqlstate is None or m.id in retried or m.id not in res.db["dead_now"]:
            continue
        if m.id not in res.db["dead_visible"].get(m.role, set()):
            v.append(Violation(1, f"dead letter not readable by its own role {m.role}: {m.describe()}", [m],
                               _unit_of(m)))
    if not res.applier_alive:
        v.append(Violation(1, "the applier exited"))
    # docs/applier.md, "Poison messages": a message whose backend keeps dying is dead-lettered after
    # --max-backend-losses losses while it runs alone (one more loss: the batch it was in first).
    poison = [m for m in res.messages if "fz-poison" in (m.statement or "")]
    allowed = (res.bounds.losses + 1) * len(poison)
    if poison and len(res.kills) > allowed:
        v.append(Violation(1, f"a message that loses its backend each time it runs was run {len(res.kills)} times "
                              f"(at most {allowed} with --max-backend-losses {res.bounds.losses}): "
                              f"{poison[0].describe()}", poison[:1], _unit_of(poison[0])))
    stats["messages"] = len(res.messages)
    stats["statuses"] = counts
    stats["nested"] = sum(1 for m in res.messages if m.depth > 0)
    stats["attacker_messages"] = sum(1 for m in res.messages if m.origin[0] == "attacker")


def _inv2(res, dl, v, stats):
    """The slot is confirmed up to the oldest message not yet handled (docs/applier.md, step 8):
    it may pass a message only once every message before it in the WAL is final, so each message
    is due by the latest bound of all messages up to it, plus a status interval."""
    b = res.bounds
    stuck = []
    hstuck = []
    due_max = 0.0
    earlier = dict((m.id, d) for m, d in res.earlier)
    everything = sorted(list(res.messages) + [m for m, _ in res.earlier], key=lambda m: lsn_int(m.lsn))
    for m in everything:
        lo = lsn_int(m.lsn)
        due_max = max(due_max, dl[m.id] if m.id in dl else earlier[m.id])
        if m.id in earlier:
            continue
        due = due_max + b.slot_slack()
        if due > res.t_end:
            continue
        passed = next((t for t, conf, _ in res.slot if conf > lo), None)
        if passed is None or passed > due + POLL_SLACK:
            stuck.append((m, passed, due))
        hdue = due_max + b.horizon_slack()
        if hdue <= res.t_end:
            hp = next((t for t, _, h in res.slot if h > lo), None)
            if hp is None or hp > hdue + POLL_SLACK:
                hstuck.append((m, hp))
    if stuck:
        m, passed, due = min(stuck, key=lambda x: lsn_int(x[0].lsn))
        conf = res.slot[-1][1] if res.slot else 0
        # What the slot was held by when the message was due: the first message at or past the
        # confirmed position then.
        at_due = next((c for t, c, _ in reversed(res.slot) if t <= due + POLL_SLACK), 0)
        holder = next((x for x in everything if lsn_int(x.lsn) >= at_due), None)
        held = f"; confirmed_flush_lsn then {at_due >> 32:X}/{at_due & 0xffffffff:X}"
        if holder is not None and holder is not m:
            where = "an earlier round's" if holder.id in earlier else "this round's"
            held += f", held by {where} {holder.describe()}"
        v.append(Violation(2, f"the slot did not pass {len(stuck)} message(s) within their bounds; oldest: "
                              f"{m.describe()} (confirmed_flush_lsn at round end {conf >> 32:X}/{conf & 0xffffffff:X}"
                              f"{'' if passed is None else f', passed after {passed - m.emitted:.1f} s'}{held})",
                           [m], _unit_of(m)))
    if hstuck and not stuck:
        m, _ = min(hstuck, key=lambda x: lsn_int(x[0].lsn))
        v.append(Violation(2, f"atx.apply_horizon did not follow the slot past {m.describe()}", [m], _unit_of(m)))
    tf = res.db.get("text_format")
    if tf and tf[0] == "error":
        v.append(Violation(2, f"the output plugin's text format raises on the messages of this round: {tf[1]} {tf[2]}"))
    elif tf and tf[2]:
        v.append(Violation(2, f"the output plugin's text format calls {tf[2]} genuine message(s) undecodable or "
                              f"unauthenticated"))
    for m, result in res.rescues:
        if result.startswith("refused"):
            v.append(Violation(2, f"the operator cannot dead-letter an overdue message by its LSN ({result}): "
                                  f"{m.describe()}", [m], _unit_of(m)))
    fails = V.batch_failures(res.applier_log)
    loops = {lsn: n for lsn, n in fails.items() if n > b.attempts + 2}
    if loops:
        lsn, n = max(loops.items(), key=lambda x: x[1])
        culprit = [m for m in res.messages if m.lsn == lsn]
        v.append(Violation(2, f"a batch failing again and again: event=batch_failed {n} times for first_lsn={lsn} "
                              f"in this round ({len(loops)} such batches)" +
                              (f": {culprit[0].describe()}" if culprit else ""), culprit,
                           set().union(*[_unit_of(m) for m in culprit]) if culprit else ()))
    lag = [(t, conf) for t, conf, _ in res.slot]
    stats["batch_failed"] = sum(fails.values())
    stats["slot_samples"] = len(lag)


def _inv3(res, base, ref, v, stats, session_seen):
    leaks = {}
    rows = res.db["rows"]
    for lane, n, kind, t0, t1, seen in rows:
        if seen is None:
            continue
        _compare_seen(base, lane, kind, json.loads(seen), leaks, f"lane {lane} #{n} ({kind})", session_seen)
    for e in res.victim:
        if e.kind == "exec" and e.result and isinstance(e.result.get("result"), list) and e.result["result"]:
            seen = e.result["result"][0].get("seen")
            if isinstance(seen, dict):
                _compare_seen(base, e.lane, "exec", seen, leaks, f"lane {e.lane} #{e.n} (atx_exec result)",
                              session_seen)
    for (key, val), where in sorted(leaks.items()):
        v.append(Violation(3, f"a victim statement saw {key} = {val} (expected {where[1]}); first at "
                              f"{where[0]}, {where[2]} statement(s)"))
    probes = {}
    for tag, msg, d, ts, bv in res.db["probes"]:
        probes.setdefault(tag, []).append({"msg": msg, "d": d, "ts": ts, "b": bv})
    bad = []
    for e in res.victim:
        if e.kind != "probe" or e.state != "ok":
            continue
        which = e.tag.rsplit(".", 1)[1]
        col, want = PROBE_EXPECT[which]
        got = sorted(r[col] for r in probes.get(e.tag, []) if r[col] is not None) if e.tag in probes else None
        if got is not None and got != want:
            bad.append((which, e.tag, got, want))
    seen_kinds = set()
    for which, tag, got, want in bad:
        if which in seen_kinds:
            continue
        seen_kinds.add(which)
        n = sum(1 for b in bad if b[0] == which)
        v.append(Violation(3, f"the victim's {which!r} probe gave {got} instead of {want} (what its own settings "
                              f"give; {n} such statement(s), first tag {tag}): atx_log({PROBES[which]!r}, tag) "
                              f"as fz_victim with {dict(LANES[0])}"))
    if res.db["secret"] != ref["secret"]:
        v.append(Violation(3, f"victim.secret changed: {ref['secret']} -> {res.db['secret']}"))
    if res.db["aud"] != ref["aud"]:
        v.append(Violation(3, f"victim.aud rows hidden by row-level security changed: {ref['aud'][1]} -> "
                              f"{res.db['aud'][1]}"))
    for where, n in res.db["canary"]:
        if n:
            v.append(Violation(3, f"{n} row(s) of {where} hold an attacker's text ({CANARY})"))
    worst = {}
    for t, pid, app, private, rss in res.rss:
        if private > worst.get(pid, (0, None))[0]:
            worst[pid] = (private, app)
    over = {pid: x for pid, x in worst.items() if x[0] > V.RSS_BOUND_MB * 1024}
    if over:
        pid, (kb, app) = max(over.items(), key=lambda x: x[1][0])
        v.append(Violation(3, f"an idle apply backend holds {kb // 1024} MB (pid {pid}, {app}; bound "
                              f"{V.RSS_BOUND_MB} MB)"))
    stats["rss_max_mb"] = max([x[0] for x in worst.values()] + [0]) // 1024
    stats["probes"] = sum(1 for e in res.victim if e.kind == "probe")


def expectations(base, session_seen, lane, kind):
    """What a victim statement of this lane and kind must see: its own session's values (which
    include NULL for every placeholder it never set), except for the settings a message does not
    carry (fz_verdicts.NOT_CARRIED), held to the quiet warm-up when that saw one value, and the
    settings another victim lane changes, judged only in that lane."""
    own = dict(session_seen.get(lane) or {})
    expect = {}
    for k, val in own.items():
        if k in OWN_LANE_ONLY and not any(name == k for name, _ in LANES[lane]):
            continue
        if k in V.NOT_CARRIED:
            vals = base.get((lane, kind), {}).get(k)
            if vals and len(vals) == 1:
                expect[k] = vals
            continue
        expect[k] = {json.dumps(val)}
    return expect


def _compare_seen(base, lane, kind, seen, leaks, where, session_seen):
    expect = expectations(base, session_seen, lane, kind)
    for k, vals in expect.items():
        got = json.dumps(seen.get(k))
        if got not in vals:
            key = (k, got)
            first, own, count = leaks.get(key, (where, next(iter(vals)), 0))
            leaks[key] = (first, own, count + 1)


def _inv4(res, v, stats):
    b = res.bounds
    lat = []
    late = []
    by_id = {m.id: m for m in res.messages}
    rows = {(lane, n): (kind, t0, t1) for lane, n, kind, t0, t1, _ in res.db["rows"]}
    probes_present = {r[0] for r in res.db["probes"]}
    restart = V.Bounds.RESTART_S * len(res.kills)
    in_doubt = 0
    for e in res.victim:
        if e.kind == "exec" and e.state == "error" and e.err and e.err[0] == "55P03":
            late.append((e, by_id.get(e.id), f"atx_exec gave up waiting ({e.err[1]})"))
            continue
        if e.kind not in ROW_KINDS or e.state != "ok":
            continue
        bound = b.victim() + restart
        if e.kind == "probe":
            m = by_id.get(e.id)
            if e.tag not in probes_present or m is None or m.status not in ("applied", "pruned"):
                late.append((e, m, "not applied" + (f" (dead-lettered {m.sqlstate}: {m.error})"
                                                     if m is not None and m.sqlstate else "")))
            elif m.final_at - m.emitted > bound + POLL_SLACK:
                late.append((e, m, f"applied after {m.final_at - m.emitted:.1f} s"))
            continue
        r = rows.get((e.lane, e.n))
        if r is None:
            m = by_id.get(e.id)
            if (e.kind == "nonatomic" and m is not None and m.sqlstate == "40003" and
                    any(m.emitted <= k[0] <= (m.final_at or k[0]) for k in res.kills)):
                # A server restart (the crash-killer's SIGKILL, as an out-of-memory kill) ended
                # its run: it may have committed part of its work, so it is in doubt, never run
                # twice (docs/applier.md). That is the restart's doing, whoever caused it.
                in_doubt += 1
                continue
            why = "not applied"
            if m is not None and m.sqlstate:
                why += f" (dead-lettered {m.sqlstate}: {(m.error or '')[:200]})"
            late.append((e, m, why))
            continue
        d = r[2] - r[1]
        lat.append(d)
        if d > bound:
            late.append((e, by_id.get(e.id), f"applied {d:.1f} s after its call (bound {bound:.0f} s)"))
    if late:
        e, m, why = late[0]
        v.append(Violation(4, f"{len(late)} victim message(s) not applied within the limit + 10 s; first: lane "
                              f"{e.lane} #{e.n} ({e.kind}) {why}", [m] if m else []))
    stats["_latencies_ms"] = sorted(round(x * 1000, 1) for x in lat)
    if in_doubt:
        stats["victim_in_doubt_after_restart"] = in_doubt
    if lat:
        lat.sort()
        stats["victim_latency_s"] = {"n": len(lat), "p50": round(statistics.median(lat), 3),
                                     "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
                                     "max": round(lat[-1], 3)}


def _inv5(res, v, stats):
    rows = {(lane, n) for lane, n, *_ in res.db["rows"]}
    told = {}
    for e in res.victim:
        if e.state == "error" and e.err:
            sqlstate, msg, detail, hint = e.err
            text = " ".join(x for x in (msg, detail, hint) if x)
            told[sqlstate] = told.get(sqlstate, 0) + 1
            if CANARY in text:
                v.append(Violation(5, f"the victim's {e.kind} was told text an attacker chose: {sqlstate} {msg!r}"))
                continue
            if e.kind == "exec_err" and (sqlstate, msg) == ERR_EXPECTED:
                continue
            if sqlstate not in V.VERDICT_SQLSTATES:
                v.append(Violation(5, f"the victim's {e.kind} (lane {e.lane} #{e.n}) was told {sqlstate} {msg!r}: "
                                      f"neither its statement's error nor a verdict"))
            if e.kind in ("exec", "exec_cancel") and V.exec_fate(detail) == "cancelled" and (e.lane, e.n) in rows:
                v.append(Violation(5, f"the victim's atx_exec (lane {e.lane} #{e.n}) was told it will not be "
                                      f"applied, and it was", []))
        elif e.kind == "exec_err" and e.state == "ok":
            v.append(Violation(5, f"the victim's failing atx_exec returned {e.result!r}"))
    victim_ids = {e.id for e in res.victim if e.id} | {m.id for m in res.messages if m.role == "fz_victim"}
    heard = [p for _, ch, p in res.notifications if ch == "atx_dead_letter" and V.notification_reveals(p, victim_ids)]
    if heard:
        v.append(Violation(5, f"another role heard {len(heard)} of the victim's message ids on atx_dead_letter "
                              f"(e.g. {heard[0]})"))
    forged = V.forged_lines(res.applier_log)
    if forged:
        v.append(Violation(5, f"the applier's log is not one event per line: {forged[0]} ({len(forged)} such)"))
    if CANARY.encode() in res.applier_stderr:
        line = next(x for x in res.applier_stderr.split(b"\n") if CANARY.encode() in x)
        v.append(Violation(5, "an attacker's text reached the applier's standard error raw: " +
                              line[:200].decode("utf-8", "replace")))
    stats["victim_told"] = told
    stats["rogue_attempts"] = [r for _, _, r in res.rogue_hits]
    kinds = {}
    for e in res.victim:
        k = kinds.setdefault(e.kind, {})
        st = e.state if e.state != "error" else f"error {e.err[0]}"
        k[st] = k.get(st, 0) + 1
    stats["victim_calls"] = kinds


def _inv6(res, v, stats):
    rows = res.db["rows"]
    counts = {}
    for lane, n, kind, t0, t1, _ in rows:
        counts[(lane, n)] = counts.get((lane, n), 0) + 1
    dups = [k for k, c in counts.items() if c > 1]
    if dups or res.db["log_dups"]:
        k = dups[0] if dups else tuple(res.db["log_dups"][0][:2])
        v.append(Violation(6, f"victim message lane {k[0]} #{k[1]} applied more than once "
                              f"({max(len(dups), len(res.db['log_dups']))} such)"))
    # Order within a lane: the victim's calls on one backend session (a reconnect is a new lane).
    pid_of = {(e.lane, e.n): e.pid for e in res.victim if e.state == "ok"}
    by_lane = {}
    for lane, n, kind, t0, t1, _ in rows:
        if kind in ("log", "exec") and (lane, n) in pid_of:
            by_lane.setdefault((lane, pid_of[(lane, n)]), []).append((n, t1))
    for (lane, pid), xs in by_lane.items():
        xs.sort()
        for (n1, a), (n2, bt) in zip(xs, xs[1:]):
            if bt < a:
                v.append(Violation(6, f"lane {lane} (session {pid}): #{n2} applied before #{n1} (emit order not kept)"))
                break
    for tag, c in res.db["once_dups"]:
        v.append(Violation(6, f"tagged insert {tag!r} applied {c} times" +
                              (" (after an operator retry of its dead-lettered parent)"
                               if "nested-once" in tag else "")))
    looped = res.db.get("looped") or _looped_enqueue_tags(res.plan.to_json() if hasattr(res.plan, "to_json")
                                                           else res.plan)
    for tag, c in res.db["queue_dups"]:
        if tag in looped:
            continue  # called again and again by a loop: one row per call, each its own message
        v.append(Violation(6, f"the victim's queue row {tag!r} (emitted through its SECURITY DEFINER function) "
                              f"applied {c} times"))
    stats["retries"] = [r for _, r in res.retries]
