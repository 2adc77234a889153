#!/usr/bin/env bash
# Issue 21: a short seeded run of the hostile-message fuzzer (tools/fuzz_apply, docs/fuzzing.md).
# Three rounds, between them every row of the issue (1-16) as a pattern plus random compositions,
# against a throwaway cluster with a victim writing steadily and the applier as the
# least-privilege role; one TAP line per invariant per round, then a summary line. A failure
# prints the violation, the messages it names and the command that replays the round.
# ATX_SEED changes the seed; ATX_FUZZ_MINUTES runs longer (more rounds, seeded patterns).
. "$(dirname "$0")/../lib/testlib.sh"

PY=/usr/bin/python3     # Debian's, with python3-psycopg2 (a pyenv python3 on PATH may lack it)
if ! "$PY" -c 'import psycopg2' 2>/dev/null; then
    not_ok "fuzz_hostile: $PY cannot import psycopg2 (apt-get install python3-psycopg2)"
    done_testing
fi
# The checker's bounds on their own first: a wrong bound fails good rounds or hides bad ones.
if out=$(cd "$ATX_ROOT/tools/fuzz_apply" && "$PY" -m unittest -q test_fz_checks 2>&1); then
    ok "the checker's bounds (tools/fuzz_apply/test_fz_checks.py)"
else
    printf '%s\n' "$out" | sed 's/^/# /'
    not_ok "the checker's bounds (tools/fuzz_apply/test_fz_checks.py)"
fi
SEED=${ATX_SEED:-21}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/pg_atx.fuzz_hostile.XXXXXX")
if [ -n "${ATX_FUZZ_MINUTES:-}" ]; then
    ARGS=(--minutes "$ATX_FUZZ_MINUTES")
else
    # A failing round does not end the run: the next one starts on a fresh cluster.
    # Rows that pin the slot (1, 2) or hold every session (3, 4, 7-10, 12) would hide the others (a
    # pinned slot is never pruned, so row 11's retry could not apply twice): they come later.
    ARGS=(--rounds 3 --keep-going --patterns "5,6,11,13,14,15,16/1,2,3/4,7,8,9,10,12" --random-sessions 2)
fi
start=$SECONDS
# The tool stops its clusters on SIGTERM; the outer bound keeps CI's 3 minutes whatever happens.
timeout -k 10 "${ATX_FUZZ_TIMEOUT:-170}" "$PY" "$ATX_ROOT/tools/fuzz_apply/fuzz_apply.py" --build "$ATX_BUILD_DIR" --seed "$SEED" \
    "${ARGS[@]}" --shrink-seconds 0 --json "$OUT/result.json" >"$OUT/out.txt" 2>"$OUT/err.txt"
rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    # Stopped from outside: whatever cluster of its run is still up goes now.
    work=$(sed -n 's/^template cluster ready in .* (\(.*\)\/template)$/\1/p' "$OUT/err.txt")
    for d in ${work:+"$work"/*/}; do
        [ -f "$d/applier.pid" ] && kill -9 "$(cat "$d/applier.pid")" 2>/dev/null
        atx_cluster_stop "${d%/}" immediate
    done
    [ -n "$work" ] && rm -rf "$work"
fi
grep '^#' "$OUT/out.txt"
if [ ! -s "$OUT/result.json" ]; then
    tail -n 30 "$OUT/err.txt" | sed 's/^/# /'
    not_ok "fuzz_hostile: the fuzzer ran (exit status $rc, no results; seed $SEED)"
    done_testing
fi
# One line per invariant per round: "ok|text" or "not ok|text".
while IFS='|' read -r verdict text; do
    if [ "$verdict" = ok ]; then ok "$text"; else not_ok "$text"; fi
done < <("$PY" - "$OUT/result.json" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1]))
names = {1: "final state in bounded time", 2: "the slot always moves", 3: "nothing crosses roles",
         4: "budgets: the victim keeps being served", 5: "what a caller is told is true", 6: "exactly once"}
for r in d["rounds"]:
    for inv in range(1, 7):
        i = r["invariants"][str(inv)]
        text = f"round {r['round']} (seed {d['seed']}) invariant {inv}: {names[inv]}"
        if not i["ok"]:
            text += " -- " + i["first"][:300].replace("|", "/").replace("\n", " ")
        print(("ok" if i["ok"] else "not ok") + "|" + text)
PYEOF
)
summary=$("$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
n = sum(r["stats"].get("messages", 0) for r in d["rounds"])
print("%d round(s), %d messages, %d violation(s)" % (len(d["rounds"]), n, len(d["violations"])))' "$OUT/result.json")
note "fuzz_hostile summary: seed $SEED, $summary, $((SECONDS - start)) s (replay: tools/atx fuzz-apply --seed $SEED --round N)"
case $summary in
"0 round(s)"*) tail -n 30 "$OUT/err.txt" | sed 's/^/# /'; not_ok "fuzz_hostile: the fuzzer ran no round (seed $SEED)" ;;
esac
case $rc in
0 | 1) ;;
124 | 137) not_ok "fuzz_hostile: the fuzzer did not finish within ${ATX_FUZZ_TIMEOUT:-170} s (seed $SEED)" ;;
*) not_ok "fuzz_hostile: the fuzzer exited with status $rc (seed $SEED)" ;;
esac
if [ "$T_FAILED" = 0 ]; then rm -rf "$OUT"; else note "fuzzer output kept in $OUT"; fi
done_testing
