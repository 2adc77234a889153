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

XLogRecPtr atx_applied_horizon(void)
{
    static SPIPlanPtr plan = NULL;
    bool isnull;
    Datum d;

    atx_keep_plan(&plan, "SELECT lsn FROM atx.apply_horizon", 0, NULL);
    if (SPI_execute_plan(plan, NULL, NULL, true, 1) != SPI_OK_SELECT || SPI_processed == 0)
        return InvalidXLogRecPtr;
    d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
    return isnull ? InvalidXLogRecPtr : DatumGetLSN(d);
}

static ArrayType* uuid_array(int n, uint8 (*ids)[16])
{
    Datum* d = (Datum*)palloc(sizeof(Datum) * (n ? n : 1));
    for (int i = 0; i < n; i++)
        d[i] = atx_uuid_datum(ids[i]);
    return construct_array(d, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR);
}

// By the primary key, one index probe per id, never through the planner: a plan prepared while
// atx.applied was empty or small is a sequential scan, and an apply session keeps its plans, so
// each batch then compared every id with every record (a drain of 60,000 messages spent 78% of
// its apply backend in uuid_eq). Read with the snapshot an SPI read-only query would use.
void atx_applied_lookup(int n, uint8 (*ids)[16], char** status, char** outcome)
{
    Oid nsp, relid, indexid;
    Relation rel;
    AttrNumber status_att, outcome_att;
    TupleDesc desc;
    Snapshot snapshot;

    for (int i = 0; i < n; i++) {
        status[i] = NULL;
        outcome[i] = NULL;
    }
    if (n == 0)
        return;
    nsp = get_namespace_oid("atx", false);
    relid = get_relname_relid("applied", nsp);
    indexid = get_relname_relid("applied_pkey", nsp);
    if (!OidIsValid(relid) || !OidIsValid(indexid))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("atx.applied or its primary key is missing"),
                        errhint("Reinstall the extension: ALTER EXTENSION pg_atx UPDATE, or DROP and CREATE it.")));
    status_att = get_attnum(relid, "status");
    outcome_att = get_attnum(relid, "outcome");
    if (status_att == InvalidAttrNumber || outcome_att == InvalidAttrNumber)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN), errmsg("atx.applied lacks its status or outcome column")));
    snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();

    rel = table_open(relid, AccessShareLock);
    desc = RelationGetDescr(rel);
    for (int i = 0; i < n; i++) {
        ScanKeyData key;
        SysScanDesc scan;
        HeapTuple tuple;
        pg_uuid_t* id = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));

        memcpy(id->data, ids[i], UUID_LEN);
        ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(id));
        scan = systable_beginscan(rel, indexid, true, snapshot, 1, &key);
        if ((tuple = systable_getnext(scan)) != NULL) {
            bool isnull;
            Datum d = heap_getattr(tuple, status_att, desc, &isnull);
            if (!isnull)
                status[i] = TextDatumGetCString(d);
            d = heap_getattr(tuple, outcome_att, desc, &isnull);
            if (!isnull)
                outcome[i] = DatumGetCString(DirectFunctionCall1(jsonb_out, d));
        }
        systable_endscan(scan);
    }
    table_close(rel, AccessShareLock);
}

static void record(int n, uint8 (*ids)[16], const XLogRecPtr* lsns, const char** statuses, const char** outcomes,
                   bool replace)
{
    static SPIPlanPtr insert_plan = NULL, upsert_plan = NULL;
    Oid types[4] = {UUIDARRAYOID, PG_LSNARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
    Datum values[4];
    Datum* l;
    Datum* st;
    Datum* oc;
    bool* ocnull;
    int dims[1] = {n};
    int lbs[1] = {1};
    SPIPlanPtr plan;

#define ATX_RECORD_INSERT                                                                                      \
    "INSERT INTO atx.applied (message_id, lsn, status, outcome) "                                              \
    "SELECT i, l, s, o::pg_catalog.jsonb FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "       \
    "pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(i, l, s, o) "
    if (n == 0)
        return;
    if (replace) {
        atx_keep_plan(&upsert_plan,
             ATX_RECORD_INSERT "ON CONFLICT (message_id) DO UPDATE SET status = excluded.status, "
                               "outcome = excluded.outcome, handled_at = excluded.handled_at",
             4, types);
        plan = upsert_plan;
    } else {
        atx_keep_plan(&insert_plan, ATX_RECORD_INSERT, 4, types);
        plan = insert_plan;
    }
#undef ATX_RECORD_INSERT
    l = (Datum*)palloc(sizeof(Datum) * n);
    st = (Datum*)palloc(sizeof(Datum) * n);
    oc = (Datum*)palloc(sizeof(Datum) * n);
    ocnull = (bool*)palloc(sizeof(bool) * n);
    for (int i = 0; i < n; i++) {
        l[i] = LSNGetDatum(lsns[i]);
        st[i] = CStringGetTextDatum(statuses[i]);
        ocnull[i] = outcomes[i] == NULL;
        oc[i] = ocnull[i] ? (Datum)0 : CStringGetTextDatum(outcomes[i]);
    }
    values[0] = PointerGetDatum(uuid_array(n, ids));
    values[1] = PointerGetDatum(construct_array(l, n, PG_LSNOID, sizeof(XLogRecPtr), true, TYPALIGN_DOUBLE));
    values[2] = PointerGetDatum(construct_array(st, n, TEXTOID, -1, false, TYPALIGN_INT));
    values[3] = PointerGetDatum(construct_md_array(oc, ocnull, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
    if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "could not record handled messages in atx.applied");
}

bool atx_applied_at_lsn(XLogRecPtr lsn)
{
    static SPIPlanPtr plan = NULL;
    Oid types[1] = {PG_LSNOID};
    Datum v[1];

    atx_keep_plan(&plan, "SELECT 1 FROM atx.applied WHERE lsn OPERATOR(pg_catalog.=) $1 LIMIT 1", 1, types);
    v[0] = LSNGetDatum(lsn);
    if (SPI_execute_plan(plan, v, NULL, true, 1) != SPI_OK_SELECT)
        elog(ERROR, "could not read atx.applied");
    return SPI_processed > 0;
}

void atx_applied_record(int n, uint8 (*ids)[16], const XLogRecPtr* lsns, const char** statuses,
                        const char** outcomes)
{
    record(n, ids, lsns, statuses, outcomes, false);
}

void atx_applied_update(int n, uint8 (*ids)[16], const XLogRecPtr* lsns, const char** statuses,
                        const char** outcomes)
{
    record(n, ids, lsns, statuses, outcomes, true);
}

void atx_dead_letter_write(const AtxMessageC* m, XLogRecPtr lsn, const char* payload, size_t len, int sqlerrcode,
                           const char* error, const char* detail, const char* hint, int attempts,
                           TimestampTz first_failed)
{
    static SPIPlanPtr plan = NULL;
    Oid types[17] = {UUIDOID, PG_LSNOID, NAMEOID,  OIDOID,  NAMEOID, XID8OID, TIMESTAMPTZOID, TEXTOID, JSONBOID,
                     TEXTOID, BYTEAOID,  TEXTOID,  TEXTOID, TEXTOID, TEXTOID, INT4OID,        TIMESTAMPTZOID};
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
         "SELECT pg_catalog.pg_notify('atx_dead_letter', message_id::pg_catalog.text) FROM d",
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
