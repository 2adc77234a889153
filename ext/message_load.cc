// See message_load.h. Plain C style (see pg_guard.h).
#include "message_load.h"

#include "hmac_key.h"
#include "message.h"
#include "name_id.h"
#include "parked.h"
#include "wal_message.h"

static void id_of_position(AtxLoaded* l)
{
    uint8 lsn[8];
    for (int i = 0; i < 8; i++)
        lsn[i] = (uint8)(l->lsn >> (56 - 8 * i));
    atx_name_id("pg_atx unauthenticated", lsn, sizeof lsn, l->id);
    l->have_id = true;
}

static void fail(AtxLoaded* l, AtxLoadState state, int code, const char* error)
{
    l->state = state;
    l->sqlerrcode = code;
    l->error = error;
}

void atx_load_payload(const char* payload, size_t len, XLogRecPtr lsn, AtxLoaded* l)
{
    atx::CaughtError err;
    uint8 mac[32];

    memset(l, 0, sizeof *l);
    l->lsn = lsn;
    l->payload = (char*)payload;
    l->len = len;
    l->state = ATX_LOAD_OK;
    if (!atx_decode_payload(payload, len, &l->m, &err)) {
        if (err.sqlerrcode == ERRCODE_FEATURE_NOT_SUPPORTED) {
            // Written by a newer pg_atx: never executed, never dropped.
            fail(l, ATX_LOAD_REJECTED, err.sqlerrcode, pstrdup(err.message));
            return;
        }
        id_of_position(l);
        fail(l, ATX_LOAD_DEAD, err.sqlerrcode, pstrdup(err.message));
        return;
    }
    atx_hmac_sha256(l->m.body, l->m.body_len, mac);
    if (!atx_mac_equal(mac, (const uint8*)l->m.mac)) {
        id_of_position(l);
        memcpy(l->m.id, l->id, 16);
        fail(l, ATX_LOAD_DEAD, ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
             "pg_atx message authentication failed: HMAC mismatch (the key file was replaced?)");
        return;
    }
    l->authenticated = true;
    l->have_id = true;
    memcpy(l->id, l->m.id, 16);
    // A dropped role is an error, never a fallback to another role.
    if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(l->m.role_oid)))
        fail(l, ATX_LOAD_DEAD, ERRCODE_UNDEFINED_OBJECT,
             psprintf("role with OID %u (\"%s\") of the pg_atx message does not exist", l->m.role_oid, l->m.role_name));
}

void atx_load_message(XLogRecPtr lsn, AtxLoaded* l) { atx_load_message_from(lsn, true, l); }

void atx_load_message_from(XLogRecPtr lsn, bool maybe_parked, AtxLoaded* l)
{
    char* payload;
    size_t len;
    char* why = NULL;

    if (maybe_parked && atx_parked_payload(lsn, &payload, &len)) {
        // Its WAL may be gone: the slot moved past it once it was parked.
        atx_load_payload(payload, len, lsn, l);
        l->parked = true;
        return;
    }
    if (!atx_read_wal_message(lsn, &payload, &len, &why)) {
        memset(l, 0, sizeof *l);
        l->lsn = lsn;
        fail(l, ATX_LOAD_REJECTED, ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, why);
        return;
    }
    atx_load_payload(payload, len, lsn, l);
}

const AtxMessageC* atx_loaded_view(const AtxLoaded* l)
{
    AtxMessageC* v;
    if (l->authenticated)
        return &l->m;
    v = (AtxMessageC*)palloc0(sizeof(AtxMessageC));
    memcpy(v->id, l->id, 16);
    v->role_name = "";
    v->statement = "";
    return v;
}
