// See parked.h. Plain C style (see pg_guard.h).
#include "parked.h"

#include "applied_log.h"
#include "apply_common.h"
#include "message_load.h"
#include "pg_guard.h"
#include "spi_util.h"

extern "C" {
#include "access/genam.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
}

#define MAX_PARK 10000

// The partial index of parked records (lsn WHERE payload IS NOT NULL) and its table; never
// through the planner, which would prepare a plan once per backend for whatever the table held.
static void parked_index(Oid* relid, Oid* indexid)
{
    Oid nsp = get_namespace_oid("atx", false);
    *relid = get_relname_relid("applied", nsp);
    *indexid = get_relname_relid("applied_parked", nsp);
    if (!OidIsValid(*relid) || !OidIsValid(*indexid))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("atx.applied or its index applied_parked is missing"),
                        errhint("Reinstall the extension: ALTER EXTENSION pg_atx UPDATE, or DROP and CREATE it.")));
}

bool atx_parked_any(void)
{
    Oid relid, indexid;
    Relation rel;
    SysScanDesc scan;
    bool any;

    parked_index(&relid, &indexid);
    rel = table_open(relid, AccessShareLock);
    scan = systable_beginscan(rel, indexid, true, atx_read_snapshot(), 0, NULL);
    any = systable_getnext(scan) != NULL;
    systable_endscan(scan);
    table_close(rel, AccessShareLock);
    return any;
}

bool atx_parked_payload(XLogRecPtr lsn, char** payload, size_t* len)
{
    Oid relid, indexid;
    Relation rel;
    SysScanDesc scan;
    ScanKeyData key;
    HeapTuple tuple;
    AttrNumber payload_att, lsn_att;
    bool found = false;

    parked_index(&relid, &indexid);
    payload_att = get_attnum(relid, "payload");
    lsn_att = get_attnum(relid, "lsn");
    if (payload_att == InvalidAttrNumber || lsn_att == InvalidAttrNumber)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN), errmsg("atx.applied lacks its payload or lsn column")));
    rel = table_open(relid, AccessShareLock);
    // systable_beginscan takes the table's attribute number and maps it to the index's.
    ScanKeyInit(&key, lsn_att, BTEqualStrategyNumber, F_PG_LSN_EQ, LSNGetDatum(lsn));
    scan = systable_beginscan(rel, indexid, true, atx_read_snapshot(), 1, &key);
    if ((tuple = systable_getnext(scan)) != NULL) {
        bool isnull;
        Datum d = heap_getattr(tuple, payload_att, RelationGetDescr(rel), &isnull);
        if (!isnull) {
            bytea* b = DatumGetByteaPP(d);  // detoasted: a copy that outlives the scan
            *len = VARSIZE_ANY_EXHDR(b);
            *payload = (char*)palloc(*len + 1);
            memcpy(*payload, VARDATA_ANY(b), *len);
            found = true;
        }
    }
    systable_endscan(scan);
    table_close(rel, AccessShareLock);
    return found;
}

bool atx_parked_at(XLogRecPtr lsn)
{
    char* payload;
    size_t len;
    return atx_parked_payload(lsn, &payload, &len);
}

// atx.park(lsns pg_lsn[]) RETURNS SETOF (lsn, status): for each message, read from the WAL like
// any apply, its record with its payload: 'parked', also when its copy is there already (parked
// before: the record is left as it is); 'handled' when a record of it without a copy exists (it
// was handled; 'exists' when this copy may still run, see conflict_status()); 'rejected' when
// no pg_atx message starts there (nothing written; the applier's apply will say the same). Messages that do not authenticate are parked by position like any
// other: their run dead-letters them. A copy parked before is 'parked', not 'handled': an applier
// that lost the answer of its first call (its batch was given back while the call ran) asks
// again, and a message whose run waits for a background worker never runs to say it is handled,
// so the slot waited behind its copy until it did (fuzz seed 2614, round 24).
//
// A message below the horizon is 'handled' and gets no record: it was handled and confirmed, and
// its record may be pruned, so the slot sends it again only after a crash took the slot's
// confirmed position back (saved to disk at checkpoints only). Parked then, it would run a second
// time from the copy, since a parked record overrides the horizon (apply_batch). The horizon row
// is read FOR SHARE: a prune that moves it past a message and deletes its record waits for this
// transaction, or has committed and is seen.
// A record of its id is there and was not taken over: 'handled' when no run of this copy can do
// anything but find it (the applier counts it handled for the slot, as a parked one: a copy
// written again behind a stalled lane, a nested emit of a parent that ran twice, held the slot
// for as long as the lane stalled; fuzz seed 2614, run ten, round 27). 'exists' when this copy
// may still run: a cancelled record that a waited copy takes over (apply_batch.cc), or a copy
// that does not authenticate, whose id says nothing (its run dead-letters it).
static const char* conflict_status(const AtxLoaded* l)
{
    char *found, *stored;
    XLogRecPtr found_lsn;

    if (!l->authenticated)
        return "exists";
    atx_applied_lookup(l->id, &found, &stored, &found_lsn);
    return found != NULL && strcmp(found, "cancelled") == 0 ? "exists" : "handled";
}

static Datum park_body(FunctionCallInfo fcinfo)
{
    static SPIPlanPtr plan = NULL;
    static SPIPlanPtr horizon_plan = NULL;
    XLogRecPtr horizon = InvalidXLogRecPtr;
    ReturnSetInfo* rsinfo = (ReturnSetInfo*)fcinfo->resultinfo;
    Oid types[4] = {UUIDOID, PG_LSNOID, UUIDOID, BYTEAOID};
    Datum* d;
    bool* nulls;
    int n;

    InitMaterializedSRF(fcinfo, 0);
    AtxApplyFrame f = atx_apply_enter();
    deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), PG_LSNOID, sizeof(XLogRecPtr), true, TYPALIGN_DOUBLE, &d, &nulls, &n);
    if (n > MAX_PARK)
        ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED), errmsg("at most %d messages per call", MAX_PARK)));
    // ON CONFLICT waits for a transaction that is recording the same message (its apply): once
    // that commits, the message is handled and not parked. A message that runs may be parked:
    // an atomic one has no record until its apply commits, which takes this record over
    // (atx_applied_record); a non-atomic one is recorded 'started' (ext/nonatomic.cc) and gets
    // the copy here, so that after a crash the applier loads it and dead-letters it in doubt.
    atx_keep_plan(&horizon_plan, "SELECT lsn FROM atx.apply_horizon FOR SHARE", 0, NULL);
    if (SPI_execute_plan(horizon_plan, NULL, NULL, false, 1) != SPI_OK_SELECT)
        elog(ERROR, "could not read atx.apply_horizon");
    if (SPI_processed == 1) {
        bool isnull;
        Datum h = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
        if (!isnull)
            horizon = DatumGetLSN(h);
    }
    atx_keep_plan(&plan,
                  "INSERT INTO atx.applied (message_id, lsn, status, parent_id, payload) "
                  "VALUES ($1, $2, 'parked', $3, $4) ON CONFLICT (message_id) DO UPDATE SET payload = excluded.payload "
                  "WHERE atx.applied.status OPERATOR(pg_catalog.=) 'started' AND atx.applied.payload IS NULL "
                  "AND atx.applied.lsn OPERATOR(pg_catalog.=) excluded.lsn",
                  4, types);
    for (int i = 0; i < n; i++) {
        AtxLoaded l;
        Datum v[4], out[2];
        char vnulls[4] = {' ', ' ', ' ', ' '};
        bool onulls[2] = {false, false};
        const char* status;
        bytea* p;

        if (nulls[i])
            continue;
        atx_load_message(DatumGetLSN(d[i]), &l);
        if (l.state != ATX_LOAD_REJECTED && !l.parked && horizon != InvalidXLogRecPtr && l.lsn < horizon) {
            status = "handled";  // handled and confirmed before (see above)
        } else if (l.state == ATX_LOAD_REJECTED) {
            status = "rejected";
        } else if (l.parked) {
            status = "parked";  // parked before: its copy is there, durable
        } else {
            const AtxRecord rec = atx_record(l.id, l.lsn, l.authenticated ? &l.m : NULL, "parked", NULL);
            p = (bytea*)palloc(VARHDRSZ + l.len);
            SET_VARSIZE(p, VARHDRSZ + l.len);
            memcpy(VARDATA(p), l.payload, l.len);
            v[0] = atx_uuid_datum(rec.id);
            v[1] = LSNGetDatum(rec.lsn);
            if (rec.has_parent)
                v[2] = atx_uuid_datum(rec.parent);
            else
                vnulls[2] = 'n';
            v[3] = PointerGetDatum(p);
            if (SPI_execute_plan(plan, v, vnulls, false, 0) != SPI_OK_INSERT)
                elog(ERROR, "could not park a message in atx.applied");
            status = SPI_processed == 1 ? "parked" : conflict_status(&l);
        }
        out[0] = d[i];
        out[1] = CStringGetTextDatum(status);
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, onulls);
    }
    atx_apply_leave(&f);
    return (Datum)0;
}

ATX_ENTRY(atx_park, park_body)
