// The call of an autonomous routine (see autonomous.h): the stub every such routine is, and the
// encoding of its body's result.
//
// The stub builds one waited message whose statement calls the body with the routine's own
// arguments as bound parameters ($1..$n, of the types the call resolved), writes it and waits
// exactly as atx_exec does (exec_wait.h: 40P01 on a deadlock with the caller, atx.exec_timeout,
// cancel), then hands back what the body returned, typed as the routine declares it. The body
// runs as atx_exec's statement would: as current_user at the call (a SECURITY DEFINER routine's
// owner, since fmgr switched to it before the stub runs), with the caller's settings.
//
// The result travels as the rows atx_exec returns (JSON), one value per row, each the type's
// binary send() output (text output for a type without one) with a leading 'b' or 't', as made
// by atx._autonomous_encode in the apply session: exact whatever the settings, and read back
// with the type's receive() here. A procedure's OUT and INOUT values come back as the row its
// CALL returns (JSON), read with json_to_record into the declared types.
//
// Plain C style (see pg_guard.h).
#include "autonomous.h"

#include "emit.h"
#include "exec_wait.h"
#include "pg_guard.h"

extern "C" {
#include "catalog/pg_proc.h"
#include "utils/regproc.h"
#include "utils/tuplestore.h"
}

#define AUTONOMOUS_FNAME "autonomous routine"

// What a call site needs, made on its first call (fn_extra, in fn_mcxt).
struct CallState {
    Oid routine;
    char* routine_text;  // regprocedure text, for messages
    char* statement;
    int nargs;
    Oid* argtypes;  // as resolved at this call site
    bool procedure;
    bool retset;
    bool is_void;
    TupleDesc tupdesc;  // a row result (blessed): composite, OUT parameters, TABLE
    Oid value_type;     // what each encoded value is read as
    int32 value_typmod;
    Oid recv_ioparam, in_ioparam;
    FmgrInfo recv, in;
    bool have_recv, have_in;
    char* out_sql;  // a procedure with OUT parameters: its CALL's row into the declared types
};

static void add_type_io(CallState* s, MemoryContext mcxt)
{
    HeapTuple t = SearchSysCache1(TYPEOID, ObjectIdGetDatum(s->value_type));
    Form_pg_type typ;

    if (!HeapTupleIsValid(t))
        elog(ERROR, "cache lookup failed for type %u", s->value_type);
    typ = (Form_pg_type)GETSTRUCT(t);
    s->have_recv = OidIsValid(typ->typreceive);
    s->have_in = OidIsValid(typ->typinput);
    if (s->have_recv)
        fmgr_info_cxt(typ->typreceive, &s->recv, mcxt);
    if (s->have_in)
        fmgr_info_cxt(typ->typinput, &s->in, mcxt);
    s->recv_ioparam = s->in_ioparam = getTypeIOParam(t);
    ReleaseSysCache(t);
}

// The arguments of the body's call: $1..$n for the call's own arguments (VARIADIC before the
// variadic one), NULL in the place of a procedure's OUT parameters, which a CALL names too.
static char* call_arguments(HeapTuple tup, int nargs)
{
    Form_pg_proc p = (Form_pg_proc)GETSTRUCT(tup);
    bool isnull;
    Datum modes = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_proargmodes, &isnull);
    StringInfoData out;
    int n = 0;

    initStringInfo(&out);
    if (isnull) {
        for (int i = 0; i < nargs; i++)
            appendStringInfo(&out, "%s%s$%d", i ? ", " : "",
                             OidIsValid(p->provariadic) && i == nargs - 1 ? "VARIADIC " : "", i + 1);
        return out.data;
    }
    {
        ArrayType* arr = DatumGetArrayTypeP(modes);
        const char* m = (const char*)ARR_DATA_PTR(arr);
        int nmodes = ARR_DIMS(arr)[0];
        bool first = true;
        for (int i = 0; i < nmodes; i++) {
            const char* sep = first ? "" : ", ";
            if (m[i] == PROARGMODE_TABLE || (m[i] == PROARGMODE_OUT && p->prokind != PROKIND_PROCEDURE))
                continue;
            first = false;
            if (m[i] == PROARGMODE_OUT)
                appendStringInfo(&out, "%sNULL", sep);
            else if (++n <= nargs)
                appendStringInfo(&out, "%s%s$%d", sep, m[i] == PROARGMODE_VARIADIC ? "VARIADIC " : "", n);
        }
    }
    return out.data;
}

static CallState* call_state(FunctionCallInfo fcinfo)
{
    MemoryContext mcxt = fcinfo->flinfo->fn_mcxt;
    MemoryContext old;
    CallState* s = (CallState*)fcinfo->flinfo->fn_extra;
    Oid routine = fcinfo->flinfo->fn_oid;
    HeapTuple tup;
    Form_pg_proc p;
    Oid body;
    char* body_name;
    StringInfoData sql;
    char* args;
    TypeFuncClass fclass;
    Oid rettype;
    TupleDesc desc;

    if (s != NULL && s->routine == routine)
        return s;
    old = MemoryContextSwitchTo(mcxt);
    s = (CallState*)palloc0(sizeof(CallState));
    s->routine = routine;
    s->routine_text = format_procedure(routine);
    tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(routine));
    if (!HeapTupleIsValid(tup))
        elog(ERROR, "cache lookup failed for function %u", routine);
    p = (Form_pg_proc)GETSTRUCT(tup);
    s->procedure = p->prokind == PROKIND_PROCEDURE;
    s->retset = p->proretset;
    body = atx_autonomous_find_body(tup);
    if (!OidIsValid(body))
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                 errmsg("the body of autonomous routine %s is missing", s->routine_text),
                 errdetail("Its body lives in schema %s; a dump that left that schema out, or a routine "
                           "renamed while event triggers were off, has none.",
                           ATX_AUTONOMOUS_SCHEMA),
                 errhint("Restore schema %s, or CREATE OR REPLACE the routine with its body.", ATX_AUTONOMOUS_SCHEMA)));
    body_name = quote_qualified_identifier(ATX_AUTONOMOUS_SCHEMA, get_func_name(body));

    s->nargs = PG_NARGS();
    s->argtypes = (Oid*)palloc(sizeof(Oid) * (s->nargs ? s->nargs : 1));
    for (int i = 0; i < s->nargs; i++) {
        Oid t = get_fn_expr_argtype(fcinfo->flinfo, i);
        s->argtypes[i] = OidIsValid(t) ? t : p->proargtypes.values[i];
        if (IsPolymorphicType(s->argtypes[i]))
            ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                            errmsg("could not determine the type of argument %d of autonomous routine %s", i + 1,
                                   s->routine_text)));
    }
    args = call_arguments(tup, s->nargs);
    ReleaseSysCache(tup);

    fclass = get_call_result_type(fcinfo, &rettype, &desc);
    if (desc != NULL) {
        s->tupdesc = BlessTupleDesc(CreateTupleDescCopy(desc));
        s->value_type = s->tupdesc->tdtypeid;
        s->value_typmod = s->tupdesc->tdtypmod;
    } else {
        s->value_type = rettype;
        s->value_typmod = -1;
    }
    initStringInfo(&sql);
    if (s->procedure) {
        appendStringInfo(&sql, "CALL %s(%s)", body_name, args);
        if (s->tupdesc != NULL) {
            StringInfoData cols;
            initStringInfo(&cols);
            for (int i = 0; i < s->tupdesc->natts; i++) {
                Form_pg_attribute a = TupleDescAttr(s->tupdesc, i);
                appendStringInfo(&cols, "%s%s %s", i ? ", " : "", quote_identifier(NameStr(a->attname)),
                                 format_type_extended(a->atttypid, a->atttypmod,
                                                      FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
            }
            s->out_sql = psprintf("SELECT * FROM pg_catalog.jsonb_to_record($1) AS atx_r(%s)", cols.data);
        }
    } else if (rettype == VOIDOID) {
        s->is_void = true;
        appendStringInfo(&sql, "SELECT %s(%s)", body_name, args);
    } else if (fclass == TYPEFUNC_RECORD || fclass == TYPEFUNC_OTHER) {
        ereport(ERROR,
                (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                 errmsg("autonomous routine %s returns a record whose columns it does not declare", s->routine_text),
                 errhint("Declare its columns with OUT parameters or RETURNS TABLE.")));
    } else if (!s->retset) {
        appendStringInfo(&sql, "SELECT atx._autonomous_encode(%s(%s)) AS v", body_name, args);
    } else if (fclass == TYPEFUNC_SCALAR) {
        appendStringInfo(&sql, "SELECT atx._autonomous_encode(v) AS v FROM %s(%s) AS atx_t(v)", body_name, args);
    } else if (fclass == TYPEFUNC_COMPOSITE) {
        appendStringInfo(&sql, "SELECT atx._autonomous_encode(\"atx.row\") AS v FROM %s(%s) AS \"atx.row\"", body_name,
                         args);
    } else {
        ereport(ERROR,
                (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                 errmsg("autonomous routine %s returns a set of a domain over a composite type", s->routine_text)));
    }
    s->statement = sql.data;
    if (!s->procedure && !s->is_void)
        add_type_io(s, mcxt);
    MemoryContextSwitchTo(old);
    fcinfo->flinfo->fn_extra = s;
    return s;
}

// The JSON outcome's "result" array (NULL: none), raising when it did not fit.
static JsonbContainer* result_rows(CallState* s, const AtxExecResult* r)
{
    Jsonb* outcome = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(r->json)));
    JsonbValue* v;

    v = getKeyJsonValueFromContainer(&outcome->root, "result_truncated", strlen("result_truncated"), NULL);
    if (v != NULL && v->type == jbvBool && v->val.boolean)
        ereport(
            ERROR,
            (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
             errmsg("the result of autonomous routine %s is larger than atx.exec_max_result_bytes", s->routine_text),
             errdetail("The routine ran and committed (pg_atx message %s); only its result is lost.", r->id_text),
             errhint("Raise atx.exec_max_result_bytes (server start), or return less.")));
    v = getKeyJsonValueFromContainer(&outcome->root, "result", strlen("result"), NULL);
    if (v == NULL || v->type != jbvBinary)
        return NULL;
    return v->val.binary.data;
}

// The value of row i ({"v": "\\x62..."}) read back as the declared type.
static Datum decode_value(CallState* s, JsonbContainer* rows, int i, bool* isnull)
{
    JsonbValue* row = getIthJsonbValueFromContainer(rows, i);
    JsonbValue* v;
    bytea* b;
    const char* data;
    int len;
    StringInfoData buf;

    if (row == NULL || row->type != jbvBinary)
        elog(ERROR, "autonomous routine result: row %d is not an object", i);
    v = getKeyJsonValueFromContainer(row->val.binary.data, "v", 1, NULL);
    if (v == NULL || v->type == jbvNull) {
        *isnull = true;
        return (Datum)0;
    }
    if (v->type != jbvString)
        elog(ERROR, "autonomous routine result: value %d is not a string", i);
    *isnull = false;
    b = DatumGetByteaPP(DirectFunctionCall1(byteain, CStringGetDatum(pnstrdup(v->val.string.val, v->val.string.len))));
    data = VARDATA_ANY(b);
    len = VARSIZE_ANY_EXHDR(b);
    if (len < 1 || (data[0] != 'b' && data[0] != 't'))
        elog(ERROR, "autonomous routine result: value %d has no encoding mark", i);
    initStringInfo(&buf);
    appendBinaryStringInfo(&buf, data + 1, len - 1);
    if (data[0] == 'b') {
        if (!s->have_recv)
            elog(ERROR, "type %s has no binary input function", format_type_be(s->value_type));
        return ReceiveFunctionCall(&s->recv, &buf, s->recv_ioparam, s->value_typmod);
    }
    if (!s->have_in)
        elog(ERROR, "type %s has no input function", format_type_be(s->value_type));
    return InputFunctionCall(&s->in, buf.data, s->in_ioparam, s->value_typmod);
}

static Datum return_set(FunctionCallInfo fcinfo, CallState* s, JsonbContainer* rows)
{
    ReturnSetInfo* rsinfo = (ReturnSetInfo*)fcinfo->resultinfo;
    MemoryContext old;
    Tuplestorestate* ts;
    TupleDesc desc;
    int n = rows ? (int)JsonContainerSize(rows) : 0;

    if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) || !(rsinfo->allowedModes & SFRM_Materialize))
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("set-valued function called in context that cannot accept a set")));
    old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
    if (s->tupdesc != NULL) {
        desc = CreateTupleDescCopy(s->tupdesc);
    } else {
        desc = CreateTemplateTupleDesc(1);
        TupleDescInitEntry(desc, (AttrNumber)1, "v", s->value_type, -1, 0);
    }
    ts = tuplestore_begin_heap(rsinfo->allowedModes & SFRM_Materialize_Random, false, work_mem);
    MemoryContextSwitchTo(old);
    for (int i = 0; i < n; i++) {
        bool isnull;
        Datum d = decode_value(s, rows, i, &isnull);
        if (s->tupdesc == NULL) {
            tuplestore_putvalues(ts, desc, &d, &isnull);
        } else if (isnull) {
            Datum* vals = (Datum*)palloc0(sizeof(Datum) * desc->natts);
            bool* nulls = (bool*)palloc(sizeof(bool) * desc->natts);
            memset(nulls, true, sizeof(bool) * desc->natts);
            tuplestore_putvalues(ts, desc, vals, nulls);
        } else {
            HeapTupleHeader td = DatumGetHeapTupleHeader(d);
            HeapTupleData t;
            t.t_len = HeapTupleHeaderGetDatumLength(td);
            ItemPointerSetInvalid(&t.t_self);
            t.t_tableOid = InvalidOid;
            t.t_data = td;
            tuplestore_puttuple(ts, &t);
        }
    }
    rsinfo->returnMode = SFRM_Materialize;
    rsinfo->setResult = ts;
    rsinfo->setDesc = desc;
    return (Datum)0;
}

// A procedure's OUT and INOUT values: the row its CALL returned, into the declared types.
static Datum procedure_outputs(CallState* s, JsonbContainer* rows)
{
    JsonbValue* row = rows && JsonContainerSize(rows) > 0 ? getIthJsonbValueFromContainer(rows, 0) : NULL;
    Oid types[1] = {JSONBOID};
    Datum values[1];
    Datum result;

    if (row == NULL) {
        // Every CALL of a procedure with OUT parameters returns a row, atomic or not (a
        // non-atomic run hands it back too: nonatomic.cc); none came: a row of NULLs, said
        // aloud (CALL wants a row: a NULL one is an error).
        Datum* vals = (Datum*)palloc0(sizeof(Datum) * s->tupdesc->natts);
        bool* nulls = (bool*)palloc(sizeof(bool) * s->tupdesc->natts);
        memset(nulls, true, sizeof(bool) * s->tupdesc->natts);
        ereport(WARNING, (errmsg("the OUT parameters of autonomous procedure %s are NULL", s->routine_text),
                          errdetail("Its CALL returned no row.")));
        return HeapTupleGetDatum(heap_form_tuple(s->tupdesc, vals, nulls));
    }
    values[0] = PointerGetDatum(JsonbValueToJsonb(row));
    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");
    if (SPI_execute_with_args(s->out_sql, 1, types, values, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
        elog(ERROR, "could not read the OUT parameters of %s", s->routine_text);
    result = PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0], s->tupdesc));
    SPI_finish();
    return result;
}

static void call_context(void* arg)
{
    CallState* s = (CallState*)arg;
    errcontext("autonomous routine %s", s->routine_text);
}

static Datum autonomous_call_body(FunctionCallInfo fcinfo)
{
    CallState* s = call_state(fcinfo);
    uint8 id[16];
    char* payload;
    size_t len;
    AtxExecResult r;
    JsonbContainer* rows;
    ErrorContextCallback ctx;
    Datum* values = (Datum*)palloc(sizeof(Datum) * (s->nargs ? s->nargs : 1));
    bool* nulls = (bool*)palloc(sizeof(bool) * (s->nargs ? s->nargs : 1));
    Datum result = (Datum)0;

    atx_exec_require_preload(AUTONOMOUS_FNAME);
    for (int i = 0; i < s->nargs; i++) {
        values[i] = fcinfo->args[i].value;
        nulls[i] = fcinfo->args[i].isnull;
    }
    ctx.callback = call_context;
    ctx.arg = s;
    ctx.previous = error_context_stack;
    error_context_stack = &ctx;
    atx_build_message_values(s->statement, s->nargs, values, s->argtypes, nulls, true, AUTONOMOUS_FNAME, id, &payload,
                             &len);
    atx_exec_write_and_wait(payload, len, id, AUTONOMOUS_FNAME, &r);
    if (strcmp(r.status, "failed") == 0)
        // The body's own error, as an ordinary call would raise it; the context names the routine
        // and the message (its dead letter).
        ereport(ERROR, (errcode(r.sqlerrcode), errmsg_internal("%s", r.error),
                        r.detail ? errdetail_internal("%s", r.detail) : 0, r.hint ? errhint("%s", r.hint) : 0,
                        errcontext("pg_atx message %s (dead-lettered)", r.id_text)));
    rows = result_rows(s, &r);
    if (s->procedure) {
        if (s->tupdesc != NULL)
            result = procedure_outputs(s, rows);
    } else if (s->is_void) {
        result = (Datum)0;
    } else if (s->retset) {
        result = return_set(fcinfo, s, rows);
    } else if (rows == NULL || JsonContainerSize(rows) == 0) {
        fcinfo->isnull = true;
    } else {
        bool isnull;
        result = decode_value(s, rows, 0, &isnull);
        fcinfo->isnull = isnull;
    }
    error_context_stack = ctx.previous;
    return result;
}

// atx._autonomous_encode("any") RETURNS bytea, in the apply session: 'b' and the type's send()
// output, or 't' and its text output when it has no send function.
struct EncodeState {
    Oid type;
    bool binary;
    FmgrInfo fn;
};

static Datum autonomous_encode_body(FunctionCallInfo fcinfo)
{
    EncodeState* e = (EncodeState*)fcinfo->flinfo->fn_extra;
    Oid type = get_fn_expr_argtype(fcinfo->flinfo, 0);
    bytea* out;

    if (PG_ARGISNULL(0))
        PG_RETURN_NULL();
    if (!OidIsValid(type))
        elog(ERROR, "could not determine the type to encode");
    if (e == NULL || e->type != type) {
        HeapTuple t = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
        Form_pg_type typ;
        if (!HeapTupleIsValid(t))
            elog(ERROR, "cache lookup failed for type %u", type);
        typ = (Form_pg_type)GETSTRUCT(t);
        e = (EncodeState*)MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(EncodeState));
        e->type = type;
        e->binary = OidIsValid(typ->typsend);
        fmgr_info_cxt(e->binary ? typ->typsend : typ->typoutput, &e->fn, fcinfo->flinfo->fn_mcxt);
        ReleaseSysCache(t);
        fcinfo->flinfo->fn_extra = e;
    }
    if (e->binary) {
        bytea* b = SendFunctionCall(&e->fn, PG_GETARG_DATUM(0));
        int n = VARSIZE_ANY_EXHDR(b);
        out = (bytea*)palloc(VARHDRSZ + 1 + n);
        SET_VARSIZE(out, VARHDRSZ + 1 + n);
        VARDATA(out)[0] = 'b';
        memcpy(VARDATA(out) + 1, VARDATA_ANY(b), n);
    } else {
        char* str = OutputFunctionCall(&e->fn, PG_GETARG_DATUM(0));
        int n = strlen(str);
        out = (bytea*)palloc(VARHDRSZ + 1 + n);
        SET_VARSIZE(out, VARHDRSZ + 1 + n);
        VARDATA(out)[0] = 't';
        memcpy(VARDATA(out) + 1, str, n);
    }
    PG_RETURN_BYTEA_P(out);
}

ATX_ENTRY(atx_autonomous_encode, autonomous_encode_body)
ATX_ENTRY(atx_autonomous_call, autonomous_call_body)
