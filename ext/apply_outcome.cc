// See apply_outcome.h. Plain C style (see pg_guard.h).
#include "apply_outcome.h"

#include "spi_util.h"

void atx_fill_exec_outcome(AtxExecOutcome* o, const uint8 id[16], const AtxOutcome* r)
{
    memset(o, 0, sizeof *o);
    memcpy(o->id, id, 16);
    o->status = r->status;
    o->sqlerrcode = r->sqlerrcode;
    o->command = r->command;
    o->rows = r->rows;
    o->error = r->error;
    o->detail = r->detail;
    o->hint = r->hint;
    o->result = r->result;
    o->truncated = r->truncated;
}

void atx_publish_stored(const uint8 id[16], const char* outcome)
{
    static SPIPlanPtr plan = NULL;
    Oid types[1] = {JSONBOID};
    Datum v[1];
    char *status, *sqlstate, *error, *detail, *hint;
    int code = 0;

    if (outcome == NULL || !atx_waiter_present(id))
        return;
    atx_keep_plan(&plan,
                  "SELECT $1 OPERATOR(pg_catalog.->>) 'status', $1 OPERATOR(pg_catalog.->>) 'sqlstate', "
                  "$1 OPERATOR(pg_catalog.->>) 'error', $1 OPERATOR(pg_catalog.->>) 'detail', "
                  "$1 OPERATOR(pg_catalog.->>) 'hint'",
                  1, types);
    v[0] = DirectFunctionCall1(jsonb_in, CStringGetDatum(outcome));
    if (SPI_execute_plan(plan, v, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
        return;
    status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
    sqlstate = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
    error = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
    detail = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
    hint = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5);
    if (sqlstate && strlen(sqlstate) == 5)
        code = MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2], sqlstate[3], sqlstate[4]);
    atx_waiter_publish_now(id, status ? status : "failed", code, error, detail, hint, outcome);
}

const char* atx_in_doubt_text(void)
{
    return "a non-atomic message was started before and did not finish (a crash?): it may have committed part of "
           "its work, so it is not run again";
}

const char* atx_in_doubt_hint(void)
{
    return "Check what it did; retry it by hand (atx-applier retry) if it did nothing.";
}
