// atx.current_message(): the metadata of the pg_atx message whose statement is running, for
// user SQL (and the audit trail) to store; outside an apply every field is NULL. See
// current_message.h. Plain C style (see pg_guard.h).
#include "current_message.h"

#include "spi_util.h"

#include "pg_guard.h"

static AtxCurrentMessage current;
static bool callback_registered = false;

// Never let a message outlive the apply transaction, even if an error escaped between push
// and pop.
static void clear_at_xact_end(XactEvent event, void* arg)
{
    (void)arg;
    switch (event) {
    case XACT_EVENT_COMMIT:
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_COMMIT:
    case XACT_EVENT_PARALLEL_ABORT:
    case XACT_EVENT_PREPARE:
        if (!current.across_xacts)
            memset(&current, 0, sizeof current);
        break;
    default: break;
    }
}

AtxCurrentMessage atx_current_message_push(const AtxMessageC* m, bool across_xacts)
{
    AtxCurrentMessage saved = current;
    if (!callback_registered) {
        RegisterXactCallback(clear_at_xact_end, NULL);
        callback_registered = true;
    }
    current.m = m;
    current.nested_emits = 0;
    current.across_xacts = across_xacts;
    return saved;
}

void atx_current_message_pop(const AtxCurrentMessage* saved) { current = *saved; }

AtxCurrentMessage* atx_current_message(void) { return current.m != NULL ? &current : NULL; }

// atx.current_message(OUT id uuid, OUT caller_role name, OUT caller_role_oid oid,
//     OUT caller_xid xid8, OUT emitted_at timestamptz, OUT idempotency_key text,
//     OUT caller_session_user name, OUT depth int, OUT parent_id uuid)
static Datum current_message_body(FunctionCallInfo fcinfo)
{
    AtxCurrentMessage* c = atx_current_message();
    const AtxMessageC* m;
    TupleDesc tupdesc;
    Datum values[9];
    bool nulls[9];

    if (c == NULL)
        PG_RETURN_NULL();
    m = c->m;
    if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");

    memset(nulls, false, sizeof nulls);
    values[0] = atx_uuid_datum(m->id);
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
    // Version 1 messages carry no session user.
    if (m->session_role_name && m->session_role_name[0])
        values[6] = DirectFunctionCall1(namein, CStringGetDatum(m->session_role_name));
    else
        nulls[6] = true;
    values[7] = Int32GetDatum(m->depth);
    // A nested message's lane is its parent's id.
    if (m->depth > 0)
        values[8] = atx_uuid_datum(m->lane);
    else
        nulls[8] = true;
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

ATX_ENTRY(atx_current_message, current_message_body)
