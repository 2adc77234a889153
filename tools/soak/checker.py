"""The soak's checker: the history of every call against what the database holds afterwards.

- every acknowledged call applied exactly once (keyed calls: once per key and role), or
  dead-lettered for a cause the schedule explains; nothing applied twice, whatever the outcome;
  nothing applied for a call the server refused;
- per-caller order: along one connection (one lane) rows are applied in call order;
- atx_exec results equal to what was applied (the id returned is the row's id; a nested atx_exec
  likewise);
- the audit trigger's rows: one per acknowledged change, with the caller's real outcome;
- plain commits next to atx_log (the control) are all there;
- delivery resumed after each fault within a bound (recovery: from the fault's end to the first
  row of a call made after it);
- the applier's memory did not grow, and it never exited by itself."""
import re

from clients import ID_BASE, SUBS

# Which faults can explain a dead letter with this SQLSTATE (a fault in progress, or ending,
# between the message's emit and its dead letter).
DISRUPTIVE = {"applier_kill", "backend_kill", "server_crash", "walsender_stall", "failover", "switchover",
              "partition", "state_full"}
EXPLAINS = {
    "42501": {"privilege_revoke"},                           # the role could not write, for a while
    "08006": {"backend_kill", "server_crash", "failover", "switchover"},   # backend lost too often
    "40003": DISRUPTIVE,                                     # non-atomic run interrupted: in doubt
    "57014": DISRUPTIVE,                                     # timed out / its waiting caller gone
}
TRANSIENT_EXHAUSTED = DISRUPTIVE                             # other SQLSTATEs: retries ran out
SLACK = 2.0          # seconds of clock and commit-time slack around a fault's window
REFUSED_AT_CALL = ("42501", "25006", "55000", "42P01", "22023", "22004", "54000", "0A000")
CALL_ID = re.compile(r'\\?"call_id\\?": (\d+)')   # in the row images, a JSON string inside the JSON


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


class Result:
    def __init__(self):
        self.failures = []      # (check, detail)
        self.todo = []          # (check, detail): known product bugs, reported, not counted
        self.notes = []
        self.by_kind = {}       # kind -> counters
        self.faults = {}        # kind -> counters and recoveries
        self.summary = {}
        self.dead_letters = []  # each with the fault that explains it

    def fail(self, check, detail):
        self.failures.append((check, detail))

    def ok(self):
        return not self.failures


def load(conn):
    cur = conn.cursor()
    cur.execute("SELECT id, call_id, sub, ref, who, extract(epoch FROM applied_at)::float8 FROM soak_applied")
    rows = cur.fetchall()
    cur.execute("""SELECT id, message_id::text, caller_role, statement, params::text, idempotency_key, sqlstate,
                          left(error, 200), attempts, extract(epoch FROM first_failed_at)::float8,
                          extract(epoch FROM dead_at)::float8, extract(epoch FROM emitted_at)::float8
                     FROM atx.dead_letter ORDER BY id""")
    dead = cur.fetchall()
    cur.execute("""SELECT (new_row ->> 'call_id')::bigint, caller_outcome::text,
                          extract(epoch FROM applied_at)::float8
                     FROM atx.audit_outcome WHERE table_name = 'public.soak_audited'""")
    audit = cur.fetchall()
    cur.execute("SELECT call_id, count(*) FROM soak_control GROUP BY call_id")
    control = dict(cur.fetchall())
    return rows, dead, audit, control


def dead_letter_call(d):
    """The call a dead letter belongs to: the first parameter (our statements), or the call_id in
    the row images (the audit trigger)."""
    params = d[4] or ""
    m = re.search(r'"value": "?(\d+)"?', params)
    if m and int(m.group(1)) >= ID_BASE:
        return int(m.group(1))
    m = CALL_ID.search(params)
    return int(m.group(1)) if m else None


def dead_letter_sub(d):
    vals = re.findall(r'"value": "?(-?\d+)"?', d[4] or "")
    return int(vals[1]) if len(vals) > 1 and "sub" in (d[3] or "") else 0


def explain(d, call, events, role_of):
    """The fault that explains dead letter d, or None."""
    sqlstate = d[6]
    t_emit = d[11] or (call["t0"] if call else d[9])
    t_dead = d[10] or d[9]
    kinds = EXPLAINS.get(sqlstate, TRANSIENT_EXHAUSTED)
    if sqlstate == "57014" and call and call["k"] == "exec" and call["o"] != "ack":
        return "its atx_exec caller stopped waiting (%s)" % (call.get("st") or "connection lost")
    for e in events:
        if e.injected is None or e.kind not in kinds:
            continue
        end = max(x for x in (e.healed, e.settled, e.injected) if x is not None)
        if e.injected - SLACK <= t_dead and end + SLACK >= t_emit:
            if e.kind == "privilege_revoke" and role_of(e.arg["role"]) != d[2]:
                continue
            return "#%d %s" % (e.n, e.kind)
    return None


def check(calls, db, events, role_of, run, res=None):
    """run: dict with t_start, t_end (wall clock of the clients), recovery_bound, rss, applier_exits,
    hung (calls still running at the end), drained (bool, note)."""
    res = res or Result()
    rows, dead, audit, control = db
    by_call = {}
    for r in rows:
        by_call.setdefault((r[1], r[2]), []).append(r)
    dl_by_call = {}
    for d in dead:
        dl_by_call.setdefault(dead_letter_call(d), []).append(d)
    audit_by = {}
    for a in audit:
        audit_by.setdefault(a[0], []).append(a)
    call_by_id = {c["id"]: c for c in calls}
    keyed_rows = {}   # (client, key) -> rows of calls with that key
    for c in calls:
        if c["k"] == "keyed":
            keyed_rows.setdefault((c["c"], c.get("key")), []).extend(by_call.get((c["id"], 0), []))

    def counter(kind):
        return res.by_kind.setdefault(kind, dict(calls=0, ack=0, error=0, unknown=0, applied=0, dead=0,
                                                 duplicate_key=0, lost=0, duplicated=0, out_of_order=0,
                                                 mismatched=0, phantom=0))

    examples = {}

    def bad(what, c, detail):
        examples.setdefault(what, []).append("call %d (%s, client %d, %s): %s" % (c["id"], c["k"], c["c"], c["o"],
                                                                              detail))

    for c in calls:
        k = c["k"]
        n = counter(k)
        n["calls"] += 1
        n[c["o"]] += 1
        dls = dl_by_call.get(c["id"], [])
        if k.startswith("audit"):
            got = audit_by.get(c["id"], [])
            if len(got) > 1:
                n["duplicated"] += 1
                bad("duplicated", c, "%d audit rows" % len(got))
            if c["o"] == "ack":
                if len(got) == 1:
                    n["applied"] += 1
                    want = {"commit": "committed", "rollback": "aborted"}.get(c.get("tx"))
                    if want and got[0][1] != want:
                        n["mismatched"] += 1
                        bad("mismatched", c, "audit outcome %s, the caller's transaction %s" % (got[0][1], c.get("tx")))
                elif not got and dls:
                    n["dead"] += 1
                elif not got:
                    n["lost"] += 1
                    bad("lost", c, "no audit row, no dead letter")
            elif c["o"] == "error" and got and c.get("st") in REFUSED_AT_CALL:
                n["phantom"] += 1
                bad("phantom", c, "audit row for a refused call (%s)" % c.get("st"))
            continue
        subs = SUBS.get(k, (0,))
        own = by_call.get((c["id"], 0), [])
        for s in subs:
            got = by_call.get((c["id"], s), [])
            if len(got) > 1:
                n["duplicated"] += 1
                bad("duplicated", c, "sub %d applied %d times (rows %s)" % (s, len(got), [g[0] for g in got]))
        if k == "log_commit" and c.get("tx") == "commit" and control.get(c["id"], 0) != 1:
            n["lost"] += 1
            bad("lost", c, "its plain committed control row: %d" % control.get(c["id"], 0))
        if c["o"] == "error":
            if any(by_call.get((c["id"], s)) for s in subs) and (c.get("st") in REFUSED_AT_CALL or k == "exec"):
                n["phantom"] += 1
                bad("phantom", c, "applied although the call raised %s" % c.get("st"))
            continue
        if c["o"] != "ack":
            continue
        if len(own) == 1:
            n["applied"] += 1
        elif not own and dls:
            n["dead"] += 1
        elif not own and k == "keyed" and len(keyed_rows.get((c["c"], c.get("key")), [])) >= 1:
            n["duplicate_key"] += 1
        elif not own:
            n["lost"] += 1
            bad("lost", c, "no row, no dead letter")
        if k == "keyed" and len(keyed_rows.get((c["c"], c.get("key")), [])) > 1:
            n["duplicated"] += 1
            bad("duplicated", c, "key %s of its role applied %d times" % (
                c.get("key"), len(keyed_rows[(c["c"], c.get("key"))])))
        if k == "exec" and len(own) == 1 and c.get("r") != own[0][0]:
            n["mismatched"] += 1
            bad("mismatched", c, "atx_exec returned id %s, the row applied has id %s" % (c.get("r"), own[0][0]))
        if k == "nested_exec" and len(own) == 1:
            child = by_call.get((c["id"], 1), [])
            if len(child) != 1 or own[0][3] != child[0][0]:
                n["mismatched"] += 1
                bad("mismatched", c, "nested atx_exec returned id %s, its row: %s" % (
                    own[0][3], [g[0] for g in child]))
        if len(own) == 1 and k in ("nested", "nested_exec", "nonatomic"):
            if k == "nonatomic" and dls:
                continue   # dead-lettered in doubt (40003) after its first part: the rest may be missing
            for s in subs[1:]:
                got = by_call.get((c["id"], s), [])
                if not got and not any(dead_letter_sub(d) == s for d in dls):
                    n["lost"] += 1
                    bad("lost", c, "sub %d: no row, no dead letter (its parent applied)" % s)

    # Per-caller order: along a connection, the ids drawn at apply grow with the call order.
    lanes = {}
    for c in sorted(calls, key=lambda c: (c["c"], c["s"])):
        if c["k"].startswith("audit"):
            continue
        own = by_call.get((c["id"], 0), [])
        if len(own) == 1:
            lanes.setdefault((c["c"], c["conn"]), []).append((c, own[0][0]))
    for lane in lanes.values():
        top = 0
        for c, rid in lane:
            if rid < top:
                counter(c["k"])["out_of_order"] += 1
                bad("out_of_order", c, "row id %d after an earlier call's %d on the same connection" % (rid, top))
            top = max(top, rid)

    # Dead letters: each explained by the schedule.
    unexplained = []
    explained = {}
    listing = []
    for d in dead:
        cid = dead_letter_call(d)
        call = call_by_id.get(cid)
        why = explain(d, call, events, role_of)
        listing.append(dict(id=d[0], call=cid, kind=call["k"] if call else None, outcome=call["o"] if call else None,
                            sqlstate=d[6], error=d[7], attempts=d[8], cause=why))
        if why:
            explained[d[6]] = explained.get(d[6], 0) + 1
        else:
            unexplained.append("dead letter %d (call %s, %s, %s attempts): %s" % (d[0], cid, d[6], d[8], d[7]))
    res.summary["dead_letters"] = len(dead)
    res.dead_letters = listing
    res.summary["dead_letters_by_sqlstate"] = explained
    if unexplained:
        res.fail("every dead letter explained by the schedule", "%d unexplained: %s" % (
            len(unexplained), "; ".join(unexplained[:5])))

    total = {}
    for n in res.by_kind.values():
        for key, v in n.items():
            total[key] = total.get(key, 0) + v
    res.summary["total"] = total
    for what, title in (("lost", "every acknowledged call applied (or dead-lettered)"),
                        ("duplicated", "nothing applied twice"),
                        ("out_of_order", "per-caller order kept"),
                        ("mismatched", "atx_exec results and audit outcomes equal what was applied"),
                        ("phantom", "nothing applied for a call the server refused")):
        if total.get(what):
            res.fail(title, "%d: %s" % (total[what], "; ".join(examples.get(what, [])[:20])))
    for kind in ("log", "exec", "keyed", "nested", "audit_commit"):
        if not res.by_kind.get(kind, {}).get("ack"):
            res.fail("workload", "no acknowledged %s call" % kind)

    recovery(calls, by_call, events, run, res)
    memory(run, res)
    exits(run.get("applier_exits") or [], res)
    res.summary["replica_reinits"] = len(run.get("reinits") or [])
    res.summary["grants_regranted"] = run.get("regrants", 0)
    if run.get("hung"):
        res.fail("no call hung", "; ".join(run["hung"][:5]))
    if not run.get("drained", (True, ""))[0]:
        res.fail("drained after the faults", run["drained"][1])
    return res


def exits(applier_exits, res):
    """An applier that exits by itself is a finding. (Started while its state directory was full,
    it used to exit 1, which the shipped unit does not restart; it now waits for room, so that
    exit is a failure like any other.)"""
    res.summary["applier_exits"] = len(applier_exits)
    if applier_exits:
        res.fail("the applier never exited by itself", "; ".join(
            "status %s (faults since it started: %s): %s" % (rc, faults, why or "-")
            for _, rc, faults, why in applier_exits[:5]))


def recovery(calls, by_call, events, run, res):
    """For each fault: from its end (the nemesis's last act: restart, resume, mend, grant; a
    failover's or switchover's start) to the first row of a call acknowledged after that end."""
    firsts = []   # (t0 of the call, applied_at, client)
    for c in calls:
        if c["o"] == "ack" and not c["k"].startswith("audit"):
            own = by_call.get((c["id"], 0), [])
            if own:
                firsts.append((c["t0"], own[0][5], c["c"]))
    firsts.sort()
    bound = run["recovery_bound"]
    starts = sorted(e.injected for e in events if e.injected is not None)
    for e in events:
        f = res.faults.setdefault(e.kind, dict(planned=0, injected=0, skipped=0, recovery=[], over=[]))
        f["planned"] += 1
        if e.injected is None:
            f["skipped"] += 1
            continue
        f["injected"] += 1
        h = e.healed or e.injected
        role = e.arg.get("role") if e.kind == "privilege_revoke" else None
        best = None
        for t0, applied, client in firsts:
            if t0 < h or (role is not None and client != role):
                continue
            best = applied if best is None else min(best, applied)
            if t0 > h + 120:
                break
        if best is None:
            if run["t_end"] - h > bound:
                f["over"].append("#%d: no delivery after it" % e.n)
            continue
        r = max(0.0, best - h)
        f["recovery"].append(r)
        if r > bound and not any(h < s <= h + r for s in starts):
            f["over"].append("#%d: %.1f s" % (e.n, r))
    allr = []
    for kind, f in res.faults.items():
        allr += f["recovery"]
        if f["over"]:
            res.fail("delivery resumed within %d s of each fault" % bound, "%s: %s" % (kind, ", ".join(f["over"][:5])))
    res.summary["recovery"] = dict(n=len(allr), p50=pct(allr, 50), p99=pct(allr, 99), max=max(allr) if allr else None)


def memory(run, res):
    """The applier's resident memory: the peak of the last quarter of the run against the first
    quarter's (samples of every incarnation; a leak grows within each)."""
    s = run.get("rss") or []
    if len(s) < 8:
        res.notes.append("too few RSS samples (%d) to judge the applier's memory" % len(s))
        return
    t0, t1 = s[0][0], s[-1][0]
    q = (t1 - t0) / 4
    first = [kb for t, _, kb in s if t <= t0 + q]
    last = [kb for t, _, kb in s if t >= t1 - q]
    res.summary["rss_kb"] = dict(first_quarter_max=max(first), last_quarter_max=max(last),
                                 max=max(kb for _, _, kb in s), samples=len(s),
                                 incarnations=len({p for _, p, _ in s}))
    limit = max(first) * 1.5 + 32 * 1024
    if max(last) > limit:
        res.fail("the applier's memory did not grow", "RSS peak %d kB in the last quarter, %d kB in the first"
                 % (max(last), max(first)))


def fmt_s(v):
    return "-" if v is None else ("%.1f" % v)


def report_markdown(res, events, meta):
    """The tables docs/reliability.md shows for a round."""
    out = []
    out.append("| fault | injected | not reached | recovery p50 / p99 / max (s) |")
    out.append("|---|---|---|---|")
    for kind in meta["kinds"]:
        f = res.faults.get(kind, dict(injected=0, skipped=0, recovery=[]))
        r = f["recovery"]
        out.append("| %s | %d | %d | %s / %s / %s |" % (kind.replace("_", " "), f["injected"], f["skipped"],
                                                         fmt_s(pct(r, 50)), fmt_s(pct(r, 99)),
                                                         fmt_s(max(r) if r else None)))
    rs = res.summary.get("recovery", {})
    out.append("| **all** | %d | %d | %s / %s / %s |" % (
        sum(f["injected"] for f in res.faults.values()), sum(f["skipped"] for f in res.faults.values()),
        fmt_s(rs.get("p50")), fmt_s(rs.get("p99")), fmt_s(rs.get("max"))))
    out.append("")
    out.append("| calls | made | acknowledged | refused | unknown | applied once | dead-lettered | key already applied "
               "| lost | duplicated | out of order | result ≠ applied |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    keys = ("calls", "ack", "error", "unknown", "applied", "dead", "duplicate_key", "lost", "duplicated",
            "out_of_order", "mismatched")
    for kind in sorted(res.by_kind):
        n = res.by_kind[kind]
        out.append("| %s | %s |" % (kind.replace("_", " "), " | ".join(str(n[k]) for k in keys)))
    t = res.summary.get("total", {})
    out.append("| **all** | %s |" % " | ".join("**%d**" % t.get(k, 0) for k in keys))
    return "\n".join(out)
