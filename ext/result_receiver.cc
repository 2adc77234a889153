// See result_receiver.h. SPI would materialise every row of every statement in memory (an
// unread 800 MB result once took an apply backend to 1.6 GB); these rows are converted to
// JSON as they arrive and dropped once the cap is reached. Plain C style (see pg_guard.h).
#include "result_receiver.h"

struct AtxResultReceiver {
    DestReceiver pub;       // must be first
    MemoryContext owner;    // where the JSON lives
    MemoryContext per_row;  // reset after each row
    TupleDesc desc;         // blessed copy of the current statement's result type
    StringInfoData json;
    int cap;
    uint64 rows;
    bool truncated;
};

static void rr_startup(DestReceiver* self, int operation, TupleDesc typeinfo)
{
    AtxResultReceiver* r = (AtxResultReceiver*)self;
    MemoryContext old = MemoryContextSwitchTo(r->owner);

    // Each statement of a multi-statement string starts over: the last one's rows count.
    resetStringInfo(&r->json);
    r->rows = 0;
    r->truncated = false;
    r->desc = BlessTupleDesc(CreateTupleDescCopy(typeinfo));
    MemoryContextSwitchTo(old);
}

static bool rr_receive(TupleTableSlot* slot, DestReceiver* self)
{
    AtxResultReceiver* r = (AtxResultReceiver*)self;
    MemoryContext old;
    HeapTuple tuple;
    text* row;

    r->rows++;
    if (r->truncated)
        return true;
    old = MemoryContextSwitchTo(r->per_row);
    slot_getallattrs(slot);
    tuple = heap_form_tuple(r->desc, slot->tts_values, slot->tts_isnull);
    row = DatumGetTextPP(DirectFunctionCall1(row_to_json, HeapTupleGetDatum(tuple)));
    MemoryContextSwitchTo(r->owner);
    // "[" + rows joined by ", " + "]" must fit the cap.
    if (r->json.len + (r->json.len > 0 ? 2 : 1) + (int)VARSIZE_ANY_EXHDR(row) + 1 > r->cap) {
        r->truncated = true;
        resetStringInfo(&r->json);
    } else {
        appendStringInfoString(&r->json, r->json.len > 0 ? ", " : "[");
        appendBinaryStringInfo(&r->json, VARDATA_ANY(row), VARSIZE_ANY_EXHDR(row));
    }
    MemoryContextSwitchTo(old);
    MemoryContextReset(r->per_row);
    return true;
}

static void rr_shutdown(DestReceiver* self) {}
static void rr_destroy(DestReceiver* self) {}

AtxResultReceiver* atx_result_receiver_create(int cap)
{
    AtxResultReceiver* r = (AtxResultReceiver*)palloc0(sizeof(AtxResultReceiver));
    r->pub.receiveSlot = rr_receive;
    r->pub.rStartup = rr_startup;
    r->pub.rShutdown = rr_shutdown;
    r->pub.rDestroy = rr_destroy;
    r->pub.mydest = DestNone;
    r->owner = CurrentMemoryContext;
    r->per_row = AllocSetContextCreate(CurrentMemoryContext, "pg_atx result row", ALLOCSET_SMALL_SIZES);
    r->cap = cap;
    initStringInfo(&r->json);
    return r;
}

DestReceiver* atx_result_receiver_dest(AtxResultReceiver* r) { return &r->pub; }

const char* atx_result_receiver_json(AtxResultReceiver* r, bool* truncated)
{
    *truncated = r->truncated;
    if (r->truncated || r->rows == 0 || r->json.len == 0)
        return NULL;
    appendStringInfoChar(&r->json, ']');
    return r->json.data;
}
