#include "spi_util.h"

#include "pg_headers.h"

SPIPlanPtr atx_keep_plan(SPIPlanPtr* slot, const char* sql, int nargs, Oid* types)
{
    if (*slot == NULL) {
        // Generic from the start: these statements do not depend on their values, and a plan
        // cache that builds custom plans for the first executions and then weighs them (as for
        // the record insert over unnest() arrays, planned afresh each time) costs more than
        // the statement.
        SPIPlanPtr p = SPI_prepare_cursor(sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);
        if (p == NULL || SPI_keepplan(p) != 0)
            elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
        *slot = p;
    }
    return *slot;
}

Datum atx_uuid_datum(const uint8 id[16])
{
    pg_uuid_t* u = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));
    memcpy(u->data, id, UUID_LEN);
    return UUIDPGetDatum(u);
}
