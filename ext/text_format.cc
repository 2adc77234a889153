// See text_format.h.
#include "text_format.h"

#include "wire_encoding.h"

extern "C" {
#include "mb/pg_wchar.h"
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

// Text-like values are read through pq_getmsgtext, which raises for bytes that are not valid in
// the database's encoding (a message written by 0.2 from a client in another encoding carries
// such bytes): those are checked first, and shown as hex when they would fail.
static bool valid_text(Oid type, const char* data, int len)
{
    switch (type) {
    case TEXTOID:
    case VARCHAROID:
    case BPCHAROID:
    case NAMEOID:
    case JSONOID: return pg_verify_mbstr(GetDatabaseEncoding(), data, len, true);
    case JSONBOID: return len >= 1 && pg_verify_mbstr(GetDatabaseEncoding(), data + 1, len - 1, true);
    default: return true;
    }
}

static uint32 read_u32(const char* p)
{
    const unsigned char* u = (const unsigned char*)p;
    return ((uint32)u[0] << 24) | ((uint32)u[1] << 16) | ((uint32)u[2] << 8) | (uint32)u[3];
}

// Every element of an array in array_send's layout (ndim, flags, element type, ndim x (size,
// lower bound), then each element's length or -1 and its bytes) passes valid_text.
static bool valid_text_elements(Oid elem, const char* data, size_t len)
{
    size_t at = 12, n = 1;
    if (len < 12)
        return false;
    const uint32 ndim = read_u32(data);
    if (ndim > MAXDIM || read_u32(data + 8) != elem || len < 12 + (size_t)ndim * 8)
        return false;
    for (uint32 d = 0; d < ndim; d++, at += 8)
        n *= read_u32(data + at);
    if (ndim == 0)
        n = 0;
    for (size_t i = 0; i < n; i++) {
        if (len - at < 4)
            return false;
        const int32 elen = (int32)read_u32(data + at);
        at += 4;
        if (elen == -1)
            continue;
        if (elen < 0 || (size_t)elen > len - at || !valid_text(elem, data + at, elen))
            return false;
        at += (size_t)elen;
    }
    return true;
}

static bool append_catalog_free(StringInfo out, const AtxParamC* p)
{
    for (size_t i = 0; i < lengthof(catalog_free_types); i++) {
        const CatalogFreeType* t = &catalog_free_types[i];
        StringInfoData buf;
        Datum d;

        if (t->type != p->type_oid)
            continue;
        if (!valid_text(t->type, p->value, (int)p->value_len))
            return false;
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
    if (!is_array || !catalog_free(elem) || !valid_text_elements(elem, p->value, p->value_len))
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
    // Their bytes are in the database's encoding (wire_encoding.h), whatever this session's is.
    volatile bool done = false;
    const int saved = atx_wire_encoding_begin();
    PG_TRY();
    {
        done = append_catalog_free(out, p) || (IsTransactionState() && append_array_of_catalog_free(out, p));
    }
    PG_FINALLY();
    {
        atx_wire_encoding_end(saved);
    }
    PG_END_TRY();
    if (!done)
        atx_append_hex(out, p->value, p->value_len);
}
