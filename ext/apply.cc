// atx.apply_message / atx.apply / atx.decode: verify a message and run it as
// its caller.
//
// Plain C style throughout (see pg_guard.h): this file is nothing but
// PostgreSQL calls, subtransactions and longjmps; the codec runs behind the
// noexcept bridge in codec_bridge.cc.
#include "atx_ext.h"
#include "codec_bridge.h"
#include "hmac_key.h"
#include "message.h"
#include "pg_guard.h"
#include "plan_cache.h"
#include "text_format.h"

#define APPLIER_ROLE "atx_applier"

// Outcome of one apply, filled by validate_message and execute_message.
struct ApplyResult {
    bool have_id;
    uint8 id[16];
    const char* status;  // "applied", "duplicate", "failed"
    int sqlerrcode;      // for "failed"
    char* error;         // for "failed"
    ErrorData* edata;    // the caught error of a failed statement (raise mode)
    const char* command; // command tag of the (last) statement
    int64 rows;          // SPI_processed
    bool waited;         // an atx_exec caller waits for this message (exec.cc)
    char* result;        // waited: the returned rows as a JSON array, NULL: none
    bool truncated;      // waited: rows returned, but over atx.exec_max_result_bytes
};

// The rows the statement returned (SPI_tuptable), as a JSON array of
// row_to_json objects built in cxt, for an atx_exec caller. Stops at the
// waiter slot's capacity (atx.exec_max_result_bytes): then no rows, truncated.
static void capture_rows(ApplyResult* r, MemoryContext cxt)
{
    SPITupleTable* tt = SPI_tuptable;
    uint64 n = SPI_processed;
    int cap = atx_exec_result_capacity();
    MemoryContext old = MemoryContextSwitchTo(cxt);
    TupleDesc td = BlessTupleDesc(tt->tupdesc);
    StringInfoData b;

    initStringInfo(&b);
    appendStringInfoChar(&b, '[');
    for (uint64 i = 0; i < n; i++) {
        Datum row = heap_copy_tuple_as_datum(tt->vals[i], td);
        text* json = DatumGetTextPP(DirectFunctionCall1(row_to_json, row));
        if (i > 0)
            appendStringInfoString(&b, ", ");
        appendBinaryStringInfo(&b, VARDATA_ANY(json), VARSIZE_ANY_EXHDR(json));
        if (b.len + 1 > cap) {
            r->truncated = true;
            break;
        }
    }
    appendStringInfoChar(&b, ']');
    if (r->truncated) {
        pfree(b.data);
        r->result = NULL;
    } else {
        r->result = b.data;
    }
    MemoryContextSwitchTo(old);
}

// For an atx_exec caller: a success is queued for publication at COMMIT; a
// failure's detail and hint are kept until the message is dead-lettered (the
// trigger on atx.dead_letter queues the failure itself, exec.cc).
static void report_to_waiter(const ApplyResult* r)
{
    AtxExecOutcome o;

    if (!r->waited)
        return;
    if (strcmp(r->status, "failed") == 0) {
        atx_exec_stash_failure(r->id, r->edata ? r->edata->detail : NULL, r->edata ? r->edata->hint : NULL);
        return;
    }
    memset(&o, 0, sizeof o);
    memcpy(o.id, r->id, 16);
    o.status = r->status;
    o.command = r->command;
    o.rows = r->rows;
    o.result = r->result;
    o.truncated = r->truncated;
    atx_exec_queue_outcome(&o);
}

// Only superusers and members of atx_applier may run other roles' statements.
// This raises: it is the caller's problem, not the message's.
static void check_caller(void)
{
    Oid applier;

    if (superuser())
        return;
    applier = get_role_oid(APPLIER_ROLE, true);
    if (OidIsValid(applier) && has_privs_of_role(GetUserId(), applier))
        return;
    ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("permission denied to apply pg_atx messages"),
                    errhint("Only superusers and members of role \"%s\" may apply messages.", APPLIER_ROLE)));
}

static void fail(ApplyResult* r, int code, char* message)
{
    r->status = "failed";
    r->sqlerrcode = code;
    r->error = message;
}

// Decodes the payload and checks MAC, database and role. On failure fills r
// (status "failed") and returns false.
static bool validate_message(bytea* payload, AtxMessageC* m, ApplyResult* r)
{
    const char* data = VARDATA_ANY(payload);
    size_t len = VARSIZE_ANY_EXHDR(payload);
    atx::CaughtError err;
    uint8 mac[32];

    // The id sits at a fixed offset: report it even for a message that fails to decode.
    if (len >= 5 + 16 && memcmp(data, atx::kMagic, 3) == 0) {
        r->have_id = true;
        memcpy(r->id, data + 5, 16);
    }
    if (!atx_decode_payload(data, len, m, &err)) {
        fail(r, err.sqlerrcode, pstrdup(err.message));
        return false;
    }
    atx_hmac_sha256(m->body, m->body_len, mac);
    if (!atx_mac_equal(mac, (const uint8*)m->mac)) {
        fail(r, ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
             pstrdup("pg_atx message authentication failed: HMAC mismatch (altered, forged, or signed with another "
                     "cluster's key)"));
        return false;
    }
    if (m->database_oid != MyDatabaseId) {
        fail(r, ERRCODE_INVALID_PARAMETER_VALUE,
             psprintf("pg_atx message is for database %u, not for this database (%u)", m->database_oid,
                      MyDatabaseId));
        return false;
    }
    // A dropped role is an error, never a fallback to the applier's role.
    if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(m->role_oid))) {
        fail(r, ERRCODE_UNDEFINED_OBJECT,
             psprintf("role with OID %u (\"%s\") of the pg_atx message does not exist", m->role_oid,
                      m->role_name));
        return false;
    }
    return true;
}

// Converts the message's parameters to Datums, in the switched user context.
static void decode_params(const AtxMessageC* m, Oid* types, Datum* values, char* nulls)
{
    for (int i = 0; i < m->nparams; i++) {
        const AtxParamC* p = &m->params[i];
        Oid fn, ioparam;

        types[i] = p->type_oid;
        if (!SearchSysCacheExists1(TYPEOID, ObjectIdGetDatum(p->type_oid)))
            ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
                            errmsg("type %s (OID %u) of parameter $%d does not exist", p->type_name,
                                   p->type_oid, i + 1)));
        if (p->is_null) {
            values[i] = (Datum)0;
            nulls[i] = 'n';
            continue;
        }
        nulls[i] = ' ';
        if (p->binary) {
            StringInfoData buf;
            getTypeBinaryInputInfo(p->type_oid, &fn, &ioparam);
            initStringInfo(&buf);
            appendBinaryStringInfo(&buf, p->value, (int)p->value_len);
            values[i] = OidReceiveFunctionCall(fn, &buf, ioparam, -1);
            if (buf.cursor != buf.len)
                ereport(ERROR, (errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
                                errmsg("incorrect binary data format in parameter $%d", i + 1)));
        } else {
            getTypeInputInfo(p->type_oid, &fn, &ioparam);
            values[i] = OidInputFunctionCall(fn, (char*)p->value, ioparam, -1);
        }
    }
}


// Runs the verified message in an internal subtransaction, as its role,
// with its GUCs. Errors are caught into r (the subtransaction is rolled back);
// r->edata keeps the original error for atx.apply to rethrow.
static void execute_message(const AtxMessageC* m, ApplyResult* r)
{
    MemoryContext oldcontext = CurrentMemoryContext;
    ResourceOwner oldowner = CurrentResourceOwner;
    Oid save_userid;
    int save_sec_context;
    int n = m->nparams;
    Oid* types = (Oid*)palloc0(sizeof(Oid) * (n ? n : 1));
    Datum* values = (Datum*)palloc0(sizeof(Datum) * (n ? n : 1));
    char* nulls = (char*)palloc0(n + 1);

    AtxCurrentMessage saved_message;  // atx.current_message() outside this statement

    GetUserIdAndSecContext(&save_userid, &save_sec_context);
    atx_current_message_save(&saved_message);

    BeginInternalSubTransaction(NULL);
    MemoryContextSwitchTo(oldcontext);

    PG_TRY();
    {
        bool duplicate = false;

        if (SPI_connect() != SPI_OK_CONNECT)
            elog(ERROR, "SPI_connect failed");

        if (m->key) {
            // As the applier: the key table is not the caller's business.
            Oid ktypes[2] = {TEXTOID, UUIDOID};
            Datum kvalues[2];
            pg_uuid_t* uuid = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));
            int rc;

            memcpy(uuid->data, m->id, UUID_LEN);
            kvalues[0] = CStringGetTextDatum(m->key);
            kvalues[1] = UUIDPGetDatum(uuid);
            rc = SPI_execute_with_args("INSERT INTO atx.idempotency_key (key, message_id, applied_at) "
                                       "VALUES ($1, $2, pg_catalog.now()) ON CONFLICT (key) DO NOTHING",
                                       2, ktypes, kvalues, NULL, false, 0);
            if (rc != SPI_OK_INSERT)
                elog(ERROR, "could not record idempotency key: %s", SPI_result_code_string(rc));
            duplicate = SPI_processed == 0;
        }

        if (duplicate) {
            r->status = "duplicate";
        } else {
            int nestlevel;
            int rc;
            const char* tag = NULL;
            GucContext gcontext;

            // From here on nothing may regain the applier's identity:
            // SET ROLE, SET SESSION AUTHORIZATION etc. fail in a
            // security-restricted operation.
            SetUserIdAndSecContext(m->role_oid, save_sec_context | SECURITY_RESTRICTED_OPERATION);
            nestlevel = NewGUCNestLevel();
            // The caller's privileges decide which GUCs it may set.
            gcontext = superuser() ? PGC_SUSET : PGC_USERSET;
            for (int i = 0; i < m->nguc; i++) {
                // A value already in effect is not set again: a role may
                // capture a parameter it may read but not set (e.g. one set in
                // postgresql.conf), which must not fail the message.
                const char* current = GetConfigOptionByName(m->gucs[i].name, NULL, true);
                if (current != NULL && strcmp(current, m->gucs[i].value) == 0)
                    continue;
                (void)set_config_option(m->gucs[i].name, m->gucs[i].value, gcontext, PGC_S_SESSION,
                                        GUC_ACTION_SAVE, true, 0, false);
            }

            decode_params(m, types, values, nulls);

            atx_current_message_set(m->id, m->role_oid, m->role_name, m->caller_xid, m->emit_time, m->key);
            rc = atx_execute_cached(m->statement, n, types, values, nulls, &tag);
            if (rc == SPI_ERROR_TRANSACTION)
                ereport(ERROR, (errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
                                errmsg("transaction control statements are not allowed in a pg_atx message")));
            if (rc == SPI_ERROR_COPY)
                ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                                errmsg("COPY to or from the client is not allowed in a pg_atx message")));
            if (rc < 0)
                ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
                                errmsg("could not execute pg_atx statement: %s", SPI_result_code_string(rc))));
            r->rows = (int64)SPI_processed;
            if (r->waited && SPI_tuptable != NULL)
                capture_rows(r, oldcontext);
            r->command = tag;

            // Deferred triggers and constraints would otherwise fire at the
            // applier's COMMIT, as the applier.
            rc = atx_execute_cached("SET CONSTRAINTS ALL IMMEDIATE", 0, NULL, NULL, NULL, &tag);
            if (rc < 0)
                elog(ERROR, "SET CONSTRAINTS failed: %s", SPI_result_code_string(rc));
            atx_current_message_restore(&saved_message);

            AtEOXact_GUC(false, nestlevel);  // undo the captured GUCs and every SET inside
            SetUserIdAndSecContext(save_userid, save_sec_context);
            r->status = "applied";
        }

        if (SPI_finish() != SPI_OK_FINISH)
            elog(ERROR, "SPI_finish failed");
        ReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(oldcontext);
        CurrentResourceOwner = oldowner;
    }
    PG_CATCH();
    {
        ErrorData* edata;

        atx_current_message_restore(&saved_message);
        MemoryContextSwitchTo(oldcontext);
        edata = CopyErrorData();
        FlushErrorState();

        // Also pops the GUC nest level and the SPI connection, and restores
        // the user id saved at subtransaction start.
        RollbackAndReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(oldcontext);
        CurrentResourceOwner = oldowner;
        SetUserIdAndSecContext(save_userid, save_sec_context);

        r->edata = edata;
        r->command = NULL;
        r->rows = 0;
        r->result = NULL;
        r->truncated = false;
        fail(r, edata->sqlerrcode, pstrdup(edata->message ? edata->message : "unknown error"));
    }
    PG_END_TRY();
}

static Datum uuid_datum(const uint8 id[16])
{
    pg_uuid_t* u = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));
    memcpy(u->data, id, UUID_LEN);
    return UUIDPGetDatum(u);
}

// What atx.apply_message and atx.apply check first: the caller, then the argument; returns the
// payload and the result row type.
static bytea* apply_arguments(FunctionCallInfo fcinfo, TupleDesc* tupdesc)
{
    check_caller();
    if (PG_ARGISNULL(0))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("payload must not be NULL")));
    if (get_call_result_type(fcinfo, NULL, tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    return PG_GETARG_BYTEA_PP(0);
}

static Datum apply_message_body(FunctionCallInfo fcinfo)
{
    bytea* payload;
    AtxMessageC m;
    ApplyResult r;
    TupleDesc tupdesc;
    Datum values[6];
    bool nulls[6];

    payload = apply_arguments(fcinfo, &tupdesc);

    memset(&r, 0, sizeof r);
    atx_exec_note_apply_backend();
    if (validate_message(payload, &m, &r)) {
        r.waited = atx_exec_is_waited(r.id);
        execute_message(&m, &r);
    } else if (r.have_id) {
        r.waited = atx_exec_is_waited(r.id);
    }
    report_to_waiter(&r);

    memset(nulls, true, sizeof nulls);
    if (r.have_id) {
        values[0] = uuid_datum(r.id);
        nulls[0] = false;
    }
    values[1] = CStringGetTextDatum(r.status);
    nulls[1] = false;
    if (strcmp(r.status, "failed") == 0) {
        values[2] = CStringGetTextDatum(unpack_sql_state(r.sqlerrcode));
        values[3] = CStringGetTextDatum(r.error);
        nulls[2] = nulls[3] = false;
    } else if (strcmp(r.status, "applied") == 0) {
        values[4] = CStringGetTextDatum(r.command);
        values[5] = Int64GetDatum(r.rows);
        nulls[4] = nulls[5] = false;
    }
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

static Datum apply_body(FunctionCallInfo fcinfo)
{
    bytea* payload;
    AtxMessageC m;
    ApplyResult r;
    TupleDesc tupdesc;
    Datum values[3];
    bool nulls[3];

    payload = apply_arguments(fcinfo, &tupdesc);

    memset(&r, 0, sizeof r);
    if (!validate_message(payload, &m, &r))
        ereport(ERROR, (errcode(r.sqlerrcode), errmsg("%s", r.error)));
    r.waited = atx_exec_is_waited(r.id);
    execute_message(&m, &r);
    if (r.edata)
        ReThrowError(r.edata);  // the statement's own error, unchanged
    report_to_waiter(&r);

    memset(nulls, true, sizeof nulls);
    values[0] = uuid_datum(r.id);
    nulls[0] = false;
    if (strcmp(r.status, "applied") == 0) {
        values[1] = CStringGetTextDatum(r.command);
        values[2] = Int64GetDatum(r.rows);
        nulls[1] = nulls[2] = false;
    } else {
        ereport(NOTICE, (errmsg("pg_atx message skipped: idempotency key \"%s\" was already applied", m.key)));
    }
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

// atx.decode: the fields of a payload as jsonb, without MAC check, for
// displaying dead letters.
static Datum decode_body(FunctionCallInfo fcinfo)
{
    bytea* payload = PG_GETARG_BYTEA_PP(0);
    AtxMessageC m;
    atx::CaughtError err;
    StringInfoData s;
    char id[37];

    if (!atx_decode_payload(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), &m, &err))
        atx::raise_caught(err);

    atx_uuid_text(m.id, id);
    initStringInfo(&s);
    appendStringInfo(&s, "{\"id\": \"%s\", \"database_oid\": %u, \"role_oid\": %u, \"role\": ", id, m.database_oid,
                     m.role_oid);
    escape_json(&s, m.role_name);
    if (m.caller_xid)
        appendStringInfo(&s, ", \"caller_xid\": " UINT64_FORMAT, m.caller_xid);
    else
        appendStringInfoString(&s, ", \"caller_xid\": null");
    appendStringInfoString(&s, ", \"emitted_at\": ");
    escape_json(&s, JsonEncodeDateTime(NULL, TimestampTzGetDatum(m.emit_time), TIMESTAMPTZOID, NULL));
    appendStringInfoString(&s, ", \"gucs\": {");
    for (int i = 0; i < m.nguc; i++) {
        if (i > 0)
            appendStringInfoString(&s, ", ");
        escape_json(&s, m.gucs[i].name);
        appendStringInfoString(&s, ": ");
        escape_json(&s, m.gucs[i].value);
    }
    appendStringInfoString(&s, "}, \"statement\": ");
    escape_json(&s, m.statement);
    appendStringInfoString(&s, ", \"params\": [");
    for (int i = 0; i < m.nparams; i++) {
        const AtxParamC* p = &m.params[i];
        if (i > 0)
            appendStringInfoString(&s, ", ");
        appendStringInfoString(&s, "{\"type\": ");
        escape_json(&s, p->type_name);
        appendStringInfo(&s, ", \"type_oid\": %u, \"null\": %s, \"binary\": %s, \"value\": ", p->type_oid,
                         p->is_null ? "true" : "false", p->binary ? "true" : "false");
        if (p->is_null) {
            appendStringInfoString(&s, "null");
        } else {
            StringInfoData v;
            initStringInfo(&v);
            atx_append_param_value(&v, p, true);
            escape_json(&s, v.data);
        }
        appendStringInfoChar(&s, '}');
    }
    appendStringInfoString(&s, "], \"key\": ");
    if (m.key)
        escape_json(&s, m.key);
    else
        appendStringInfoString(&s, "null");
    appendStringInfoChar(&s, '}');

    PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(s.data)));
}

ATX_ENTRY(atx_apply_message, apply_message_body)
ATX_ENTRY(atx_apply, apply_body)
ATX_ENTRY(atx_decode, decode_body)
