// Looking at messages without running them: atx.message_at (the payload at an LSN, read from
// the WAL), atx.verify_payload (decoded and authenticated, for fuzzing and forensics) and
// atx.decode (decoded only: dead letters on display). Plain C style (see pg_guard.h).
#include "apply_common.h"
#include "codec_bridge.h"
#include "hmac_key.h"
#include "message_json.h"
#include "pg_guard.h"
#include "wal_message.h"

extern "C" {
#include "utils/pg_lsn.h"
}

// atx.message_at(lsn pg_lsn) RETURNS bytea (applier role): SECURITY DEFINER.
static Datum message_at_body(FunctionCallInfo fcinfo)
{
    char *payload, *why;
    size_t len;
    bytea* out;
    AtxApplyFrame f = atx_apply_enter();

    if (!atx_read_wal_message(PG_GETARG_LSN(0), &payload, &len, &why))
        ereport(ERROR, (errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION), errmsg("%s", why)));
    out = (bytea*)MemoryContextAlloc(f.caller, VARHDRSZ + len);
    SET_VARSIZE(out, VARHDRSZ + len);
    memcpy(VARDATA(out), payload, len);
    atx_apply_leave(&f);
    PG_RETURN_BYTEA_P(out);
}

// atx.messages_between(from_lsn pg_lsn, upto_lsn pg_lsn, max_count int, OUT lsns pg_lsn[],
// OUT next_lsn pg_lsn) (applier role): where the pg_atx messages of this database start in
// [from_lsn, upto_lsn), read from the WAL, at most max_count; next_lsn is where to go on.
// SECURITY DEFINER.
static Datum messages_between_body(FunctionCallInfo fcinfo)
{
    List* found;
    XLogRecPtr next;
    ListCell* c;
    TupleDesc desc;
    Datum values[2];
    bool nulls[2] = {false, false};
    const int max = PG_GETARG_INT32(2);

    if (max < 1)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("max_count must be at least 1")));
    if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "atx.messages_between: a record is expected");
    AtxApplyFrame f = atx_apply_enter();
    atx_scan_wal_messages(PG_GETARG_LSN(0), PG_GETARG_LSN(1), max, &found, &next);
    MemoryContext old = MemoryContextSwitchTo(f.caller);
    Datum* lsns = (Datum*)palloc(sizeof(Datum) * Max(list_length(found), 1));
    int n = 0;
    foreach (c, found)
        lsns[n++] = LSNGetDatum(*(XLogRecPtr*)lfirst(c));
    values[0] = PointerGetDatum(construct_array(lsns, n, PG_LSNOID, sizeof(XLogRecPtr), true, TYPALIGN_DOUBLE));
    values[1] = LSNGetDatum(next);
    HeapTuple t = heap_form_tuple(BlessTupleDesc(desc), values, nulls);
    MemoryContextSwitchTo(old);
    atx_apply_leave(&f);
    PG_RETURN_DATUM(HeapTupleGetDatum(t));
}

// atx.verify_payload(payload bytea) RETURNS jsonb (superusers): its fields, or 22P03 / 0A000 /
// 28000.
static Datum verify_payload_body(FunctionCallInfo fcinfo)
{
    bytea* payload = PG_GETARG_BYTEA_PP(0);
    AtxMessageC m;
    atx::CaughtError err;
    uint8 mac[32];

    if (!atx_decode_payload(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), &m, &err))
        atx::raise_caught(err);
    atx_hmac_sha256(m.body, m.body_len, mac);
    if (!atx_mac_equal(mac, (const uint8*)m.mac))
        ereport(ERROR, (errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
                        errmsg("pg_atx message authentication failed: HMAC mismatch")));
    PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(atx_message_json(&m))));
}

// atx.decode(payload bytea) RETURNS jsonb: the fields of a payload, without MAC check.
static Datum decode_body(FunctionCallInfo fcinfo)
{
    bytea* payload = PG_GETARG_BYTEA_PP(0);
    AtxMessageC m;
    atx::CaughtError err;

    if (!atx_decode_payload(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), &m, &err))
        atx::raise_caught(err);
    PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(atx_message_json(&m))));
}

ATX_ENTRY(atx_message_at, message_at_body)
ATX_ENTRY(atx_messages_between, messages_between_body)
ATX_ENTRY(atx_verify_payload, verify_payload_body)
ATX_ENTRY(atx_decode, decode_body)
