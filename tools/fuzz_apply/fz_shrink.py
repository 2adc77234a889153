"""Shrinking a failing round to the smallest plan that still breaks the same invariant.

Each trial replays a candidate plan on a fresh copy of the template cluster, with a fresh applier
and the victim writing as in the run (so that a message's lane, the plan cache and the sessions'
state start clean), and asks whether the same invariant fails again. First the sessions and units
the violation names (a message not final points at its unit), then delta debugging over the units
(halves, quarters, ... one by one), then simplification of what is left: prelude settings,
parameters, statements of a DO block taken away one at a time, catch/loop/block unwrapped, numbers
made smaller, atx_exec made atx_log, SET ROLE dropped. Timing makes a trial flaky at worst: a
candidate that passed by chance only leaves the result larger than it could be.
"""
import time

from fz_grammar import Node, Plan, Session


class Shrinker:
    def __init__(self, trial, inv, budget_s, log):
        self.trial = trial          # trial(plan) -> set of failed invariants
        self.inv = inv
        self.deadline = time.time() + budget_s
        self.log = log
        self.trials = 0

    def fails(self, plan):
        if time.time() > self.deadline or not plan.sessions and not plan.rogue and not plan.poison:
            return False
        self.trials += 1
        t0 = time.time()
        failed = self.trial(plan)
        ok = self.inv in failed
        self.log(f"  shrink trial {self.trials}: {len(plan.units())} unit(s), size {plan.size()}: "
                 f"{'still fails' if ok else 'passes'} ({time.time() - t0:.0f} s)")
        return ok

    def out_of_time(self):
        return time.time() > self.deadline

    def run(self, plan, culprits):
        best = plan
        if culprits:
            cand = only_units(plan, culprits)
            if cand.size() < best.size() and self.fails(cand):
                best = cand
        best = self.ddmin_units(best)
        best = self.simplify(best)
        return best

    def ddmin_units(self, plan):
        units = [(i, j) for i, j, _ in plan.units()]
        n = 2
        while len(units) >= 2 and not self.out_of_time():
            chunk = max(1, len(units) // n)
            reduced = False
            for k in range(0, len(units), chunk):
                keep = units[:k] + units[k + chunk:]
                cand = only_units(plan, set(keep), flags=True)
                if self.fails(cand):
                    plan, units = cand, [(i, j) for i, j, _ in cand.units()]
                    n = max(n - 1, 2)
                    reduced = True
                    break
                if self.out_of_time():
                    return plan
            if not reduced:
                if chunk == 1:
                    break
                n = min(len(units), n * 2)
        for flag in ("rogue", "poison"):
            if getattr(plan, flag) and not self.out_of_time():
                cand = plan.copy()
                setattr(cand, flag, False)
                if self.fails(cand):
                    plan = cand
        return plan

    def simplify(self, plan):
        changed = True
        while changed and not self.out_of_time():
            changed = False
            for cand in candidates(plan):
                if self.out_of_time():
                    break
                if cand.size() < plan.size() or _cheaper(cand, plan):
                    if self.fails(cand):
                        plan = cand
                        changed = True
                        break
        return plan


def only_units(plan, keep, flags=True):
    sessions = []
    for i, s in enumerate(plan.sessions):
        units = [u for j, u in enumerate(s.units) if (i, j) in keep]
        if units:
            sessions.append(Session(s.login, units, s.label))
    return Plan(sessions, plan.rogue if flags else False, plan.poison if flags else False, plan.patterns)


def _cheaper(a, b):
    """Same size but shorter waits (a smaller number)."""
    return a.size() == b.size() and _numbers(a) < _numbers(b)


def _numbers(plan):
    total = 0.0
    for _, _, u in plan.units():
        total += u.gap
        for n in _walk(u.body):
            for k in ("secs", "n", "mb"):
                if k in n.args:
                    total += float(n.args[k])
    return total


def _walk(nodes):
    for n in nodes:
        yield n
        yield from _walk(n.body)


def candidates(plan):
    """Plans one simplification away, largest cuts first."""
    for i, j, u in plan.units():
        def with_unit(nu, i=i, j=j):
            p = plan.copy()
            p.sessions[i].units[j] = nu
            return p
        if u.gap:
            nu = _copy_unit(u)
            nu.gap = 0.0
            yield with_unit(nu)
        for k in range(len(u.prelude)):
            nu = _copy_unit(u)
            del nu.prelude[k]
            yield with_unit(nu)
        if u.set_role:
            nu = _copy_unit(u)
            nu.set_role = None
            yield with_unit(nu)
        if u.via != "atx_log" and u.kind == "emit":
            nu = _copy_unit(u)
            nu.via = "atx_log"
            yield with_unit(nu)
        for k in range(len(u.params)):
            nu = _copy_unit(u)
            del nu.params[k]
            _fix_params_select(nu)
            yield with_unit(nu)
        for path, alt in node_candidates(u.body):
            nu = _copy_unit(u)
            nu.body = _replace(nu.body, path, alt)
            if nu.body or u.kind != "emit":
                yield with_unit(nu)


def _copy_unit(u):
    from fz_grammar import Unit
    return Unit.from_json(u.to_json())


def _fix_params_select(u):
    for n in u.body:
        if n.kind == "params_select":
            n.args["n"] = len(u.params)
    u.body = [n for n in u.body if not (n.kind == "params_select" and n.args["n"] == 0)]


def node_candidates(nodes, path=()):
    """(path, replacement list) pairs: remove a node, unwrap it, make its numbers smaller."""
    for k, n in enumerate(nodes):
        p = path + (k,)
        yield p, []
        if n.body and n.kind in ("catch", "loop", "block"):
            yield p, [Node.from_json(b.to_json()) for b in n.body]
        if n.kind == "do" and len(n.body) == 1 and n.body[0].kind in ("catch", "block"):
            nn = Node.from_json(n.to_json())
            nn.body = nn.body[0].body
            yield p, [nn]
        for key, smaller in (("secs", [0.05, 0.5, 2, 5, 20]), ("n", [1000, 20000, 100000]), ("mb", [16])):
            if key in n.args:
                for s in smaller:
                    if s < float(n.args[key]):
                        nn = Node.from_json(n.to_json())
                        nn.args[key] = s
                        yield p, [nn]
                        break
        if n.kind == "emit" and n.args.get("fn") != "atx_log":
            nn = Node.from_json(n.to_json())
            nn.args = {"fn": "atx_log", "caught": nn.args.get("caught", False)}
            yield p, [nn]
        if n.kind == "raise" and n.args.get("detail"):
            nn = Node.from_json(n.to_json())
            del nn.args["detail"]
            yield p, [nn]
        for sub_path, alt in node_candidates(n.body, ()):
            yield p + ("body",) + sub_path, alt


def _replace(nodes, path, alt):
    nodes = [Node.from_json(n.to_json()) for n in nodes]
    k = path[0]
    if len(path) == 1:
        return nodes[:k] + alt + nodes[k + 1:]
    assert path[1] == "body"
    nodes[k].body = _replace(nodes[k].body, path[2:], alt)
    return nodes
