// Entry points of pg_atx 0.1 that 0.2 removed. Their symbols stay so that the 0.1 script (the
// first step of every installation and of the upgrade path) can still create its functions;
// ALTER EXTENSION pg_atx UPDATE drops them. Called anyway, they say what to do.
#include "atx_ext.h"
#include "pg_guard.h"

static Datum removed_body(FunctionCallInfo fcinfo)
{
    ereport(ERROR,
            (errcode(ERRCODE_FEATURE_NOT_SUPPORTED), errmsg("this pg_atx 0.1 function was removed in pg_atx 0.2"),
             errhint("Run ALTER EXTENSION pg_atx UPDATE, and use atx-applier 0.2.")));
    PG_RETURN_NULL();
}

ATX_ENTRY(atx_apply_message, removed_body)
ATX_ENTRY(atx_apply, removed_body)
ATX_ENTRY(atx_exec_dead_lettered, removed_body)
