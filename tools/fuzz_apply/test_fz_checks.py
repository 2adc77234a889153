"""The checker's bounds on their own (no server): run by tests/integration/fuzz_hostile.sh.

A bound too tight fails good rounds (CI saw a victim's message, cut short by a crash, reported late
while it waited as a suspect); one too loose hides what the fuzzer is for."""
import types
import unittest

import fz_checks as C
import fz_verdicts as V

B = V.Bounds(3000, 5, 3, 2, 1000, 500)      # limit 3 s, retry window 5 s: a message's bound 18 s


def msg(mid, lane, lsn, emitted, final, run):
    return types.SimpleNamespace(id=mid, lane=lane, lsn=lsn, emitted=emitted, final_at=final, run_start=run,
                                 statement="SELECT 1")


class Deadlines(unittest.TestCase):
    def setUp(self):
        # A victim's message runs at 100.1; the crash at 100.6 cuts it and three hog families short.
        self.victim = msg("v", "L1", "0/10", 100.0, 130.2, 100.1)
        self.hogs = [msg(f"h{i}", f"H{i}", f"0/2{i}", 99.0, 120.0 + i, 99.5) for i in range(3)]
        self.kills = [(81.7, 1), (92.9, 2), (100.6, 3)]
        self.runs = {"v": [100.1], "h0": [99.5], "h1": [99.5], "h2": [99.5]}

    def bound(self, m, msgs, runs):
        return C.deadlines(msgs, B, self.kills, runs)[m.id] - m.emitted

    def test_plain_bound(self):
        m = msg("w", "L9", "0/30", 101.0, 105.0, 101.1)
        self.assertAlmostEqual(self.bound(m, [m], {"w": [101.1]}), 0.1 + B.message())

    def test_a_suspect_waits_for_those_ahead(self):
        msgs = [self.victim] + self.hogs
        self.assertAlmostEqual(self.bound(self.victim, msgs, None), 0.1 + B.message() + V.Bounds.RESTART_S)
        # Four runs cut by the crash: its restart, then one message's bound for each suspect.
        self.assertAlmostEqual(self.bound(self.victim, msgs, self.runs), 0.6 + V.Bounds.RESTART_S + 4 * B.message())

    def test_its_run_again_counts_once_seen(self):
        self.victim.run_start = 125.0
        got = self.bound(self.victim, [self.victim] + self.hogs, self.runs)
        self.assertAlmostEqual(got, 25.0 + B.message())

    def test_a_run_after_the_crash_is_not_cut(self):
        late = msg("x", "L2", "0/40", 101.0, 140.0, 101.5)
        got = self.bound(late, [late] + self.hogs, dict(self.runs, x=[101.5]))
        self.assertAlmostEqual(got, 0.5 + B.message())


if __name__ == "__main__":
    unittest.main()
