#!/usr/bin/env bash
# Hostile payloads, end to end through the applier, from a non-superuser caller "mallory":
# payloads at and just over atx.max_payload_size (default 1MB, found by bisection, and a raised
# 8MB limit), 10,000 parameters (and 65,536: refused), and a broad set of builtin parameter types
# (each value must come back equal to its own text form, computed in the caller's session).
. "$(dirname "$0")/../lib/testlib.sh"

reliability() { echo "# reliability: $1 | $2 | $3 | $4"; }
atx_test_cluster || { not_ok "cluster start"; done_testing; }
q <<'SQL' >/dev/null
CREATE ROLE mallory LOGIN;
CREATE TABLE big(len int, md5 text);
CREATE TABLE manyp(n int, s bigint);
CREATE TABLE typed(typ text, got text, expected text);
CREATE TABLE marker(v int);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE comp AS (a int, b text);
GRANT INSERT ON big, manyp, typed, marker TO mallory;
SQL
M() { PGUSER=mallory q "$@"; }
sqlstate_of() { PGUSER=${EMIT_USER:-mallory} psql -qAtX -v VERBOSITY=verbose "$@" 2>&1 >/dev/null | sed -n 's/^ERROR:  \([0-9A-Z]*\):.*/\1/p' | head -n 1; }
applier_start --statement-timeout-ms 20000
wait_for_slot || not_ok "applier created the slot"
MARK=0
marker() {
    MARK=$((MARK + 1))
    M -c "SELECT atx_log('INSERT INTO marker VALUES (\$1)', $MARK)" >/dev/null
    wait_for "${1:-60}" bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM marker WHERE v = $MARK') = 1 ]"
}
# emit_len LEN [SETTING]: emits an INSERT carrying a text parameter of LEN bytes; prints the SQLSTATE
# of a refusal, or nothing.
emit_len() {
    sqlstate_of -c "${2:-}SELECT atx_log('INSERT INTO big VALUES (length(\$1), md5(\$1))', repeat('x', $1))"
}

# 1. The default limit (1MB): bisect the largest parameter that is accepted.
lo=900000; hi=1048576
[ -z "$(emit_len $lo)" ] || not_ok "a $lo-byte parameter is accepted"
[ "$(emit_len $((hi + 1)))" = 54000 ] || not_ok "a $((hi + 1))-byte parameter is refused"
while [ $((hi - lo)) -gt 1 ]; do
    mid=$(((lo + hi) / 2))
    if [ -z "$(emit_len $mid)" ]; then lo=$mid; else hi=$mid; fi
done
over=$(emit_len $((lo + 1)))
note "default limit: largest accepted text parameter $lo bytes (payload overhead $((1048576 - lo)) bytes); $((lo + 1)) -> ${over:-accepted}"
check_eq "one byte over the limit is refused at emit (54000)" 54000 "$over"
# Each psql is a caller session of its own, so a lane of its own: wait for the row itself.
wait_for 120 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM big WHERE len = $lo') -ge 1 ]"
marker 120
check_eq "the largest accepted payload was applied intact" 1 \
    "$(q -c "SELECT count(*) FROM big WHERE len = $lo AND md5 = md5(repeat('x', $lo))")"
check_eq "no refused payload was applied" 0 "$(q -c "SELECT count(*) FROM big WHERE len > $lo")"
reliability "payload at / over atx.max_payload_size (1MB)" \
    "bisected the largest text parameter accepted by atx_log: $lo bytes; then $((lo + 1))" \
    "at the limit: applied intact (md5); one byte over: ${over:-accepted} at emit, nothing applied" \
    "$([ "$over" = 54000 ] && echo pass || echo FAIL)"

# 2. A raised limit (superuser sets it): an 8MB payload through the stream and the applier.
EMIT_USER=postgres
big_ok=$(emit_len 8000000 "SET atx.max_payload_size = '8MB'; ")
big_over=$(emit_len 8388608 "SET atx.max_payload_size = '8MB'; ")
# A non-superuser's SET is refused (pg_atx is preloaded here; without preload it would only make
# a placeholder, dropped when the library loads): the emit never happens.
mallory_set=$(EMIT_USER=mallory emit_len 2000000 "SET atx.max_payload_size = '8MB'; ")
unset EMIT_USER
# Another role's message runs in another lane: wait for this one's row itself.
wait_for 180 bash -c "[ \$(psql -qAtX -c 'SELECT count(*) FROM big WHERE len = 8000000') = 1 ]" ||
    note "no 8,000,000-byte row after 180 s; dead letters: $(q -c "SELECT string_agg(sqlstate || ' ' || left(error, 80), '; ') FROM atx.dead_letter")"
marker 120
check_eq "8,000,000-byte parameter accepted under an 8MB limit" "" "$big_ok"
check_eq "8MB parameter (payload > 8MB) refused" 54000 "$big_over"
check_eq "mallory cannot raise atx.max_payload_size (SUSET): her SET is refused" 42501 "$mallory_set"
check_eq "the 8,000,000-byte payload applied intact" 1 \
    "$(q -c "SELECT count(*) FROM big WHERE len = 8000000 AND md5 = md5(repeat('x', 8000000))")"
reliability "payload near a raised limit (8MB)" "superuser SET atx.max_payload_size = '8MB'; 8,000,000-byte and 8,388,608-byte parameters; mallory SETs it and emits 2,000,000 bytes" \
    "8,000,000: ${big_ok:-accepted}, applied intact; 8MB: ${big_over:-accepted}; mallory after SET: ${mallory_set:-accepted}" \
    "$([ -z "$big_ok" ] && [ "$big_over" = 54000 ] && [ "$mallory_set" = 42501 ] && echo pass || echo FAIL)"

# 3. 10,000 parameters (and 65,535 / 65,536).
params_stmt() { # params_stmt N: INSERT ... sum of $1..$N
    echo "INSERT INTO manyp SELECT $1, sum(x) FROM unnest(ARRAY[$(seq -s, 1 "$1" | sed 's/\([0-9]*\)/$\1/g')]::int[]) x"
}
e10k=$(sqlstate_of -c "SELECT atx_log('$(params_stmt 10000)', VARIADIC ARRAY(SELECT generate_series(1, 10000)))")
e64k=$(sqlstate_of -c "SELECT atx_log('INSERT INTO manyp VALUES (-1, \$1)', VARIADIC ARRAY(SELECT generate_series(1, 65536)))")
marker 120
s10k=$(q -c "SELECT s FROM manyp WHERE n = 10000")
dl10k=$(q -c "SELECT sqlstate || ': ' || left(error, 80) FROM atx.dead_letter WHERE statement LIKE 'INSERT INTO manyp SELECT 10000%'")
note "10,000 parameters: emit ${e10k:-ok}, sum ${s10k:-none} ${dl10k:+dead letter $dl10k}; 65,536 parameters: ${e64k:-accepted}"
check_eq "10,000 parameters applied (sum 1..10000)" 50005000 "$s10k"
check_eq "65,536 parameters refused at emit (54000)" 54000 "$e64k"
reliability "10,000 parameters" "atx_log(statement with \$1..\$10000, VARIADIC ARRAY(1..10000)); and 65,536 parameters" \
    "sum applied: ${s10k:-none}${dl10k:+ (dead letter $dl10k)}; 65,536: ${e64k:-accepted}" \
    "$([ "$s10k" = 50005000 ] && [ "$e64k" = 54000 ] && echo pass || echo FAIL)"

# 4. Parameter types: each value bound with its type, inserted as its text form, compared with the
#    text form computed in the caller's session.
TYPES=(
    "bool|true" "int2|-32768" "int4|2147483647" "int8|-9223372036854775808" "float4|1.5e-38"
    "float8|-1.7976931348623157e308" "float8|NaN" "float8|-Infinity" "numeric|-123456789012345678901234567890.000000000001"
    "numeric|NaN" "money|12.34" "\"char\"|z" "bpchar|ab  " "varchar|vär" "text|it''s \\\\ \"q\" ✓" "name|a name"
    "bytea|\\\\x00ff10" "date|4713-01-01 BC" "date|infinity" "time|23:59:59.999999" "timetz|12:00+05:30"
    "timestamp|2000-02-29 12:34:56.789" "timestamptz|1999-12-31 23:59:59.5+14" "timestamptz|-infinity"
    "interval|1 year 2 mons -3 days 04:05:06.7" "point|(1.5,-2)" "lseg|[(0,0),(1,1)]" "path|[(0,0),(1,1),(2,0)]"
    "box|(2,2),(0,0)" "polygon|((0,0),(1,1),(1,0))" "line|{1,-1,0}" "circle|<(0,0),5>" "cidr|10.1.0.0/16"
    "inet|2001:db8::1/64" "macaddr|08:00:2b:01:02:03" "macaddr8|08:00:2b:01:02:03:04:05" "bit|B101"
    "varbit|B10110" "uuid|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" "xml|<a x=\"1\">t</a>" "json|{\"a\": [1, null]}"
    "jsonb|{\"b\": {\"c\": 1.50}}" "jsonpath|\$.a[*] ? (@ > 1)" "tsvector|a:1 fat:2 cat:3" "tsquery|fat & (rat | cat)"
    "pg_lsn|16/B374D848" "oid|4294967295" "xid8|12345678901" "tid|(3,7)" "regclass|pg_class" "regtype|integer[]"
    "regproc|now" "regrole|mallory" "regconfig|english" "int4range|[1,10)" "numrange|(,2.5]" "tstzrange|[2020-01-01,infinity)"
    "daterange|empty" "int4multirange|{[1,3),[5,7)}" "pg_snapshot|10:20:10,14,15" "int4[]|{1,NULL,3}"
    "text[]|{\"a b\",NULL,\"c,d\"}" "float8[]|{{1.5,2},{NaN,Infinity}}" "mood|happy" "posint|7" "comp|(1,\"x y\")"
    "aclitem|mallory=r/postgres" "int2vector|1 2 3" "oidvector|1 2 3"
)
for tv in "${TYPES[@]}"; do
    t=${tv%%|*}; v=${tv#*|}
    err=$(sqlstate_of -c "SELECT atx_log('INSERT INTO typed VALUES (\$1, \$2::text, \$3)', '$t'::text, '$v'::$t, ('$v'::$t)::text)")
    [ -n "$err" ] && echo "$t emit-refused-$err" >>"$TEST_DIR/type_refusals"
done
marker 60
ntypes=${#TYPES[@]}
nok=$(q -c "SELECT count(*) FROM typed WHERE got IS NOT DISTINCT FROM expected")
bad=$(q -c "SELECT string_agg(typ || ': got ' || coalesce(got, 'NULL') || ' expected ' || coalesce(expected, 'NULL'), '; ') FROM typed WHERE got IS DISTINCT FROM expected")
dlt=$(q -c "SELECT string_agg((atx.decode(payload)->>'params'), '; ') FROM atx.dead_letter WHERE statement LIKE 'INSERT INTO typed%'")
ref=$(tr '\n' ' ' 2>/dev/null <"$TEST_DIR/type_refusals")
note "types: $nok of $ntypes round-trip equal${bad:+; differ: $bad}${dlt:+; dead letters: $dlt}${ref:+; refused: $ref}"
check_eq "every parameter type round-trips ($ntypes values)" "$ntypes" "$nok"
reliability "parameter types" "$ntypes values of $(printf '%s\n' "${TYPES[@]}" | cut -d'|' -f1 | sort -u | wc -l) builtin/user types bound as parameters, stored as text by the applier" \
    "$nok of $ntypes equal to their text form in the caller's session${bad:+; differ: $bad}${ref:+; refused: $ref}" \
    "$([ "$nok" = "$ntypes" ] && echo pass || echo FAIL)"
applier_stop
done_testing
