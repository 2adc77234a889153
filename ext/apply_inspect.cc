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
ATX_ENTRY(atx_verify_payload, verify_payload_body)
ATX_ENTRY(atx_decode, decode_body)
