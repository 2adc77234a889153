// atx_log / atx_log_keyed (and atx._emit for extension code): build, sign and write one pg_atx
// message, durable when the call returns exactly as a COMMIT would be.
//
// Plain C style (no C++ objects with destructors) because nearly every line calls
// PostgreSQL; the codec runs behind the noexcept bridge (codec_bridge.h).
#include "emit.h"
#include "name_id.h"

#include "codec_bridge.h"
#include "current_message.h"
#include "guc_capture.h"
#include "hmac_key.h"
#include "message.h"
#include "pg_guard.h"
#include "slot_check.h"
#include "validate.h"
#include "waiters.h"
#include "wire_encoding.h"

extern "C" {
#include "common/pg_prng.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
}

bool atx_allow_in_read_only = false;

#define ATX_MAX_DEPTH 16

// Refusals that need no message: standby, read-only transaction, wal_level, no slot.
static void check_can_emit(const char* fname)
{
    if (RecoveryInProgress())
        ereport(ERROR, (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION), errmsg("%s cannot run during recovery", fname),
                        errhint("Messages are written to the WAL: call %s on the primary.", fname)));
    // The autonomous statement writes (or may write) what a read-only caller promised not to.
    if (XactReadOnly && !atx_allow_in_read_only)
        ereport(ERROR,
                (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION), errmsg("%s cannot run in a read-only transaction", fname),
                 errdetail("The autonomous statement would run outside this transaction's read-only promise."),
                 errhint("Call it from a read-write transaction, or have a superuser set "
                         "atx.allow_in_read_only = on for the roles that may.")));
    if (wal_level < WAL_LEVEL_LOGICAL)
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg("%s requires wal_level = logical", fname),
                 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
    if (!atx_have_slot_for_database(MyDatabaseId))
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                 errmsg("no pg_atx replication slot exists for database \"%s\"", get_database_name(MyDatabaseId)),
                 errdetail("A message written now would never be delivered."),
                 errhint("Run SELECT atx.ensure_slot(); as a superuser, or start atx-applier for this database.")));
}

static bool is_blank(const char* s)
{
    for (; *s; s++)
        if (!isspace((unsigned char)*s))
            return false;
    return true;
}

// Fills p from one argument: binary (send) when the type has send and receive functions,
// else its text output.
static void fill_param(AtxParamC* p, Oid type, Datum value, bool isnull, const char* fname)
{
    HeapTuple tup;
    Form_pg_type typ;
    Oid typsend, typreceive, typoutput;
    char typtype;

    p->type_oid = type;
    p->type_name = format_type_be(type);
    p->is_null = isnull;
    p->value = NULL;
    p->value_len = 0;

    tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
    if (!HeapTupleIsValid(tup))
        elog(ERROR, "cache lookup failed for type %u", type);
    typ = (Form_pg_type)GETSTRUCT(tup);
    typsend = typ->typsend;
    typreceive = typ->typreceive;
    typoutput = typ->typoutput;
    typtype = typ->typtype;
    ReleaseSysCache(tup);
    // Anonymous records are described only in this backend's typmod cache.
    if (type == RECORDOID)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("%s cannot pass a value of an anonymous record type", fname),
                        errhint("Cast it to a named composite type.")));
    if (typtype == TYPTYPE_PSEUDO && type != UNKNOWNOID)
        ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
                        errmsg("%s cannot pass a value of pseudo-type %s", fname, p->type_name)));

    p->binary = OidIsValid(typsend) && OidIsValid(typreceive);
    if (isnull)
        return;
    if (p->binary) {
        bytea* b = atx_send_in_database_encoding(typsend, value);
        p->value = VARDATA_ANY(b);
        p->value_len = VARSIZE_ANY_EXHDR(b);
    } else {
        char* s = OidOutputFunctionCall(typoutput, value);
        p->value = s;
        p->value_len = strlen(s);
    }
}

// The lane of a top-level message: this backend session (database, pid, session start), so
// that a session's messages are applied in the order it wrote them.
static void session_lane(uint8 lane[16])
{
    uint32 db = MyDatabaseId, pid = (uint32)MyProcPid;
    uint64 start = (uint64)MyStartTimestamp;
    for (int i = 0; i < 4; i++) {
        lane[i] = (uint8)(db >> (24 - 8 * i));
        lane[4 + i] = (uint8)(pid >> (24 - 8 * i));
    }
    for (int i = 0; i < 8; i++)
        lane[8 + i] = (uint8)(start >> (56 - 8 * i));
}

// A fresh message id: a UUID v7 (RFC 9562), the emit time in milliseconds and then 74 bits from
// a generator of this backend seeded once from the strong random source. The id needs to be
// unique, not secret (nobody can choose one, and a caller sees only its own); drawing 16 strong
// random bytes per call cost a tenth of a row trigger's atx_log (OpenSSL's generator takes
// locks), and ids that grow with time keep the inserts into atx.applied's primary key together.
static void fresh_id(TimestampTz emit_time, uint8 id[16])
{
    static pg_prng_state state;
    static int seeded_for = 0;  // the process: pg_atx may be loaded in the postmaster, before fork
    uint64 ms, a, b;

    if (seeded_for != MyProcPid) {
        if (!pg_prng_strong_seed(&state))
            ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not seed the message id generator")));
        seeded_for = MyProcPid;
    }
    ms = (uint64)(emit_time / 1000 + (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * (uint64)SECS_PER_DAY * 1000);
    a = pg_prng_uint64(&state);
    b = pg_prng_uint64(&state);
    for (int i = 0; i < 6; i++)
        id[i] = (uint8)(ms >> (40 - 8 * i));
    id[6] = (uint8)(0x70 | ((a >> 8) & 0x0f));  // version 7
    id[7] = (uint8)a;
    for (int i = 0; i < 8; i++)
        id[8 + i] = (uint8)(b >> (56 - 8 * i));
    id[8] = (id[8] & 0x3f) | 0x80;  // RFC 9562 variant
}

// The id of the n-th emit of a running message: the same on every execution of the parent
// (a retry, a re-delivery after a crash), so that atx.applied lets it through only once.
static void derived_id(const uint8 parent[16], uint32 n, uint8 out[16])
{
    uint8 name[20];
    memcpy(name, parent, 16);
    for (int i = 0; i < 4; i++)
        name[16 + i] = (uint8)(n >> (24 - 8 * i));
    atx_name_id("pg_atx nested", name, sizeof name, out);
}

static void build_checked(const char* statement, const char* key, int nargs, const Datum* args, const Oid* types,
                          const bool* nulls, bool waited, const char* fname, uint8 id_out[16], char** payload_out,
                          size_t* len_out);

void atx_build_message(FunctionCallInfo fcinfo, int stmt_arg, bool keyed, bool waited, const char* fname,
                       uint8 id_out[16], char** payload_out, size_t* len_out)
{
    const char* statement;
    const char* key = NULL;
    Datum* args = NULL;
    Oid* types = NULL;
    bool* nulls = NULL;
    int nargs;

    check_can_emit(fname);
    if (PG_ARGISNULL(stmt_arg))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("statement must not be NULL")));
    statement = text_to_cstring(PG_GETARG_TEXT_PP(stmt_arg));
    if (is_blank(statement))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("statement must not be empty"),
                        errhint("Pass the SQL statement to run as the first argument.")));
    if (keyed) {
        if (PG_ARGISNULL(0))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("idempotency key must not be NULL"),
                            errhint("Use atx_log() for a message without a key.")));
        key = text_to_cstring(PG_GETARG_TEXT_PP(0));
        if (key[0] == '\0')
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("idempotency key must not be empty")));
        if (strlen(key) > PG_UINT16_MAX)
            ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                            errmsg("idempotency key is too long (%zu bytes, at most 65535)", strlen(key))));
    }

    // Parameters: explicit VARIADIC arrays are expanded, unknown literals become text.
    nargs = extract_variadic_args(fcinfo, stmt_arg + 1, true, &args, &types, &nulls);
    if (nargs < 0)
        nargs = 0;  // VARIADIC NULL: no parameters
    build_checked(statement, key, nargs, args, types, nulls, waited, fname, id_out, payload_out, len_out);
}

void atx_build_message_values(const char* statement, int nargs, const Datum* args, const Oid* types, const bool* nulls,
                              bool waited, const char* fname, uint8 id_out[16], char** payload_out, size_t* len_out)
{
    check_can_emit(fname);
    build_checked(statement, NULL, nargs, args, types, nulls, waited, fname, id_out, payload_out, len_out);
}

// The message of statement with its parameters, once check_can_emit passed.
static void build_checked(const char* statement, const char* key, int nargs, const Datum* args, const Oid* types,
                          const bool* nulls, bool waited, const char* fname, uint8 id_out[16], char** payload_out,
                          size_t* len_out)
{
    AtxMessageC m;
    char* body;
    size_t body_len;
    char* payload;
    uint8 mac[32];
    atx::CaughtError err;
    FullTransactionId fxid;
    AtxCurrentMessage* parent = atx_current_message();

    memset(&m, 0, sizeof m);
    m.statement = statement;
    m.key = key;
    if (nargs > PG_UINT16_MAX)
        ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                        errmsg("too many parameters for %s: %d (at most 65535)", fname, nargs)));
    m.nparams = nargs;
    m.params = (AtxParamC*)palloc0(sizeof(AtxParamC) * (nargs ? nargs : 1));
    for (int i = 0; i < nargs; i++)
        fill_param(&m.params[i], types[i], args[i], nulls[i], fname);

    // Fails here, in the caller, what could never run (atx.validate).
    atx_validate_statement(m.statement, nargs, types);

    // Identity and ordering.
    if (parent != NULL) {
        // Emitted by a statement that is itself being applied (or run non-atomically).
        m.depth = parent->m->depth + 1;
        if (m.depth > ATX_MAX_DEPTH)
            ereport(ERROR, (errcode(ERRCODE_STATEMENT_TOO_COMPLEX),
                            errmsg("pg_atx messages nest too deeply (more than %d levels)", ATX_MAX_DEPTH),
                            errhint("An autonomous statement that emits itself again never ends.")));
        memcpy(m.lane, parent->m->id, 16);
        derived_id(parent->m->id, parent->nested_emits++, m.id);
    } else {
        m.depth = 0;
        session_lane(m.lane);
        m.emit_time = GetCurrentTimestamp();
        fresh_id(m.emit_time, m.id);
    }
    m.waited = waited;
    m.cancel_if_abandoned = waited && atx_exec_on_abandon == ATX_ABANDON_CANCEL;
    m.database_oid = MyDatabaseId;
    m.role_oid = GetUserId();  // current_user: a SECURITY DEFINER function's owner
    m.role_name = GetUserNameFromId(m.role_oid, false);
    // The principal, charged for the apply sessions the message takes: the login that caused it.
    // In an apply session that is the parent message's principal, never the applier's login.
    if (parent != NULL && OidIsValid(parent->m->session_role_oid)) {
        m.session_role_oid = parent->m->session_role_oid;
        m.session_role_name = parent->m->session_role_name;
    } else if (parent != NULL) {
        m.session_role_oid = parent->m->role_oid;  // a format 1 parent carries no session user
        m.session_role_name = parent->m->role_name;
    } else {
        m.session_role_oid = GetSessionUserId();
        m.session_role_name = GetUserNameFromId(m.session_role_oid, false);
    }
    fxid = GetTopFullTransactionIdIfAny();
    m.caller_xid = FullTransactionIdIsValid(fxid) ? U64FromFullTransactionId(fxid) : 0;
    if (m.emit_time == 0)
        m.emit_time = GetCurrentTimestamp();
    m.gucs = atx_capture_settings(&m.nguc);

    if (!atx_encode_body(&m, &body, &body_len, &err))
        atx::raise_caught(err);
    if (body_len + atx::kMacSize > (size_t)atx_max_payload_size)
        ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                        errmsg("pg_atx message is too large: %zu bytes", body_len + atx::kMacSize),
                        errdetail("atx.max_payload_size is %d bytes.", atx_max_payload_size),
                        errhint("Pass less data, or raise atx.max_payload_size (superuser).")));

    atx_hmac_sha256(body, body_len, mac);
    payload = (char*)palloc(body_len + atx::kMacSize);
    memcpy(payload, body, body_len);
    memcpy(payload + body_len, mac, atx::kMacSize);

    memcpy(id_out, m.id, 16);
    *payload_out = payload;
    *len_out = body_len + atx::kMacSize;
}

// --- durability --------------------------------------------------------------------------------

// Inside atx._emit_batch_begin() ... _end(): the highest LSN written, flushed once at the end.
static int batch_depth = 0;
static XLogRecPtr batch_lsn = InvalidXLogRecPtr;
static bool batch_callback_registered = false;

// Names the message in the WARNING SyncRepWaitForLSN raises when its wait is cut short.
static void sync_wait_context(void* arg)
{
    const uint8* id = (const uint8*)arg;
    char idtext[37];
    if (id == NULL) {
        errcontext("while pg_atx messages were made durable on the synchronous standbys: they are durable on this "
                   "server, and a failover now could lose them");
        return;
    }
    atx_uuid_text(id, idtext);
    errcontext("while pg_atx message %s was made durable on the synchronous standbys: it is durable on this server, "
               "and a failover now could lose it",
               idtext);
}

// As a COMMIT under the caller's synchronous_commit: off tells the WAL writer (asynchronous
// commit); local flushes; remote_write, on and remote_apply also wait for the synchronous
// standbys. RecordTransactionCommit never waits for an aborted or xid-less transaction, so a
// non-transactional message must do this itself.
//
// Whether synchronous standbys are configured is left to SyncRepWaitForLSN, which reads it from
// shared memory as a COMMIT does, never from this backend's copy of synchronous_standby_names:
// a backend reloads the configuration only between commands, so a procedure or trigger that
// started while Patroni had the standby out would go on acknowledging messages the standby
// never got.
// It reads nothing of the walsenders' shared state: PostgreSQL's own wait says whether a wait
// happened, and its WARNING (with the context above) whether it was cut short.
static void make_durable(XLogRecPtr lsn, const uint8* id)
{
    ErrorContextCallback context;

    if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF) {
        XLogSetAsyncXactLSN(lsn);
        return;
    }
    XLogFlush(lsn);
    if (!SyncRepRequested() || am_walsender)
        return;
    // syncrep.c requires interrupts held; a cancel ends the wait with a WARNING of its own.
    context.callback = sync_wait_context;
    context.arg = (void*)id;
    context.previous = error_context_stack;
    error_context_stack = &context;
    HOLD_INTERRUPTS();
    SyncRepWaitForLSN(lsn, false);
    RESUME_INTERRUPTS();
    error_context_stack = context.previous;
}

static void batch_xact_callback(XactEvent event, void* arg)
{
    (void)arg;
    switch (event) {
    case XACT_EVENT_PRE_COMMIT:
    case XACT_EVENT_PRE_PREPARE:
        // A batch left open (its end was never reached) is made durable before the commit.
        if (batch_lsn != InvalidXLogRecPtr)
            make_durable(batch_lsn, NULL);
        batch_depth = 0;
        batch_lsn = InvalidXLogRecPtr;
        break;
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_ABORT:
        batch_depth = 0;
        batch_lsn = InvalidXLogRecPtr;
        break;
    default: break;
    }
}

// Writes payload with the pg_atx origin set only around the insert (the output plugin and
// the provenance check recognise atx_log's records by it), then makes it durable.
XLogRecPtr atx_write_message(const char* payload, size_t len, const uint8* id)
{
    RepOriginId origin = atx_emit_origin_id(false);
    RepOriginId saved = replorigin_session_origin;
    XLogRecPtr lsn = InvalidXLogRecPtr;

    PG_TRY();
    {
        replorigin_session_origin = origin;
#if PG_VERSION_NUM >= 170000
        lsn = LogLogicalMessage(atx::kMessagePrefix, payload, len, false, false);
#else
        lsn = LogLogicalMessage(atx::kMessagePrefix, payload, len, false);
#endif
    }
    PG_FINALLY();
    {
        // Must never still be set at commit: it would tag the caller's transaction.
        replorigin_session_origin = saved;
    }
    PG_END_TRY();
    if (batch_depth > 0) {
        if (lsn > batch_lsn)
            batch_lsn = lsn;
    } else {
        make_durable(lsn, id);
    }
    return lsn;
}

static Datum emit_batch_begin_body(FunctionCallInfo fcinfo)
{
    if (!batch_callback_registered) {
        RegisterXactCallback(batch_xact_callback, NULL);
        batch_callback_registered = true;
    }
    batch_depth++;
    PG_RETURN_VOID();
}

static Datum emit_batch_end_body(FunctionCallInfo fcinfo)
{
    if (batch_depth > 0 && --batch_depth == 0 && batch_lsn != InvalidXLogRecPtr) {
        XLogRecPtr lsn = batch_lsn;
        batch_lsn = InvalidXLogRecPtr;
        make_durable(lsn, NULL);
    }
    PG_RETURN_VOID();
}

static Datum emit_body(FunctionCallInfo fcinfo, bool keyed)
{
    uint8 id[16];
    char* payload;
    size_t len;
    pg_uuid_t* result;

    atx_build_message(fcinfo, keyed ? 1 : 0, keyed, false, keyed ? "atx_log_keyed" : "atx_log", id, &payload, &len);
    atx_write_message(payload, len, id);

    result = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));
    memcpy(result->data, id, UUID_LEN);
    PG_RETURN_UUID_P(result);
}

static Datum atx_log_body(FunctionCallInfo fcinfo) { return emit_body(fcinfo, false); }
static Datum atx_log_keyed_body(FunctionCallInfo fcinfo) { return emit_body(fcinfo, true); }

ATX_ENTRY(atx_log, atx_log_body)
ATX_ENTRY(atx_log_keyed, atx_log_keyed_body)
ATX_ENTRY(atx_emit_batch_begin, emit_batch_begin_body)
ATX_ENTRY(atx_emit_batch_end, emit_batch_end_body)
