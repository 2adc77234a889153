// The output plugin "pg_atx": streams only the messages atx_log wrote.
//
// filter_by_origin_cb drops every record whose origin is not "pg_atx" before it is queued, so
// ordinary DML of the database costs the walsender nothing, and a message forged with
// pg_logical_emit_message (which cannot carry the pg_atx origin: setting a session origin
// needs superuser) never appears.
//
// format 'binary' (default): a frame (common/frame.h): 'M', the start LSN of the message's WAL
// record, the raw payload. The applier names the message by that start LSN and the server reads
// it back from its own WAL (wal_message.cc).
// format 'text': one line per message for pg_recvlogical -P pg_atx and
// pg_logical_slot_peek_changes.
//
// Nothing here may raise for a message's content: an error in a walsender stops the slot at
// that message for every reader. The text format converts values only after the payload has
// been authenticated (its HMAC), so no receive function ever sees bytes atx_log did not make.
#include "atx_ext.h"
#include "codec_bridge.h"
#include "frame.h"
#include "hmac_key.h"
#include "message.h"
#include "pg_guard.h"
#include "text_format.h"

extern "C" {
extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks* cb);
}

#define ORIGIN_RECHECK_MS 10000
#define OTHER_ORIGINS 16

// Per-slot-session state, allocated in the decoding context.
struct AtxDecodingState {
    MemoryContext context;  // reset after every callback
    bool text_format;       // format 'text', else binary
    RepOriginId origin;     // id of origin "pg_atx"; Invalid while is_init or unknown
    TimestampTz origin_checked;
    // Origins seen that are not ours, re-checked after a while: the pg_atx origin may be dropped
    // and created again under a new id, and then every new message carries that id.
    RepOriginId other[OTHER_ORIGINS];
    TimestampTz other_checked[OTHER_ORIGINS];
    int next_other;
};

static void parse_options(LogicalDecodingContext* ctx, AtxDecodingState* st)
{
    ListCell* lc;
    foreach (lc, ctx->output_plugin_options) {
        DefElem* elem = (DefElem*)lfirst(lc);
        if (strcmp(elem->defname, "format") == 0) {
            const char* v = elem->arg ? strVal(elem->arg) : NULL;
            if (v && strcmp(v, "binary") == 0)
                st->text_format = false;
            else if (v && strcmp(v, "text") == 0)
                st->text_format = true;
            else
                ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                                errmsg("invalid value \"%s\" for pg_atx option \"format\"", v ? v : "(none)"),
                                errhint("Valid values are \"binary\" and \"text\".")));
        } else {
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                            errmsg("unrecognized pg_atx option \"%s\"", elem->defname),
                            errhint("The only option is \"format\" ('binary' or 'text').")));
        }
    }
}

// The name of origin id is "pg_atx"? A catalog lookup: a walsender decoding outside any
// transaction starts one for it.
static bool origin_named_ours(RepOriginId id)
{
    bool own_xact = !IsTransactionState();
    MemoryContext caller_context = CurrentMemoryContext;
    char* name = NULL;
    bool ours;

    if (own_xact)
        StartTransactionCommand();
    ours = replorigin_by_oid(id, true, &name) && name != NULL && strcmp(name, atx::kEmitOriginName) == 0;
    if (own_xact)
        CommitTransactionCommand();
    // CommitTransactionCommand leaves us in TopMemoryContext.
    MemoryContextSwitchTo(caller_context);
    return ours;
}

static void startup_body(LogicalDecodingContext* ctx, OutputPluginOptions* opt, bool is_init)
{
    AtxDecodingState* st = (AtxDecodingState*)MemoryContextAllocZero(ctx->context, sizeof(AtxDecodingState));
    st->context = AllocSetContextCreate(ctx->context, "pg_atx output", ALLOCSET_DEFAULT_SIZES);
    st->origin = InvalidRepOriginId;
    ctx->output_plugin_private = st;

    parse_options(ctx, st);
    opt->output_type = st->text_format ? OUTPUT_PLUGIN_TEXTUAL_OUTPUT : OUTPUT_PLUGIN_BINARY_OUTPUT;
    opt->receive_rewrites = false;

    if (!is_init) {
        bool own_xact = !IsTransactionState();
        MemoryContext caller_context = CurrentMemoryContext;
        if (own_xact)
            StartTransactionCommand();
        st->origin = atx_emit_origin_id(true);
        if (own_xact)
            CommitTransactionCommand();
        MemoryContextSwitchTo(caller_context);
        st->origin_checked = GetCurrentTimestamp();
    }
}

static void begin_cb(LogicalDecodingContext* ctx, ReorderBufferTXN* txn) {}
static void commit_cb(LogicalDecodingContext* ctx, ReorderBufferTXN* txn, XLogRecPtr commit_lsn) {}
static void change_cb(LogicalDecodingContext* ctx, ReorderBufferTXN* txn, Relation rel, ReorderBufferChange* change) {}
static void shutdown_cb(LogicalDecodingContext* ctx) {}

// true = drop. Records without an origin (all ordinary DML) are dropped at once; the cached id
// of "pg_atx" is trusted for a while; any other id is looked up by name, at most every
// ORIGIN_RECHECK_MS per id for records other than logical messages.
static bool filter_by_origin_body(LogicalDecodingContext* ctx, RepOriginId origin_id)
{
    AtxDecodingState* st = (AtxDecodingState*)ctx->output_plugin_private;
    TimestampTz now;
    int slot = -1;

    if (origin_id == InvalidRepOriginId || st == NULL)
        return true;
    now = GetCurrentTimestamp();
    if (origin_id == st->origin && !TimestampDifferenceExceeds(st->origin_checked, now, ORIGIN_RECHECK_MS))
        return false;
    for (int i = 0; i < OTHER_ORIGINS; i++)
        if (st->other[i] == origin_id) {
            // A logical message is looked up again whatever the cache says: "pg_atx" may have been
            // re-created under an id that named another origin a moment ago, and a message of ours
            // dropped here would be lost. (The reader is on the record being filtered.)
            if (!TimestampDifferenceExceeds(st->other_checked[i], now, ORIGIN_RECHECK_MS) &&
                XLogRecGetRmid(ctx->reader) != RM_LOGICALMSG_ID)
                return true;
            slot = i;
        }
    if (origin_named_ours(origin_id)) {
        st->origin = origin_id;
        st->origin_checked = now;
        if (slot >= 0)
            st->other[slot] = InvalidRepOriginId;
        return false;
    }
    if (origin_id == st->origin)
        st->origin = InvalidRepOriginId;  // dropped, or its id now names another origin
    if (slot < 0) {
        slot = st->next_other;
        st->next_other = (st->next_other + 1) % OTHER_ORIGINS;
    }
    st->other[slot] = origin_id;
    st->other_checked[slot] = now;
    return true;
}

static void append_text_line(StringInfo out, XLogRecPtr start, XLogRecPtr lsn, const char* message, Size size)
{
    AtxMessageC m;
    atx::CaughtError err;
    char id[37];
    uint8 mac[32];

    if (!atx_decode_payload(message, size, &m, &err)) {
        appendStringInfo(out, "pg_atx message start=%X/%X lsn=%X/%X undecodable (SQLSTATE %s): %s", ATX_LSN_ARGS(start),
                         ATX_LSN_ARGS(lsn), unpack_sql_state(err.sqlerrcode), err.message);
        return;
    }
    atx_hmac_sha256(m.body, m.body_len, mac);
    if (!atx_mac_equal(mac, (const uint8*)m.mac)) {
        appendStringInfo(out,
                         "pg_atx message start=%X/%X lsn=%X/%X unauthenticated (HMAC mismatch): ", ATX_LSN_ARGS(start),
                         ATX_LSN_ARGS(lsn));
        atx_append_hex(out, message, size);
        return;
    }
    atx_uuid_text(m.id, id);
    appendStringInfo(out,
                     "pg_atx message id=%s start=%X/%X lsn=%X/%X db=%u role=%s xid=" UINT64_FORMAT
                     " depth=%d key=%s statement=%s params=[",
                     id, ATX_LSN_ARGS(start), ATX_LSN_ARGS(lsn), m.database_oid, m.role_name, m.caller_xid, m.depth,
                     m.key ? m.key : "-", m.statement);
    for (int i = 0; i < m.nparams; i++) {
        const AtxParamC* p = &m.params[i];
        StringInfoData v;
        if (i > 0)
            appendStringInfoString(out, ", ");
        appendStringInfo(out, "%s:", p->type_name);
        if (p->is_null) {
            appendStringInfoString(out, "NULL");
            continue;
        }
        initStringInfo(&v);
        atx_append_param_value(&v, p);
        appendStringInfoString(out, quote_literal_cstr(v.data));
    }
    appendStringInfoChar(out, ']');
}

static void message_body(LogicalDecodingContext* ctx, ReorderBufferTXN* txn, XLogRecPtr message_lsn, bool transactional,
                         const char* prefix, Size message_size, const char* message)
{
    AtxDecodingState* st = (AtxDecodingState*)ctx->output_plugin_private;
    // A non-transactional message is decoded as its record is read: the reader is still on it.
    XLogRecPtr start = ctx->reader->ReadRecPtr;
    MemoryContext old;

    // The origin filter already dropped anything atx_log did not write; this is a second,
    // cheap check.
    if (transactional || strcmp(prefix, atx::kMessagePrefix) != 0)
        return;

    old = MemoryContextSwitchTo(st->context);
    OutputPluginPrepareWrite(ctx, true);
    if (st->text_format) {
        append_text_line(ctx->out, start, message_lsn, message, message_size);
    } else {
        char header[atx::kFrameHeaderSize];
        atx::encode_frame_header(start, header);
        appendBinaryStringInfo(ctx->out, header, (int)sizeof header);
        appendBinaryStringInfo(ctx->out, message, (int)message_size);
    }
    OutputPluginWrite(ctx, true);
    MemoryContextSwitchTo(old);
    MemoryContextReset(st->context);
}

// extern "C" shims: PostgreSQL calls these; C++ exceptions never cross them.
#define ATX_CALLBACK_GUARD(call)             \
    do {                                     \
        atx::CaughtError caught_;            \
        try {                                \
            call;                            \
            return;                          \
        } catch (...) {                      \
            atx::capture_exception(caught_); \
        }                                    \
        atx::raise_caught(caught_);          \
    } while (0)

extern "C" {

static void startup_cb(LogicalDecodingContext* ctx, OutputPluginOptions* opt, bool is_init)
{
    ATX_CALLBACK_GUARD(startup_body(ctx, opt, is_init));
}

static bool filter_by_origin_cb(LogicalDecodingContext* ctx, RepOriginId origin_id)
{
    return filter_by_origin_body(ctx, origin_id);  // plain C style: PostgreSQL errors only
}

static void message_cb(LogicalDecodingContext* ctx, ReorderBufferTXN* txn, XLogRecPtr message_lsn, bool transactional,
                       const char* prefix, Size message_size, const char* message)
{
    ATX_CALLBACK_GUARD(message_body(ctx, txn, message_lsn, transactional, prefix, message_size, message));
}

void _PG_output_plugin_init(OutputPluginCallbacks* cb)
{
    cb->startup_cb = startup_cb;
    cb->begin_cb = begin_cb;
    cb->change_cb = change_cb;
    cb->commit_cb = commit_cb;
    cb->message_cb = message_cb;
    cb->filter_by_origin_cb = filter_by_origin_cb;
    cb->shutdown_cb = shutdown_cb;
}

}  // extern "C"
