#!/usr/bin/env bash
# The alert rules that ship (packaging/atx-applier.rules.yml): valid for Prometheus (promtool check
# rules), the critical ones fire and a healthy standby pair fires nothing (promtool test rules),
# and that test bites: rules changed on purpose fail it. docs/operations.md lists exactly these
# alerts, and every metric they use is one the applier exports (its metric table, which
# tests/unit/test_metrics.cc holds to the code). No server needed.
. "$(dirname "$0")/../lib/testlib.sh"

RULES=$ATX_ROOT/packaging/atx-applier.rules.yml
TESTS=$ATX_ROOT/tests/promtool/atx-applier.rules.test.yml
DOC=$ATX_ROOT/docs/operations.md
if ! command -v promtool >/dev/null; then
    not_ok "promtool is installed (Debian's prometheus package; tools/atx deps installs it)"
    done_testing
fi
TEST_DIR=$(mktemp -d)
trap 'rm -rf "$TEST_DIR"' EXIT

out=$(promtool check rules "$RULES" 2>&1)
check "promtool check rules ($(echo "$out" | grep -o '[0-9]* rules found'))" grep -q SUCCESS <<<"$out"
out=$(promtool test rules "$TESTS" 2>&1)
check "promtool test rules: the critical alerts fire, a healthy pair is quiet" grep -q SUCCESS <<<"$out"
grep -q FAIL <<<"$out" && note "$out"

# mutated WHAT SED: the rules changed by SED must fail the test.
mutated() {
    mkdir -p "$TEST_DIR/packaging" "$TEST_DIR/tests/promtool"
    sed "$2" "$RULES" >"$TEST_DIR/packaging/atx-applier.rules.yml"
    cp "$TESTS" "$TEST_DIR/tests/promtool/"
    if cmp -s "$RULES" "$TEST_DIR/packaging/atx-applier.rules.yml"; then
        not_ok "the tests catch $1 (the change did not apply)"
    elif promtool test rules "$TEST_DIR/tests/promtool/atx-applier.rules.test.yml" >/dev/null 2>&1; then
        not_ok "the tests catch $1"
    else
        ok "the tests catch $1"
    fi
}
mutated "a slower AtxNoActiveApplier" '/alert: AtxNoActiveApplier/,/for:/s/for: 2m/for: 30m/'
mutated "AtxSlotAtRisk blind to unreserved" 's/wal_status=~"unreserved|lost"/wal_status="lost"/'
mutated "AtxApplierNotStreaming firing for the standby" 's/ and on(instance, database) atx_database_state{state="standby"} == 0//'
mutated "AtxMessagesLost no longer critical" '/alert: AtxMessagesLost/,/labels:/s/severity: critical/severity: warning/'

in_rules=$(sed -n 's/^ *- alert: \([A-Za-z]*\).*/\1/p' "$RULES" | sort)
in_doc=$(sed -n '/^### Alert rules/,/^## /p' "$DOC" | sed -n 's/^| `\(Atx[A-Za-z]*\)` .*/\1/p' | sort)
check_eq "operations.md lists the alerts the file has" "$(echo "$in_rules" | tr '\n' ' ')" "$(echo "$in_doc" | tr '\n' ' ')"
missing=""
while read -r m; do
    grep -q "^| \`${m}[\`{]\|, \`${m}\`" "$DOC" || missing+=" $m"
done < <(grep '^ *expr:' "$RULES" | grep -o 'atx_[a-z_]*' | sort -u)
check_eq "every metric the rules use is in the metric table" "" "$missing"
done_testing
