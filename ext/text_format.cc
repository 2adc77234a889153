// See text_format.h.
#include "text_format.h"

extern "C" {
#include "utils/fmgrprotos.h"
#include "utils/fmgroids.h"
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

static bool catalog_free(Oid type)
{
    for (size_t i = 0; i < lengthof(catalog_free_types); i++)
        if (catalog_free_types[i].type == type)
            return true;
    return false;
}

// A built-in array type (pg_type's own row says so: its element is one of the types above) goes
// through array_recv and array_out, which call only its element's functions.
static bool append_array_of_catalog_free(StringInfo out, const AtxParamC* p)
{
    HeapTuple tup;
    Oid elem;
    bool is_array;
    StringInfoData buf;
    Datum d;

    if (p->type_oid >= FirstNormalObjectId)
        return false;
    tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(p->type_oid));
    if (!HeapTupleIsValid(tup))
        return false;
    elem = ((Form_pg_type)GETSTRUCT(tup))->typelem;
    is_array = ((Form_pg_type)GETSTRUCT(tup))->typreceive == F_ARRAY_RECV && OidIsValid(elem);
    ReleaseSysCache(tup);
    if (!is_array || !catalog_free(elem))
        return false;
    initStringInfo(&buf);
    appendBinaryStringInfo(&buf, p->value, (int)p->value_len);
    d = OidReceiveFunctionCall(F_ARRAY_RECV, &buf, elem, -1);
    if (buf.cursor != buf.len)
        return false;
    appendStringInfoString(out, OidOutputFunctionCall(F_ARRAY_OUT, d));
    return true;
}

void atx_append_param_value(StringInfo out, const AtxParamC* p)
{
    if (p->is_null) {
        appendStringInfoString(out, "NULL");
        return;
    }
    if (!p->binary) {
        appendStringInfoString(out, p->value);
        return;
    }
    // Only the types listed above are converted (and, where there is a transaction to look up
    // the element type, arrays of them): their functions accept what their send functions wrote.
    // Anything else is shown as the bytes it is, so that no other receive function (some always
    // fail, e.g. pg_node_tree's; a user type's may do anything) ever runs here: a dead letter and
    // the text stream must never fail for a value.
    if (append_catalog_free(out, p))
        return;
    if (IsTransactionState() && append_array_of_catalog_free(out, p))
        return;
    atx_append_hex(out, p->value, p->value_len);
}
