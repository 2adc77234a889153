// See applied_log.h. Every statement is prepared once per backend (SPI_keepplan) and
// schema-qualified, operators included. Plain C style (see pg_guard.h).
#include "applied_log.h"

#include "message_json.h"
#include "spi_util.h"

extern "C" {
#include "access/genam.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
}

#define MAX_ERROR_TEXT 8000
#define MAX_DETAIL_TEXT 2000

// s made valid in the database encoding: a byte that starts no valid character becomes '?'.
// (Error texts may quote bytes of a payload that did not authenticate.)
static const char* valid_text(const char* s, int len)
{
    int enc = GetDatabaseEncoding();
    StringInfoData out;
    if (pg_verifymbstr(s, len, true))
        return s;
    initStringInfo(&out);
    for (int i = 0; i < len;) {
        int l = pg_encoding_verifymbchar(enc, s + i, len - i);
        if (l <= 0) {
            appendStringInfoChar(&out, '?');
            i++;
        } else {
            appendBinaryStringInfo(&out, s + i, l);
            i += l;
        }
    }
    return out.data;
}

const char* atx_bounded_text(const char* s, int max)
{
    int len;
    if (s == NULL)
        return NULL;
    s = valid_text(s, (int)strlen(s));
    len = (int)strlen(s);
    if (len <= max)
        return s;
    return psprintf("%s... (%d bytes cut)", pnstrdup(s, pg_mbcliplen(s, len, max)), len - max);
}

Snapshot atx_read_snapshot(void) { return ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot(); }

// The one row of atx.apply_horizon, read without the executor: once per batch, and through SPI
// it was 2.4% of the apply backend's time at one message per batch.
XLogRecPtr atx_applied_horizon(void)
{
    Oid relid = get_relname_relid("apply_horizon", get_namespace_oid("atx", false));
    AttrNumber lsn_att;
    Relation rel;
    SysScanDesc scan;
    HeapTuple tuple;
    XLogRecPtr horizon = InvalidXLogRecPtr;

    lsn_att = OidIsValid(relid) ? get_attnum(relid, "lsn") : InvalidAttrNumber;
    if (lsn_att == InvalidAttrNumber)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("atx.apply_horizon or its lsn column is missing"),
                        errhint("Reinstall the extension: ALTER EXTENSION pg_atx UPDATE, or DROP and CREATE it.")));
    rel = table_open(relid, AccessShareLock);
    scan = systable_beginscan(rel, InvalidOid, false, atx_read_snapshot(), 0, NULL);
    if ((tuple = systable_getnext(scan)) != NULL) {
        bool isnull;
        Datum d = heap_getattr(tuple, lsn_att, RelationGetDescr(rel), &isnull);
        if (!isnull)
            horizon = DatumGetLSN(d);
    }
    systable_endscan(scan);
    table_close(rel, AccessShareLock);
    return horizon;
}

// By the primary key, one index probe, never through the planner: a plan prepared while
// atx.applied was empty or small is a sequential scan, and an apply session keeps its plans, so
// each batch then compared every id with every record (a drain of 60,000 messages spent 78% of
// its apply backend in uuid_eq). Read with the snapshot an SPI read-only query would use.
void atx_applied_lookup(const uint8 id[16], char** status, char** outcome, XLogRecPtr* lsn)
{
    Oid nsp, relid, indexid;
    Relation rel;
    AttrNumber status_att, outcome_att, lsn_att;
    TupleDesc desc;
    Snapshot snapshot;
    ScanKeyData key;
    SysScanDesc scan;
    HeapTuple tuple;
    pg_uuid_t* uuid = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));

    *status = NULL;
    *outcome = NULL;
    if (lsn)
        *lsn = InvalidXLogRecPtr;
    nsp = get_namespace_oid("atx", false);
    relid = get_relname_relid("applied", nsp);
    indexid = get_relname_relid("applied_pkey", nsp);
    if (!OidIsValid(relid) || !OidIsValid(indexid))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("atx.applied or its primary key is missing"),
                        errhint("Reinstall the extension: ALTER EXTENSION pg_atx UPDATE, or DROP and CREATE it.")));
    status_att = get_attnum(relid, "status");
    outcome_att = get_attnum(relid, "outcome");
    lsn_att = get_attnum(relid, "lsn");
    if (status_att == InvalidAttrNumber || outcome_att == InvalidAttrNumber || lsn_att == InvalidAttrNumber)
        ereport(ERROR,
                (errcode(ERRCODE_UNDEFINED_COLUMN), errmsg("atx.applied lacks its status, outcome or lsn column")));
    snapshot = atx_read_snapshot();

    rel = table_open(relid, AccessShareLock);
    desc = RelationGetDescr(rel);
    memcpy(uuid->data, id, UUID_LEN);
    ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(uuid));
    scan = systable_beginscan(rel, indexid, true, snapshot, 1, &key);
    if ((tuple = systable_getnext(scan)) != NULL) {
        bool isnull;
        Datum d = heap_getattr(tuple, status_att, desc, &isnull);
        if (!isnull)
            *status = TextDatumGetCString(d);
        d = heap_getattr(tuple, outcome_att, desc, &isnull);
        if (!isnull)
            *outcome = DatumGetCString(DirectFunctionCall1(jsonb_out, d));
        d = heap_getattr(tuple, lsn_att, desc, &isnull);
        if (!isnull && lsn)
            *lsn = DatumGetLSN(d);
    }
    systable_endscan(scan);
    table_close(rel, AccessShareLock);
}

// The five columns of n records as arrays: $1 ids, $2 lsns, $3 statuses, $4 outcomes, $5 parents.
static void record_arrays(int n, const AtxRecord* recs, Datum* values)
{
    Datum* id = (Datum*)palloc(sizeof(Datum) * n);
    Datum* l = (Datum*)palloc(sizeof(Datum) * n);
    Datum* st = (Datum*)palloc(sizeof(Datum) * n);
    Datum* oc = (Datum*)palloc(sizeof(Datum) * n);
    bool* ocnull = (bool*)palloc(sizeof(bool) * n);
    Datum* par = (Datum*)palloc(sizeof(Datum) * n);
    bool* parnull = (bool*)palloc(sizeof(bool) * n);
    int dims[1] = {n};
    int lbs[1] = {1};

    for (int i = 0; i < n; i++) {
        id[i] = atx_uuid_datum(recs[i].id);
        l[i] = LSNGetDatum(recs[i].lsn);
        st[i] = CStringGetTextDatum(recs[i].status);
        ocnull[i] = recs[i].outcome == NULL;
        oc[i] = ocnull[i] ? (Datum)0 : CStringGetTextDatum(recs[i].outcome);
        parnull[i] = !recs[i].has_parent;
        par[i] = parnull[i] ? (Datum)0 : atx_uuid_datum(recs[i].parent);
    }
    values[0] = PointerGetDatum(construct_array(id, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
    values[1] = PointerGetDatum(construct_array(l, n, PG_LSNOID, sizeof(XLogRecPtr), true, TYPALIGN_DOUBLE));
    values[2] = PointerGetDatum(construct_array(st, n, TEXTOID, -1, false, TYPALIGN_INT));
    values[3] = PointerGetDatum(construct_md_array(oc, ocnull, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
    values[4] =
        PointerGetDatum(construct_md_array(par, parnull, 1, dims, lbs, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
}

static Oid record_types[5] = {UUIDARRAYOID, PG_LSNARRAYOID, TEXTARRAYOID, TEXTARRAYOID, UUIDARRAYOID};
static Oid record_types1[5] = {UUIDOID, PG_LSNOID, TEXTOID, TEXTOID, UUIDOID};

// The one record as scalars, in record_arrays' order.
static void record_scalars(const AtxRecord* r, Datum* values, char* nulls)
{
    values[0] = atx_uuid_datum(r->id);
    values[1] = LSNGetDatum(r->lsn);
    values[2] = CStringGetTextDatum(r->status);
    values[3] = r->outcome ? CStringGetTextDatum(r->outcome) : (Datum)0;
    values[4] = r->has_parent ? atx_uuid_datum(r->parent) : (Datum)0;
    memset(nulls, ' ', 5);
    nulls[3] = r->outcome ? ' ' : 'n';
    nulls[4] = r->has_parent ? ' ' : 'n';
}

// The rows u(i, l, s, o, p) that sql's %s stands for: five unnest() arrays, or for one record
// (a batch of one message, every atx_exec at low load, and each operator call) a VALUES row, so
// that no function scan is planned and no array built.
#define ATX_RECORD_ARRAYS                                                                                     \
    "ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), " \
    "pg_catalog.unnest($5)) AS u(i, l, s, o, p)"
#define ATX_RECORD_ONE "(VALUES ($1, $2, $3, $4, $5)) AS u(i, l, s, o, p)"

AtxRecord atx_record(const uint8 id[16], XLogRecPtr lsn, const AtxMessageC* m, const char* status, const char* outcome)
{
    AtxRecord r;
    memset(&r, 0, sizeof r);
    memcpy(r.id, id, 16);
    r.lsn = lsn;
    r.status = status;
    r.outcome = outcome;
    r.has_parent = m != NULL && m->depth > 0;
    if (r.has_parent)
        memcpy(r.parent, m->lane, 16);
    return r;
}

// Runs the records statement sql over n records (plans[0] keeps its one-record form, plans[1]
// its arrays form); returns the rows it touched.
static uint64 write_records(SPIPlanPtr plans[2], const char* sql, int want, int n, const AtxRecord* recs)
{
    Datum values[5];
    char nulls[5];
    SPIPlanPtr* plan = &plans[n == 1 ? 0 : 1];
    if (*plan == NULL)
        atx_keep_plan(plan, psprintf(sql, n == 1 ? ATX_RECORD_ONE : ATX_RECORD_ARRAYS), 5,
                      n == 1 ? record_types1 : record_types);
    if (n == 1)
        record_scalars(recs, values, nulls);
    else
        record_arrays(n, recs, values);
    if (SPI_execute_plan(*plan, values, n == 1 ? nulls : NULL, false, 0) != want)
        elog(ERROR, "could not record handled messages in atx.applied");
    return SPI_processed;
}

// Fewer rows touched than records written: another session handled one of them meanwhile.
static void require_all(uint64 touched, int n, const char* what)
{
    if (touched != (uint64)n)
        ereport(ERROR, (errcode(ERRCODE_T_R_SERIALIZATION_FAILURE), errmsg("%s", what),
                        errdetail("This batch is rolled back so that the message never runs twice.")));
}

#define ATX_RECORD_INSERT                                                                                           \
    "INSERT INTO atx.applied (message_id, lsn, status, outcome, parent_id) SELECT i, l, s, o::pg_catalog.jsonb, p " \
    "FROM %s "

// A message may have been parked while it ran (its record written by atx.park after this
// transaction looked it up): that record is taken over. Any other record means another session
// handled it meanwhile: the batch rolls back, so that the message never runs twice.
void atx_applied_record(int n, const AtxRecord* recs)
{
    static SPIPlanPtr plans[2] = {NULL, NULL};
    if (n > 0)
        require_all(
            write_records(plans,
                          ATX_RECORD_INSERT
                          "ON CONFLICT (message_id) DO UPDATE SET lsn = excluded.lsn, status = excluded.status, "
                          "outcome = excluded.outcome, handled_at = pg_catalog.now(), payload = NULL "
                          "WHERE atx.applied.status OPERATOR(pg_catalog.=) 'parked'",
                          SPI_OK_INSERT, n, recs),
            n, "a pg_atx message was recorded by another session meanwhile");
}

void atx_applied_update(int n, const AtxRecord* recs)
{
    static SPIPlanPtr plans[2] = {NULL, NULL};
    if (n > 0)
        (void)write_records(plans,
                            ATX_RECORD_INSERT
                            "ON CONFLICT (message_id) DO UPDATE SET lsn = excluded.lsn, status = excluded.status, "
                            "outcome = excluded.outcome, handled_at = excluded.handled_at, payload = NULL",
                            SPI_OK_INSERT, n, recs);
}

void atx_applied_reclaim(int n, const AtxRecord* recs)
{
    static SPIPlanPtr plans[2] = {NULL, NULL};
    if (n == 0)
        return;
    // Under READ COMMITTED an UPDATE that waited for another transaction re-checks its WHERE on
    // the row that transaction left: a record another session took over is no longer
    // 'cancelled' or 'parked', and is not counted.
    require_all(write_records(plans,
                              "UPDATE atx.applied a SET lsn = u.l, status = u.s, outcome = u.o::pg_catalog.jsonb, "
                              "handled_at = pg_catalog.now(), payload = NULL FROM %s "
                              "WHERE a.message_id OPERATOR(pg_catalog.=) u.i "
                              "AND a.status OPERATOR(pg_catalog.=) ANY ('{cancelled,parked}'::pg_catalog.text[])",
                              SPI_OK_UPDATE, n, recs),
                n, "a cancelled or parked pg_atx message was run by another session meanwhile");
}

bool atx_applied_at_lsn(XLogRecPtr lsn)
{
    static SPIPlanPtr plan = NULL;
    Oid types[1] = {PG_LSNOID};
    Datum v[1];

    atx_keep_plan(&plan, "SELECT 1 FROM atx.applied WHERE lsn OPERATOR(pg_catalog.=) $1 AND payload IS NULL LIMIT 1", 1,
                  types);
    v[0] = LSNGetDatum(lsn);
    if (SPI_execute_plan(plan, v, NULL, true, 1) != SPI_OK_SELECT)
        elog(ERROR, "could not read atx.applied");
    return SPI_processed > 0;
}

void atx_dead_letter_forget(const uint8 id[16])
{
    static SPIPlanPtr plan = NULL;
    Oid types[1] = {UUIDOID};
    Datum v[1];

    atx_keep_plan(&plan, "DELETE FROM atx.dead_letter WHERE message_id OPERATOR(pg_catalog.=) $1", 1, types);
    v[0] = atx_uuid_datum(id);
    if (SPI_execute_plan(plan, v, NULL, false, 0) != SPI_OK_DELETE)
        elog(ERROR, "could not delete a dead letter");
}

void atx_dead_letter_write(const AtxMessageC* m, XLogRecPtr lsn, const char* payload, size_t len, int sqlerrcode,
                           const char* error, const char* detail, const char* hint, int attempts,
                           TimestampTz first_failed)
{
    static SPIPlanPtr plan = NULL;
    Oid types[17] = {UUIDOID, PG_LSNOID, NAMEOID, OIDOID,  NAMEOID, XID8OID, TIMESTAMPTZOID, TEXTOID,       JSONBOID,
                     TEXTOID, BYTEAOID,  TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID,        TIMESTAMPTZOID};
    Datum v[17];
    char nulls[17];
    bytea* p = (bytea*)palloc(VARHDRSZ + len);
    const char* session_user = m->session_role_name && m->session_role_name[0] ? m->session_role_name : NULL;

    atx_keep_plan(&plan,
                  "WITH d AS (INSERT INTO atx.dead_letter (message_id, source_lsn, caller_role, caller_role_oid, "
                  "caller_session_user, caller_xid, emitted_at, statement, params, idempotency_key, payload, sqlstate, "
                  "error, detail, hint, attempts, first_failed_at) "
                  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) "
                  "ON CONFLICT (message_id) DO NOTHING RETURNING message_id) "
                  "SELECT pg_catalog.pg_notify('atx_dead_letter', '') FROM d",
                  17, types);
    memset(nulls, ' ', sizeof nulls);
    SET_VARSIZE(p, VARHDRSZ + len);
    memcpy(VARDATA(p), payload, len);
    v[0] = atx_uuid_datum(m->id);
    v[1] = LSNGetDatum(lsn);
    v[2] = DirectFunctionCall1(namein, CStringGetDatum(m->role_name));
    v[3] = ObjectIdGetDatum(m->role_oid);
    if (session_user)
        v[4] = DirectFunctionCall1(namein, CStringGetDatum(session_user));
    else
        nulls[4] = 'n';
    v[5] = Int64GetDatum((int64)m->caller_xid);
    if (m->caller_xid == 0)
        nulls[5] = 'n';
    v[6] = TimestampTzGetDatum(m->emit_time);
    v[7] = CStringGetTextDatum(m->statement);
    v[8] = DirectFunctionCall1(jsonb_in, CStringGetDatum(atx_params_json(m)));
    if (m->key)
        v[9] = CStringGetTextDatum(m->key);
    else
        nulls[9] = 'n';
    v[10] = PointerGetDatum(p);
    v[11] = CStringGetTextDatum(unpack_sql_state(sqlerrcode));
    v[12] = CStringGetTextDatum(atx_bounded_text(error ? error : "(no error text)", MAX_ERROR_TEXT));
    if (detail)
        v[13] = CStringGetTextDatum(atx_bounded_text(detail, MAX_DETAIL_TEXT));
    else
        nulls[13] = 'n';
    if (hint)
        v[14] = CStringGetTextDatum(atx_bounded_text(hint, MAX_DETAIL_TEXT));
    else
        nulls[14] = 'n';
    v[15] = Int32GetDatum(attempts);
    v[16] = TimestampTzGetDatum(first_failed);
    if (SPI_execute_plan(plan, v, nulls, false, 0) < 0)
        elog(ERROR, "could not write the dead letter");
}
