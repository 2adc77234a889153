// atx_log / atx_log_keyed: build, sign and write one pg_atx message.
//
// Written in plain C style (no C++ objects with destructors) because nearly
// every line calls PostgreSQL; the codec runs behind the noexcept bridge.
#include "atx_ext.h"
#include "codec_bridge.h"
#include "hmac_key.h"
#include "message.h"
#include "pg_guard.h"

// Refusals that need no message: standby, wal_level, no slot.
static void check_can_emit(void)
{
    if (RecoveryInProgress())
        ereport(ERROR, (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
                        errmsg("atx_log cannot run during recovery"),
                        errhint("Messages are written to the WAL: call atx_log on the primary.")));
    if (wal_level < WAL_LEVEL_LOGICAL)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("atx_log requires wal_level = logical"),
                        errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
    if (!atx_have_slot_for_database(MyDatabaseId))
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                 errmsg("no pg_atx replication slot exists for database \"%s\"",
                        get_database_name(MyDatabaseId)),
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

// Names of the GUCs to capture: the defaults, then atx.capture_gucs
// (duplicates dropped, case-insensitively).
static List* capture_names(void)
{
    List* names = NIL;
    for (int i = 0; i < atx_n_default_gucs; i++)
        names = lappend(names, pstrdup(atx_default_gucs[i]));
    if (atx_capture_gucs && atx_capture_gucs[0]) {
        char* raw = pstrdup(atx_capture_gucs);
        List* extra = NIL;
        ListCell* lc;
        if (!SplitIdentifierString(raw, ',', &extra))
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                            errmsg("invalid list syntax in atx.capture_gucs")));
        foreach (lc, extra) {
            const char* name = (const char*)lfirst(lc);
            bool dup = false;
            ListCell* lc2;
            foreach (lc2, names)
                if (pg_strcasecmp((const char*)lfirst(lc2), name) == 0)
                    dup = true;
            if (!dup)
                names = lappend(names, pstrdup(name));
        }
    }
    return names;
}

// Fills p from one argument: binary (send) when the type has send and
// receive functions, else its text output.
static void fill_param(AtxParamC* p, Oid type, Datum value, bool isnull)
{
    HeapTuple tup;
    Form_pg_type typ;
    Oid typsend, typreceive, typoutput;

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
    char typtype = typ->typtype;
    ReleaseSysCache(tup);
    // Anonymous records are described only in this backend's typmod cache.
    if (type == RECORDOID)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("atx_log cannot pass a value of an anonymous record type"),
                        errhint("Cast it to a named composite type.")));
    if (typtype == TYPTYPE_PSEUDO && type != UNKNOWNOID)
        ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
                        errmsg("atx_log cannot pass a value of pseudo-type %s", p->type_name)));

    p->binary = OidIsValid(typsend) && OidIsValid(typreceive);
    if (isnull)
        return;
    if (p->binary) {
        bytea* b = OidSendFunctionCall(typsend, value);
        p->value = VARDATA_ANY(b);
        p->value_len = VARSIZE_ANY_EXHDR(b);
    } else {
        char* s = OidOutputFunctionCall(typoutput, value);
        p->value = s;
        p->value_len = strlen(s);
    }
}

// Writes payload with the pg_atx origin set only around the insert, then
// flushes it: a non-transactional message is otherwise lost on a crash and
// not sent by a walsender, which reads flushed WAL only.
XLogRecPtr atx_write_message(const char* payload, size_t len)
{
    RepOriginId origin = atx_emit_origin_id(false);
    RepOriginId saved = replorigin_session_origin;
    XLogRecPtr lsn = InvalidXLogRecPtr;

    PG_TRY();
    {
        replorigin_session_origin = origin;
#if PG_VERSION_NUM >= 170000
        lsn = LogLogicalMessage(atx::kMessagePrefix, payload, len, false, true);
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
#if PG_VERSION_NUM < 170000
    XLogFlush(lsn);
#endif
    return lsn;
}

// Builds and signs the message of an atx_log / atx_exec call (the refusals of
// check_can_emit included) without writing it: id_out receives the message id,
// *payload_out / *len_out the signed payload (palloc'd).
void atx_build_message(FunctionCallInfo fcinfo, bool keyed, uint8 id_out[16], char** payload_out, size_t* len_out)
{
    int stmt_arg = keyed ? 1 : 0;
    AtxMessageC m;
    Datum* args = NULL;
    Oid* types = NULL;
    bool* nulls = NULL;
    int nargs;
    List* gucs;
    ListCell* lc;
    int i;
    char* body;
    size_t body_len;
    char* payload;
    uint8 mac[32];
    atx::CaughtError err;
    FullTransactionId fxid;

    check_can_emit();

    memset(&m, 0, sizeof m);
    if (PG_ARGISNULL(stmt_arg))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("statement must not be NULL")));
    m.statement = text_to_cstring(PG_GETARG_TEXT_PP(stmt_arg));
    if (is_blank(m.statement))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("statement must not be empty"),
                        errhint("Pass the SQL statement to run as the first argument.")));
    if (keyed) {
        if (PG_ARGISNULL(0))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                            errmsg("idempotency key must not be NULL"),
                            errhint("Use atx_log() for a message without a key.")));
        m.key = text_to_cstring(PG_GETARG_TEXT_PP(0));
        if (m.key[0] == '\0')
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                            errmsg("idempotency key must not be empty")));
        if (strlen(m.key) > PG_UINT16_MAX)
            ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                            errmsg("idempotency key is too long (%zu bytes, at most 65535)", strlen(m.key))));
    }

    // Parameters: explicit VARIADIC arrays are expanded, unknown literals become text.
    nargs = extract_variadic_args(fcinfo, stmt_arg + 1, true, &args, &types, &nulls);
    if (nargs < 0)
        nargs = 0;  // VARIADIC NULL: no parameters
    if (nargs > PG_UINT16_MAX)
        ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                        errmsg("too many parameters for atx_log: %d (at most 65535)", nargs)));
    m.nparams = nargs;
    m.params = (AtxParamC*)palloc0(sizeof(AtxParamC) * (nargs ? nargs : 1));
    for (i = 0; i < nargs; i++)
        fill_param(&m.params[i], types[i], args[i], nulls[i]);

    // Identity and context.
    if (!pg_strong_random(m.id, sizeof m.id))
        ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not generate a random message id")));
    m.id[6] = (m.id[6] & 0x0f) | 0x40;  // UUID version 4
    m.id[8] = (m.id[8] & 0x3f) | 0x80;  // RFC 4122 variant
    m.database_oid = MyDatabaseId;
    m.role_oid = GetUserId();  // current_user: a SECURITY DEFINER function's owner
    m.role_name = GetUserNameFromId(m.role_oid, false);
    fxid = GetTopFullTransactionIdIfAny();
    m.caller_xid = FullTransactionIdIsValid(fxid) ? U64FromFullTransactionId(fxid) : 0;
    m.emit_time = GetCurrentTimestamp();

    gucs = capture_names();
    m.nguc = list_length(gucs);
    m.gucs = (AtxGucC*)palloc0(sizeof(AtxGucC) * m.nguc);
    i = 0;
    foreach (lc, gucs) {
        const char* name = (const char*)lfirst(lc);
        const char* varname = NULL;
        m.gucs[i].value = GetConfigOptionByName(name, &varname, false);
        m.gucs[i].name = varname ? varname : name;
        i++;
    }

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

static Datum emit_body(FunctionCallInfo fcinfo, bool keyed)
{
    uint8 id[16];
    char* payload;
    size_t len;
    pg_uuid_t* result;

    atx_build_message(fcinfo, keyed, id, &payload, &len);
    atx_write_message(payload, len);

    result = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));
    memcpy(result->data, id, UUID_LEN);
    PG_RETURN_UUID_P(result);
}

static Datum atx_log_body(FunctionCallInfo fcinfo) { return emit_body(fcinfo, false); }
static Datum atx_log_keyed_body(FunctionCallInfo fcinfo) { return emit_body(fcinfo, true); }

ATX_ENTRY(atx_log, atx_log_body)
ATX_ENTRY(atx_log_keyed, atx_log_keyed_body)
