// See text_format.h.
#include "text_format.h"

extern "C" {
#include "utils/fmgrprotos.h"
}

void atx_append_hex(StringInfo out, const char* data, size_t len)
{
    static const char* hex = "0123456789abcdef";
    appendStringInfoString(out, "\\x");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        appendStringInfoChar(out, hex[c >> 4]);
        appendStringInfoChar(out, hex[c & 0xf]);
    }
}

// Built-in (bootstrap/initdb) types, excluding domains and pseudo-types: their
// receive and output functions are C code that touches no user tables, so
// they may run in a decoding context under a historic snapshot.
static bool is_safe_builtin(Oid type)
{
    HeapTuple tup;
    Form_pg_type typ;
    bool ok;

    if (type >= FirstNormalObjectId)
        return false;
    tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
    if (!HeapTupleIsValid(tup))
        return false;
    typ = (Form_pg_type)GETSTRUCT(tup);
    ok = typ->typtype == TYPTYPE_BASE && OidIsValid(typ->typreceive) && OidIsValid(typ->typoutput);
    // Arrays are safe only if their element type is.
    if (ok && OidIsValid(typ->typelem) && typ->typelem >= FirstNormalObjectId)
        ok = false;
    ReleaseSysCache(tup);
    return ok;
}

// Common built-in types whose receive and output functions need neither the
// catalogs nor flinfo, so they can run where there is no transaction at all
// (a walsender decoding a non-transactional message).
struct CatalogFreeType {
    Oid type;
    PGFunction recv;
    PGFunction out;
};
static const CatalogFreeType catalog_free_types[] = {
    {BOOLOID, boolrecv, boolout},
    {INT2OID, int2recv, int2out},
    {INT4OID, int4recv, int4out},
    {INT8OID, int8recv, int8out},
    {OIDOID, oidrecv, oidout},
    {FLOAT4OID, float4recv, float4out},
    {FLOAT8OID, float8recv, float8out},
    {NUMERICOID, numeric_recv, numeric_out},
    {TEXTOID, textrecv, textout},
    {VARCHAROID, varcharrecv, varcharout},
    {BPCHAROID, bpcharrecv, bpcharout},
    {NAMEOID, namerecv, nameout},
    {BYTEAOID, bytearecv, byteaout},
    {UUIDOID, uuid_recv, uuid_out},
    {JSONOID, json_recv, json_out},
    {JSONBOID, jsonb_recv, jsonb_out},
    {DATEOID, date_recv, date_out},
    {TIMESTAMPOID, timestamp_recv, timestamp_out},
    {TIMESTAMPTZOID, timestamptz_recv, timestamptz_out},
    {INTERVALOID, interval_recv, interval_out},
};

static bool append_catalog_free(StringInfo out, const AtxParamC* p)
{
    for (size_t i = 0; i < lengthof(catalog_free_types); i++) {
        const CatalogFreeType* t = &catalog_free_types[i];
        StringInfoData buf;
        Datum d;

        if (t->type != p->type_oid)
            continue;
        initStringInfo(&buf);
        appendBinaryStringInfo(&buf, p->value, (int)p->value_len);
        d = DirectFunctionCall3(t->recv, PointerGetDatum(&buf), ObjectIdGetDatum(t->type), Int32GetDatum(-1));
        if (buf.cursor != buf.len)
            return false;
        appendStringInfoString(out, DatumGetCString(DirectFunctionCall1(t->out, d)));
        return true;
    }
    return false;
}

void atx_append_param_value(StringInfo out, const AtxParamC* p, bool safe_convert)
{
    if (p->is_null) {
        appendStringInfoString(out, "NULL");
        return;
    }
    if (!p->binary) {
        appendStringInfoString(out, p->value);
        return;
    }
    // Without a transaction no catalog lookup is possible.
    if (!IsTransactionState()) {
        if (!append_catalog_free(out, p))
            atx_append_hex(out, p->value, p->value_len);
        return;
    }
    if (safe_convert && is_safe_builtin(p->type_oid)) {
        Oid recv, ioparam, outfn;
        bool varlena;
        StringInfoData buf;
        Datum d;

        getTypeBinaryInputInfo(p->type_oid, &recv, &ioparam);
        getTypeOutputInfo(p->type_oid, &outfn, &varlena);
        // The receive function reads from a StringInfo it may not modify past len.
        initStringInfo(&buf);
        appendBinaryStringInfo(&buf, p->value, (int)p->value_len);
        d = OidReceiveFunctionCall(recv, &buf, ioparam, -1);
        if (buf.cursor == buf.len) {
            appendStringInfoString(out, OidOutputFunctionCall(outfn, d));
            return;
        }
    }
    atx_append_hex(out, p->value, p->value_len);
}
