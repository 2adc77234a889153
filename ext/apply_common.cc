// See apply_common.h. Plain C style (see pg_guard.h).
#include "apply_common.h"

#include "pg_guard.h"

void atx_check_applier(void)
{
    Oid caller = GetOuterUserId();  // the functions are SECURITY DEFINER
    Oid applier;

    if (superuser_arg(caller))
        return;
    applier = get_role_oid(ATX_APPLIER_ROLE, true);
    if (OidIsValid(applier) && has_privs_of_role(caller, applier))
        return;
    ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("permission denied to apply pg_atx messages"),
                    errhint("Only superusers and members of role \"%s\" may apply messages.", ATX_APPLIER_ROLE)));
}

AtxApplyFrame atx_apply_enter(void)
{
    AtxApplyFrame f;
    atx_check_applier();
    f.caller = CurrentMemoryContext;
    f.nest = NewGUCNestLevel();
    (void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
                            false);
    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");
    return f;
}

void atx_apply_leave(const AtxApplyFrame* f)
{
    if (SPI_finish() != SPI_OK_FINISH)
        elog(ERROR, "SPI_finish failed");
    AtEOXact_GUC(true, f->nest);
}

Datum atx_result_row(const AtxApplyFrame* f, TupleDesc tupdesc, Datum* v, bool* nulls)
{
    MemoryContext old = MemoryContextSwitchTo(f->caller);
    Datum d = HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), v, nulls));
    MemoryContextSwitchTo(old);
    return d;
}
