// The apply side's bookkeeping entry points: atx.prune (the horizon follows the slot),
// atx.unapplied (the failover check) and atx.wake (outcomes whose commits became durable).
// See docs/design.md. SECURITY DEFINER with SET search_path, callable by superusers and members
// of atx_applier only. Plain C style (see pg_guard.h).
#include "applied_log.h"
#include "apply_common.h"
#include "apply_outcome.h"
#include "pg_guard.h"
#include "slot_check.h"
#include "spi_util.h"

extern "C" {
#include "utils/pg_lsn.h"
}

// atx.wake(ids uuid[]) RETURNS int: publish the stored outcomes of these messages to their
// waiters (the applier saw their commits reach the standbys it waits for).
static Datum wake_body(FunctionCallInfo fcinfo)
{
    ArrayType* arr = PG_GETARG_ARRAYTYPE_P(0);
    Datum* d;
    bool* nulls;
    int n, woken = 0;

    AtxApplyFrame f = atx_apply_enter();
    deconstruct_array(arr, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR, &d, &nulls, &n);
    for (int i = 0; i < n; i++) {
        char *found, *stored;
        const uint8* id;
        if (nulls[i])
            continue;
        id = DatumGetUUIDP(d[i])->data;
        atx_applied_lookup(id, &found, &stored, NULL);
        if (found && stored != NULL) {
            atx_publish_stored(id, stored);
            woken++;
        }
    }
    atx_apply_leave(&f);
    PG_RETURN_INT32(woken);
}

// atx.prune() RETURNS pg_lsn: everything below the slot's confirmed position was handled (the
// applier confirms nothing else), so the records of those messages can go, and a message below
// the horizon is refused as handled before. Kept: the records of nested emits whose parent is
// dead-lettered (an operator's retry of the parent writes them again under the same ids, at new
// positions above the horizon, where only their records say they were applied), and those of
// parked messages, which are not handled yet (parked.h). A retried parent's record stands at the
// WAL position after its retry (atx.retry_dead_letter): its nested emits' records stay while it
// is not below the horizon, i.e. until the applier handled the copies the retry wrote.
static Datum prune_body(FunctionCallInfo fcinfo)
{
    static SPIPlanPtr plan = NULL;
    Oid types[1] = {PG_LSNOID};
    Datum v[1];
    XLogRecPtr confirmed;
    AtxApplyFrame f = atx_apply_enter();

    if (!atx_slot_confirmed_flush(MyDatabaseId, &confirmed) || confirmed == InvalidXLogRecPtr) {
        atx_apply_leave(&f);
        PG_RETURN_NULL();
    }
    atx_keep_plan(
        &plan,
        "WITH h AS (UPDATE atx.apply_horizon SET lsn = $1, updated_at = pg_catalog.now() "
        "          WHERE lsn OPERATOR(pg_catalog.<) $1 RETURNING lsn) "
        "DELETE FROM atx.applied a WHERE a.lsn OPERATOR(pg_catalog.<) (SELECT lsn FROM h) "
        "  AND a.payload IS NULL "
        "  AND (a.parent_id IS NULL OR (NOT EXISTS (SELECT 1 FROM atx.dead_letter d "
        "        WHERE d.message_id OPERATOR(pg_catalog.=) a.parent_id) "
        "    AND NOT EXISTS (SELECT 1 FROM atx.applied p WHERE p.message_id OPERATOR(pg_catalog.=) a.parent_id "
        "        AND p.lsn OPERATOR(pg_catalog.>=) (SELECT lsn FROM h))))",
        1, types);
    v[0] = LSNGetDatum(confirmed);
    if (SPI_execute_plan(plan, v, NULL, false, 0) < 0)
        elog(ERROR, "could not prune atx.applied");
    atx_apply_leave(&f);
    PG_RETURN_LSN(confirmed);
}

// atx.unapplied(lsns pg_lsn[]) RETURNS SETOF pg_lsn: which of these handled positions this server
// has no record of (the failover check). A set difference over the records in the array's range,
// whatever the plan: as NOT EXISTS, a generic plan (the array's size unknown) probed atx.applied's
// BRIN index once per position, and 200,000 positions (an applier restarted right after a drain)
// kept the check, and every delivery behind it, busy for minutes.
static Datum unapplied_body(FunctionCallInfo fcinfo)
{
    static SPIPlanPtr plan = NULL;
    Oid types[1] = {PG_LSNARRAYOID};
    Datum v[1];
    ReturnSetInfo* rsinfo = (ReturnSetInfo*)fcinfo->resultinfo;

    InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
    AtxApplyFrame f = atx_apply_enter();
    atx_keep_plan(&plan,
                  "WITH l AS MATERIALIZED (SELECT l FROM pg_catalog.unnest($1) l WHERE l OPERATOR(pg_catalog.>=) "
                  "  COALESCE((SELECT lsn FROM atx.apply_horizon), '0/0'::pg_catalog.pg_lsn)) "
                  "SELECT l FROM l EXCEPT "
                  "SELECT a.lsn FROM atx.applied a "
                  "WHERE a.lsn OPERATOR(pg_catalog.>=) (SELECT pg_catalog.min(l) FROM l) "
                  "  AND a.lsn OPERATOR(pg_catalog.<=) (SELECT pg_catalog.max(l) FROM l)",
                  1, types);
    v[0] = PG_GETARG_DATUM(0);
    if (SPI_execute_plan(plan, v, NULL, true, 0) != SPI_OK_SELECT)
        elog(ERROR, "could not read atx.applied");
    for (uint64 r = 0; r < SPI_processed; r++) {
        bool isnull;
        Datum d = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &d, &isnull);
    }
    atx_apply_leave(&f);
    return (Datum)0;
}

ATX_ENTRY(atx_wake, wake_body)
ATX_ENTRY(atx_prune, prune_body)
ATX_ENTRY(atx_unapplied, unapplied_body)
