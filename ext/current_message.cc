// atx.current_message(): the metadata of the pg_atx message whose statement is
// running, for user SQL (and the audit trail) to store. apply.cc sets it
// around the statement (see atx_ext.h); outside an apply every field is NULL.
//
// Plain C style (see pg_guard.h).
#include "atx_ext.h"
#include "pg_guard.h"

static AtxCurrentMessage current;
static bool callback_registered = false;

// Never let a message outlive the applier's transaction, even if an error
// escaped apply.cc between set and restore.
static void clear_at_xact_end(XactEvent event, void* arg)
{
    (void)arg;
    switch (event) {
    case XACT_EVENT_COMMIT:
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_COMMIT:
    case XACT_EVENT_PARALLEL_ABORT:
    case XACT_EVENT_PREPARE:
        memset(&current, 0, sizeof current);
        break;
    default:
        break;
    }
}

void atx_current_message_save(AtxCurrentMessage* saved) { *saved = current; }

void atx_current_message_set(const uint8 id[16], Oid role_oid, const char* role_name, uint64 caller_xid,
                             TimestampTz emit_time, const char* key)
{
    if (!callback_registered) {
        RegisterXactCallback(clear_at_xact_end, NULL);
        callback_registered = true;
    }
    current.active = true;
    memcpy(current.id, id, sizeof current.id);
    current.role_oid = role_oid;
    current.role_name = role_name;
    current.caller_xid = caller_xid;
    current.emit_time = emit_time;
    current.key = key;
}

void atx_current_message_restore(const AtxCurrentMessage* saved) { current = *saved; }

const AtxCurrentMessage* atx_current_message(void) { return current.active ? &current : NULL; }

// atx.current_message(OUT id uuid, OUT caller_role name, OUT caller_role_oid oid,
//     OUT caller_xid xid8, OUT emitted_at timestamptz, OUT idempotency_key text)
static Datum current_message_body(FunctionCallInfo fcinfo)
{
    const AtxCurrentMessage* m = atx_current_message();
    TupleDesc tupdesc;
    Datum values[6];
    bool nulls[6];
    pg_uuid_t* uuid;

    if (m == NULL)
        PG_RETURN_NULL();
    if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");

    memset(nulls, false, sizeof nulls);
    uuid = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));
    memcpy(uuid->data, m->id, UUID_LEN);
    values[0] = UUIDPGetDatum(uuid);
    values[1] = DirectFunctionCall1(namein, CStringGetDatum(m->role_name ? m->role_name : ""));
    values[2] = ObjectIdGetDatum(m->role_oid);
    // xid8 is a 64-bit FullTransactionId passed by value.
    values[3] = Int64GetDatum((int64)m->caller_xid);
    nulls[3] = m->caller_xid == 0;
    values[4] = TimestampTzGetDatum(m->emit_time);
    if (m->key)
        values[5] = CStringGetTextDatum(m->key);
    else
        nulls[5] = true;
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

ATX_ENTRY(atx_current_message, current_message_body)
