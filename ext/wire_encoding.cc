// See wire_encoding.h. Plain C style (see pg_guard.h): PG_TRY.
#include "wire_encoding.h"

#include "mb/pg_wchar.h"

int atx_wire_encoding_begin(void)
{
    const int client = pg_get_client_encoding();
    const int db = GetDatabaseEncoding();
    if (client == db)
        return -1;
    // Same encoding on both sides: SetClientEncoding needs no conversion function and cannot fail.
    if (SetClientEncoding(db) < 0)
        elog(ERROR, "could not switch client encoding to the database's (%s)", GetDatabaseEncodingName());
    return client;
}

void atx_wire_encoding_end(int saved)
{
    // The session's own conversion was prepared when it set client_encoding, so switching back
    // finds it again.
    if (saved >= 0 && SetClientEncoding(saved) < 0)
        elog(FATAL, "could not restore client encoding %s", pg_encoding_to_char(saved));
}

bytea* atx_send_in_database_encoding(Oid typsend, Datum value)
{
    bytea* volatile b = NULL;
    const int saved = atx_wire_encoding_begin();
    if (saved < 0)
        return OidSendFunctionCall(typsend, value);
    PG_TRY();
    {
        b = OidSendFunctionCall(typsend, value);
    }
    PG_FINALLY();
    {
        atx_wire_encoding_end(saved);
    }
    PG_END_TRY();
    return b;
}

Datum atx_receive_in_database_encoding(Oid typreceive, StringInfo buf, Oid ioparam, int32 typmod)
{
    volatile Datum d = (Datum)0;
    const int saved = atx_wire_encoding_begin();
    if (saved < 0)
        return OidReceiveFunctionCall(typreceive, buf, ioparam, typmod);
    PG_TRY();
    {
        d = OidReceiveFunctionCall(typreceive, buf, ioparam, typmod);
    }
    PG_FINALLY();
    {
        atx_wire_encoding_end(saved);
    }
    PG_END_TRY();
    return d;
}
