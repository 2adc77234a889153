"""The seeded, grammar-based generator of hostile messages, and their rendering as SQL.

A round's plan is a list of attacker sessions, each a list of units run in order on one
connection: emit a message (atx_log, atx_log_keyed, atx_exec, atx_log in a transaction that rolls
back), flood the abandoned-id ring, hold a lock while emitting, listen, forge a notification, call
the functions PUBLIC may execute, emit through the victim's SECURITY DEFINER function. Every
emitted message has a session prelude (SET ROLE group, SET of any setting) and a body: top-level
statements (DO blocks, fixed statements, the victim's own statement texts) with parameters of odd
types. DO blocks are built from nested PL/pgSQL statements: sleep, busy loop, catch (query_canceled,
OTHERS, ...) around anything, loops, RAISE of any SQLSTATE as error or notice with texts that
imitate the server's (control bytes, NEL, U+2028 included), NOTIFY/LISTEN, set_config of any
setting, nested atx_log/atx_exec (with a tiny atx.exec_timeout, caught, cancel or apply on
abandon), COMMIT, advisory and row locks (deadlocking with its own nested atx_exec), cursors WITH
HOLD, temp tables, PREPARE, attempts to kill its own or other backends, huge plans and results.

Everything is a Node(kind, args, body) or a Unit, so that a plan is JSON, and the shrinker can take
pieces away generically (fz_shrink). The issue's rows 1-16 are patterns in the same grammar, mixed
with random compositions, so that a short round meets each mechanism.
"""
import copy
import random
import re

from fz_sql import CANARY, lit, text_expr
from fz_vocab import (ATTACKERS, HANDLERS, IMITATIONS, KILLS, PARAMS, PROBE_SETTINGS, PROBES, SETTINGS, SPECIALS,
                      SQLSTATES, UNRECEIVABLE, UTILITIES)


class Node:
    """One statement of the grammar: kind, scalar arguments, and a body of nodes."""
    __slots__ = ("kind", "args", "body")

    def __init__(self, kind, args=None, body=None):
        self.kind, self.args, self.body = kind, dict(args or {}), list(body or [])

    def to_json(self):
        d = {"kind": self.kind}
        if self.args:
            d["args"] = self.args
        if self.body:
            d["body"] = [b.to_json() for b in self.body]
        return d

    @staticmethod
    def from_json(d):
        return Node(d["kind"], d.get("args"), [Node.from_json(b) for b in d.get("body", [])])

    def size(self):
        return 1 + sum(b.size() for b in self.body)


class Unit:
    """One client action of an attacker session."""

    def __init__(self, kind, via="atx_log", set_role=None, prelude=None, params=None, body=None, args=None,
                 gap=0.0):
        self.kind = kind              # emit | ring | flood | holdlock | listen | notify | rlsfns | enqueue
        self.via = via                # atx_log | atx_log_keyed | atx_exec | rollback
        self.set_role = set_role
        self.prelude = list(prelude or [])    # [(setting, value)]
        self.params = list(params or [])      # keys of PARAMS
        self.body = list(body or [])          # top-level statements (Nodes)
        self.args = dict(args or {})
        self.gap = gap

    def to_json(self):
        return {"kind": self.kind, "via": self.via, "set_role": self.set_role,
                "prelude": [list(p) for p in self.prelude], "params": self.params,
                "body": [b.to_json() for b in self.body], "args": self.args, "gap": self.gap}

    @staticmethod
    def from_json(d):
        return Unit(d["kind"], d.get("via", "atx_log"), d.get("set_role"), [tuple(p) for p in d.get("prelude", [])],
                    d.get("params", []), [Node.from_json(b) for b in d.get("body", [])], d.get("args"),
                    d.get("gap", 0.0))

    def size(self):
        return 1 + len(self.prelude) + len(self.params) + sum(b.size() for b in self.body)


class Session:
    def __init__(self, login, units, label=""):
        self.login, self.units, self.label = login, list(units), label

    def to_json(self):
        return {"login": self.login, "label": self.label, "units": [u.to_json() for u in self.units]}

    @staticmethod
    def from_json(d):
        return Session(d["login"], [Unit.from_json(u) for u in d["units"]], d.get("label", ""))


class Plan:
    """A round: attacker sessions, and whether the rogue operator and the crash-killer play."""

    def __init__(self, sessions, rogue=False, poison=False, patterns=()):
        self.sessions, self.rogue, self.poison, self.patterns = list(sessions), rogue, poison, list(patterns)

    def to_json(self):
        return {"sessions": [s.to_json() for s in self.sessions], "rogue": self.rogue, "poison": self.poison,
                "patterns": self.patterns}

    @staticmethod
    def from_json(d):
        return Plan([Session.from_json(s) for s in d["sessions"]], d.get("rogue", False), d.get("poison", False),
                    d.get("patterns", []))

    def units(self):
        return [(i, j, u) for i, s in enumerate(self.sessions) for j, u in enumerate(s.units)]

    def size(self):
        return sum(u.size() for _, _, u in self.units()) + int(self.rogue) + int(self.poison)

    def copy(self):
        return copy.deepcopy(self)


# --------------------------------------------------------------------------------------------
# Rendering

def render_top(n):
    """A top-level statement of a message's text."""
    k, a = n.kind, n.args
    if k == "do":
        body = render_stmts(n.body, 1)
        inner = f" BEGIN\n{body}\nEND "
        q = lit(inner)
        return f"DO {q}"
    if k == "raw":
        return a["sql"]
    if k == "params_select":
        return "SELECT " + ", ".join(f"${i + 1}" + ("::text" if a.get("as_text") else "") for i in range(a["n"]))
    if k == "bigvalues":
        return "SELECT count(*) FROM (VALUES " + big(a["n"]) + ") v(x)"
    if k == "probe":
        return PROBES[a["probe"]]
    raise ValueError(f"unknown top-level kind {k}")


def render_text(tops):
    return ";\n".join(render_top(t) for t in tops)


# A VALUES list of n rows, as a marker until the text is sent (or printed, as an expression).
_BIG = re.compile("\x00BIG:(\\d+)\x00")


def big(n):
    return f"\x00BIG:{n}\x00"


def text_arg(text, printable):
    """The statement text as an argument: the literal sent, or for printing an expression that
    builds the same text without pasting 200,000 VALUES rows."""
    if not printable:
        return lit(_BIG.sub(lambda m: ",".join(["(1)"] * int(m.group(1))), text))
    parts = _BIG.split(text)
    out = []
    for i, p in enumerate(parts):
        if i % 2 == 0:
            if p:
                out.append(lit(p))
        else:
            out.append(f"(SELECT string_agg('(1)', ',') FROM generate_series(1, {p}))")
    return " || ".join(out) if out else "''"


def _ind(s, depth):
    pad = "    " * depth
    return "\n".join(pad + line if line else line for line in s.split("\n"))


def render_stmts(nodes, depth):
    return "\n".join(_ind(render_stmt(n, depth), depth) for n in nodes) if nodes else _ind("NULL;", depth)


def render_stmt(n, depth):
    """A PL/pgSQL statement (inside a DO block)."""
    k, a = n.kind, n.args
    if k == "sleep":
        return f"PERFORM pg_sleep({a['secs']});"
    if k == "busy":
        return (f"DECLARE t timestamptz := clock_timestamp(); BEGIN\n"
                f"    WHILE clock_timestamp() < t + interval '{a['secs']} s' LOOP END LOOP;\nEND;")
    if k == "raise":
        text = text_expr(a["text"])
        extra = ""
        if a.get("detail"):
            extra = ", DETAIL = " + text_expr(a["detail"])
        return f"RAISE {a['level']} USING ERRCODE = '{a['code']}', MESSAGE = {text}{extra};"
    if k == "notify":
        return f"PERFORM pg_notify({lit(a['channel'])}, {lit(a['payload'])});"
    if k == "set_config":
        return f"PERFORM set_config({lit(a['name'])}, {lit(a['value'])}, {'true' if a['local'] else 'false'});"
    if k == "utility":
        return f"EXECUTE {lit(a['sql'])};"
    if k == "perform":
        return f"PERFORM {a['expr']};"
    if k == "sql":
        return a["sql"] + ";"
    if k == "commit":
        return "COMMIT;"
    if k == "gate":
        return f"PERFORM 1 / (SELECT count(*) FROM fz_att.gate WHERE g = {a['g']})::int;"
    if k == "once":
        return f"INSERT INTO fz_att.once(tag) VALUES ({lit(a['tag'])});"
    if k == "bigvalues":
        return "PERFORM count(*) FROM (VALUES " + big(a["n"]) + ") v(x);"
    if k == "memhog":
        return f"PERFORM length(repeat('x', {a['mb']} * 1024 * 1024));"
    if k == "poison":
        # Marks the backend for the crash-killer (fz_round), as a message that crashes its backend.
        return "PERFORM set_config('application_name', 'fz-poison', true);"
    if k == "emit":
        text = render_text(n.body)
        pre = []
        if "timeout" in a:
            pre.append(f"PERFORM set_config('atx.exec_timeout', {lit(a['timeout'])}, true);")
        if "abandon" in a:
            pre.append(f"PERFORM set_config('atx.exec_on_abandon', {lit(a['abandon'])}, true);")
        call = f"PERFORM {a['fn']}({lit(text)});"
        s = "\n".join(pre + [call])
        if a.get("caught"):
            return f"BEGIN\n{_ind(s, 1)}\nEXCEPTION WHEN OTHERS THEN NULL;\nEND;"
        return s
    if k == "catch":
        return f"BEGIN\n{render_stmts(n.body, 1)}\nEXCEPTION WHEN {a['handler']} THEN NULL;\nEND;"
    if k == "loop":
        return (f"DECLARE t timestamptz := clock_timestamp(); BEGIN\n"
                f"    WHILE clock_timestamp() < t + interval '{a['secs']} s' LOOP\n"
                f"{render_stmts(n.body, 2)}\n    END LOOP;\nEND;")
    if k == "block":
        return f"BEGIN\n{render_stmts(n.body, 1)}\nEND;"
    raise ValueError(f"unknown statement kind {k}")


def unit_sql(u, rls_functions=(), printable=False):
    """The statements the attacker's client runs for a unit, in order (each on its own)."""
    out = ["RESET ROLE", "RESET ALL"]
    if u.set_role:
        out.append(f"SET ROLE {u.set_role}")
    for name, value in u.prelude:
        # set_config, not SET: a list value (search_path) is then parsed as a list, not one name.
        out.append(f"SELECT set_config({lit(name)}, {lit(value)}, false)")
    if u.kind in ("emit", "holdlock"):
        args = [text_arg(render_text(u.body), printable)] + [PARAMS[p] for p in u.params]
        if u.via == "atx_log_keyed":
            args.insert(0, lit(u.args.get("key", "k")))
        fn = {"rollback": "atx_log", "atx_log_keyed": "atx_log_keyed"}.get(u.via, u.via)
        call = f"SELECT {fn}({', '.join(args)})"
        if u.kind == "holdlock":
            out += ["BEGIN", "LOCK TABLE fz_att.t IN ACCESS EXCLUSIVE MODE", call,
                    f"SELECT pg_sleep({u.args['secs']})", "COMMIT"]
        elif u.via == "rollback":
            out += ["BEGIN", call, "ROLLBACK"]
        else:
            out.append(call)
    elif u.kind == "ring":
        out.append("SET atx.exec_timeout = 1")
        out.append("DO $q$ BEGIN FOR i IN 1.." + str(u.args["n"]) + " LOOP BEGIN PERFORM atx_exec('SELECT 1'); "
                   "EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $q$")
    elif u.kind == "flood":
        # distinct statements: each takes an entry of any per-statement cache of the apply side
        out.append(f"SELECT count(atx_log('SELECT ' || i || ' AS fz_flood')) FROM generate_series(1, {u.args['n']}) i")
    elif u.kind == "listen":
        out.append("LISTEN atx_dead_letter")
    elif u.kind == "notify":
        out.append(f"NOTIFY atx_dead_letter, {lit(u.args['payload'])}")
    elif u.kind == "rlsfns":
        out += [f"SELECT {f}('victim.aud')" for f in rls_functions]
    elif u.kind == "enqueue":
        out.append(f"SELECT victim.enqueue({lit(u.args['tag'])})")
    return out


def plan_sql(plan, rls_functions=()):
    """The whole plan as SQL a user can paste, one psql session per attacker session."""
    lines = ["-- roles and objects: tools/fuzz_apply/fz_setup.sql; the victim (fz_victim.py) writes meanwhile"]
    for i, s in enumerate(plan.sessions):
        lines.append(f"-- session {i + 1}{' (' + s.label + ')' if s.label else ''}: psql -U {s.login} postgres")
        for u in s.units:
            if u.gap >= 0.05:
                lines.append(f"SELECT pg_sleep({u.gap:.2f});")
            for stmt in unit_sql(u, rls_functions, printable=True):
                if stmt in ("RESET ROLE", "RESET ALL") and len(s.units) == 1:
                    continue
                lines.append(stmt + ";")
    gates = sorted({n.args["g"] for _, _, u in plan.units() for n in walk(u.body) if n.kind == "gate"})
    if gates:
        lines.append("-- then the operator: once atx.apply_horizon has passed the dead-lettered message, open its gate")
        lines.append(f"--   (INSERT INTO fz_att.gate VALUES ({gates[0]})) and, as the applier role,")
        lines.append("--   SELECT * FROM atx.retry_dead_letter("
                     "(SELECT id FROM atx.dead_letter WHERE sqlstate = '22012'));")
    if plan.rogue:
        lines.append("-- and, as a member of atx_applier, while the victim's atx_exec waits:")
        lines.append("--   SELECT atx.dead_letter_message(<its lsn>, '28P01', '<any text>', 1, now());")
    if plan.poison:
        lines.append("-- and the apply backend of each message that sets application_name 'fz-poison' is "
                     "SIGKILLed as soon as it shows (as an out-of-memory kill would)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Generation

class Gen:
    def __init__(self, rng, round_no):
        self.r = rng
        self.round = round_no
        self.tags = 0
        self.in_loop = 0        # a tagged insert must run once per message: never inside a loop

    def tag(self, what):
        self.tags += 1
        return f"r{self.round}-{what}{self.tags}"

    def pick(self, weighted):
        items, weights = zip(*weighted)
        return self.r.choices(items, weights)[0]

    # ---- texts and leaves
    def text(self):
        r = self.r
        base = r.choice(IMITATIONS)
        parts = [base]
        if r.random() < 0.7:
            parts.append(f" {CANARY}")
        if r.random() < 0.35:
            parts += [r.choice(SPECIALS), f"level=critical event=forged {CANARY}"]
        if r.random() < 0.1:
            parts.append("y" * r.choice([1000, 20000]))
        return parts

    def raise_node(self):
        r = self.r
        level = self.pick([("EXCEPTION", 5), ("WARNING", 3), ("NOTICE", 2), ("LOG", 1)])
        a = {"level": level, "code": r.choice(SQLSTATES), "text": self.text()}
        if r.random() < 0.3:
            a["detail"] = self.text()
        return Node("raise", a)

    def set_config_node(self):
        name = self.r.choice(list(SETTINGS))
        return Node("set_config", {"name": name, "value": self.r.choice(SETTINGS[name]),
                                   "local": self.r.random() < 0.3})

    def secs(self, short=False):
        return self.r.choice([0.05, 0.2, 0.5, 1] if short else [0.05, 0.5, 2, 5, 20, 60])

    def leaf(self, depth):
        r = self.r
        k = self.pick([("sleep", 6), ("busy", 3), ("raise", 8), ("notify", 2), ("set_config", 6), ("utility", 3),
                       ("kill", 2), ("lock", 3), ("rowlock_exec", 1), ("emit", 4 if depth < 3 else 0),
                       ("commit", 1), ("gate", 1), ("once", 0 if self.in_loop else 2), ("bigvalues", 1), ("memhog", 1),
                       ("defer", 1),
                       ("enqueue", 1), ("update", 2)])
        if k == "sleep":
            return Node("sleep", {"secs": self.secs()})
        if k == "busy":
            return Node("busy", {"secs": self.secs()})
        if k == "raise":
            return self.raise_node()
        if k == "notify":
            return Node("notify", {"channel": r.choice(["atx_dead_letter", "fz_chan"]),
                                   "payload": r.choice(["00000000-0000-7000-8000-000000000000", CANARY])})
        if k == "set_config":
            return self.set_config_node()
        if k == "utility":
            return Node("utility", {"sql": r.choice(UTILITIES)})
        if k == "kill":
            return Node("perform", {"expr": r.choice(KILLS)})
        if k == "lock":
            return Node("perform", {"expr": r.choice(["pg_advisory_lock(21)", "pg_advisory_xact_lock(21)",
                                                      "pg_try_advisory_lock(22)", "pg_advisory_lock_shared(23)"])})
        if k == "rowlock_exec":
            i = r.randint(1, 20)
            inner = Node("raw", {"sql": f"UPDATE fz_att.t SET v = v + 1 WHERE id = {i}"})
            return Node("block", body=[Node("sql", {"sql": f"PERFORM 1 FROM fz_att.t WHERE id = {i} FOR UPDATE"}),
                                       Node("emit", {"fn": "atx_exec", "caught": True,
                                                     "abandon": r.choice(["cancel", "apply"])}, [inner])])
        if k == "emit":
            return self.emit_node(depth)
        if k == "commit":
            return Node("commit")
        if k == "gate":
            return Node("gate", {"g": r.randint(1, 1000000)})
        if k == "once":
            return Node("once", {"tag": self.tag("once")})
        if k == "bigvalues":
            return Node("bigvalues", {"n": r.choice([1000, 50000])})
        if k == "memhog":
            return Node("memhog", {"mb": r.choice([16, 200])})
        if k == "defer":
            return Node("sql", {"sql": "INSERT INTO fz_att.dtab VALUES (1)"})
        if k == "enqueue":
            return Node("perform", {"expr": f"victim.enqueue({lit(self.tag('enq'))})"})
        return Node("sql", {"sql": f"UPDATE fz_att.t SET v = v + 1 WHERE id = {r.randint(1, 20)}"})

    def emit_node(self, depth):
        r = self.r
        fn = self.pick([("atx_log", 5), ("atx_exec", 4), ("atx_exec_noraise", 1)])
        a = {"fn": fn, "caught": fn != "atx_log" or r.random() < 0.3}
        if fn != "atx_log":
            if r.random() < 0.7:
                a["timeout"] = r.choice(["1", "1ms", "50ms", "2s"])
            if r.random() < 0.7:
                a["abandon"] = r.choice(["cancel", "apply"])
        return Node("emit", a, self.tops(depth + 1))

    def stmts(self, depth, budget):
        out = []
        while budget > 0:
            r = self.r
            k = self.pick([("leaf", 6), ("catch", 3 if depth < 4 else 0), ("loop", 2 if depth < 4 else 0),
                           ("block", 1 if depth < 4 else 0)])
            if k == "leaf":
                out.append(self.leaf(depth))
                budget -= 1
            else:
                self.in_loop += k == "loop"
                inner = self.stmts(depth + 1, r.randint(1, min(3, budget)))
                self.in_loop -= k == "loop"
                budget -= len(inner) + 1
                if k == "catch":
                    out.append(Node("catch", {"handler": r.choice(HANDLERS)}, inner))
                elif k == "loop":
                    out.append(Node("loop", {"secs": self.r.choice([0.5, 2, 8, 20])},
                                    [Node("catch", {"handler": "query_canceled"}, inner)]))
                else:
                    out.append(Node("block", body=inner))
        return out

    def raw(self):
        r = self.r
        return Node("raw", {"sql": r.choice([
            "SELECT 1", "VACUUM fz_att.t", "CALL fz_att.commit_loop(1)", f"SELECT fz_att.hog({r.choice([2, 20])})",
            f"CALL fz_att.na_hog({r.choice([2, 20])})", "INSERT INTO fz_att.dtab VALUES (1)",
            f"UPDATE fz_att.t SET v = v + 1 WHERE id = {r.randint(1, 20)}", "LOCK TABLE fz_att.t",
            "SELECT pg_terminate_backend(pg_backend_pid())", f"SET rt.tenant = '{CANARY}'",
            "SET standard_conforming_strings = off", "SET DateStyle = 'SQL, DMY'", "RESET ALL", "DISCARD ALL",
            "SET ROLE fz_victim", "SET SESSION AUTHORIZATION fz_victim", "LISTEN atx_dead_letter",
            "NOTIFY atx_dead_letter, '00000000-0000-7000-8000-000000000000'", "PREPARE fzp AS SELECT 1",
            "DECLARE fzc CURSOR WITH HOLD FOR SELECT 1", "CREATE TEMP TABLE fztmp(x int)", "BEGIN", "COMMIT",
            "ROLLBACK", "SAVEPOINT s", "SELECT repeat('x', 1000000) FROM generate_series(1, 100)",
            "SELECT generate_series(1, 3000000)", "SET statement_timeout = 0", "SET lock_timeout = 0",
            "SELECT set_config('search_path', 'fz_att, pg_catalog', false)"])})

    def tops(self, depth):
        r = self.r
        n = 1 if r.random() < 0.8 else 2
        out = []
        for _ in range(n):
            k = self.pick([("do", 6), ("raw", 3), ("bigvalues", 1 if depth == 0 else 0)])
            if k == "do":
                out.append(Node("do", body=self.stmts(depth, r.randint(1, 5))))
            elif k == "raw":
                out.append(self.raw())
            else:
                out.append(Node("bigvalues", {"n": r.choice([20000, 100000])}))
        return out

    def prelude(self):
        out = []
        for _ in range(self.pick([(0, 4), (1, 3), (2, 2), (4, 1)])):
            name = self.r.choice(list(SETTINGS))
            out.append((name, self.r.choice(SETTINGS[name])))
        return out

    def random_unit(self, login):
        r = self.r
        if r.random() < 0.1:
            # The client holds a lock its own message needs: with atx_exec a deadlock with the
            # caller (40P01), with atx_log a lane that waits (lock_timeout, retries).
            i = r.randint(1, 20)
            return Unit("holdlock", r.choice(["atx_log", "atx_exec"]), self.group(login), self.prelude(), [],
                        [Node("raw", {"sql": f"UPDATE fz_att.t SET v = v + 1 WHERE id = {i}"})],
                        {"secs": r.choice([2, 8])}, gap=r.choice([0, 1]))
        params = []
        if r.random() < 0.35:
            params = r.sample(list(PARAMS), r.randint(1, 3))
        body = self.tops(0)
        if params:
            body.insert(0, Node("params_select", {"n": len(params), "as_text": r.random() < 0.3}))
        via = self.pick([("atx_log", 8), ("atx_log_keyed", 1), ("atx_exec", 2), ("rollback", 1)])
        u = Unit("emit", via, self.group(login), self.prelude(), params, body, gap=r.choice([0, 0.2, 1, 3]))
        if via == "atx_log_keyed":
            u.args["key"] = r.choice(["k", self.tag("key")])
        if via == "atx_exec" and r.random() < 0.8:
            u.prelude.append(("atx.exec_timeout", r.choice(["1", "200ms", "2s"])))
        return u

    def group(self, login):
        return self.r.choice(ATTACKERS[login]) if self.r.random() < 0.5 else None

    def login(self):
        return self.r.choice(list(ATTACKERS))

    # ---- the rows, in the same grammar
    def stall_unit(self, login, secs=None):
        secs = secs or self.r.choice([20, 60, 100])
        loop = Node("loop", {"secs": secs}, [Node("catch", {"handler": "query_canceled"},
                                                  [Node("sleep", {"secs": 0.5})])])
        return Unit("emit", "atx_log", self.group(login), [], [], [Node("do", body=[loop])])

    def stall_sessions(self, label, secs=None):
        """Row 3: two stalling lanes from each of two group roles of one attacker (all 4 sessions
        of the applier's defaults, whatever the per-role budget)."""
        login = self.login()
        out = []
        for group in ATTACKERS[login]:
            for _ in range(2):
                u = self.stall_unit(login, secs)
                u.set_role = group
                out.append(Session(login, [u], label))
        return out

    def pattern(self, row):
        r = self.r
        L = self.login()
        emit = lambda body, **kw: Unit("emit", kw.pop("via", "atx_log"), kw.pop("set_role", None),
                                       kw.pop("prelude", []), kw.pop("params", []), body, **kw)
        if row == 1:
            p = r.choice(UNRECEIVABLE)
            return [Session(L, [emit([Node("params_select", {"n": 1})], params=[p])], "row 1")]
        if row == 2:
            n = Node("raise", {"level": "EXCEPTION", "code": "57014", "text": ["not really"]})
            return [Session(L, [emit([Node("do", body=[n])])], "row 2")]
        if row == 3:
            return self.stall_sessions("row 3")
        if row == 4:
            body = [Node("poison"), Node("raise", {"level": "WARNING", "code": "57P01",
                                                    "text": ["terminating connection due to administrator command"]}),
                    Node("sleep", {"secs": 20})]
            return [Session(L, [emit([Node("do", body=body)])], "row 4")]
        if row == 5:
            # Flood the per-statement caches with distinct statements first, so that the victim's
            # own earlier parse is gone, then send its statement text under other settings.
            probe = r.choice(list(PROBES))
            return [Session(self.login(), [Unit("flood", args={"n": 80}),
                                           emit([Node("probe", {"probe": probe})],
                                                prelude=PROBE_SETTINGS[probe] + [("atx.validate", "off")],
                                                params=["text"])],
                            "row 5") for _ in range(r.randint(3, 8))]
        if row == 6:
            return [Session(L, [emit([Node("bigvalues", {"n": r.choice([150000, 200000])})])
                                for _ in range(r.randint(2, 3))], "row 6")]
        if row == 7:
            return [Session(L, [emit([Node("raw", {"sql": "SELECT fz_att.hog(20)"})])], "row 7") for _ in range(2)]
        if row == 8:
            return [Session(L, [emit([Node("raw", {"sql": "CALL fz_att.na_hog(20)"})])], "row 8")]
        if row == 9:
            return self.stall_sessions("row 9", 30) + [Session(L, [Unit("ring", args={"n": 300}, gap=4.0)], "row 9")]
        if row == 10:
            return [Session(L, [self.stall_unit(L, 30)], "row 10") for _ in range(2)] + \
                   [Session(L, [self.stall_unit(L, 30), Unit("enqueue", args={"tag": self.tag("enq")})], "row 10")
                    for _ in range(2)]
        if row == 11:
            inner = Node("raw", {"sql": f"INSERT INTO fz_att.once(tag) VALUES ({lit(self.tag('nested-once'))})"})
            body = [Node("do", body=[Node("emit", {"fn": "atx_log"}, [inner]),
                                     Node("gate", {"g": r.randint(1, 10 ** 6)})])]
            return [Session(L, [emit(body)], "row 11")]
        if row == 13:
            return [Session(L, [emit([Node("raw", {"sql": "SELECT 1"})], prelude=[("rt.tenant", "mal")])
                                for _ in range(8)], "row 13")]
        if row == 14:
            return [Session(L, [Unit("rlsfns")], "row 14")]
        if row == 15:
            forged = Unit("notify", args={"payload": "00000000-0000-7000-8000-000000000000"})
            return [Session(L, [Unit("listen"), forged], "row 15")]
        if row == 16:
            n = Node("raise", {"level": "EXCEPTION", "code": "P0001",
                               "text": ["x", 0x85, f"level=critical {CANARY} forged", 0x2028, "y"]})
            return [Session(L, [emit([Node("do", body=[n])])], "row 16")]
        raise ValueError(row)


PATTERN_ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]


def generate(seed, round_no, patterns=None, random_sessions=None):
    """The plan of one round: a deterministic function of (seed, round)."""
    rng = random.Random(f"fuzz_apply:{seed}:{round_no}")
    g = Gen(rng, round_no)
    if patterns is None:
        weights = {4: 0.3}        # each kill restarts the server: rarer
        rows = [x for x in PATTERN_ROWS if rng.random() < 0.25 * weights.get(x, 1)]
    else:
        rows = list(patterns)
    sessions = []
    rogue = poison = False
    for row in rows:
        if row == 12:
            # The rogue operator dead-letters the victim's waiting atx_exec while the sessions
            # are busy (so that it still waits), with a text of its choosing.
            rogue = True
            sessions += g.stall_sessions("row 12", 20)
            continue
        if row == 4:
            poison = True
        sessions += g.pattern(row)
    n_random = rng.randint(1, 4) if random_sessions is None else random_sessions
    for _ in range(n_random):
        login = g.login()
        sessions.append(Session(login, [g.random_unit(login) for _ in range(rng.randint(1, 3))], "random"))
    if any(n.kind == "poison" for s in sessions for u in s.units for n in walk(u.body)):
        poison = True
    return Plan(sessions, rogue, poison, rows)


def walk(nodes):
    for n in nodes:
        yield n
        yield from walk(n.body)
