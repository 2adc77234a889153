// atx._audit_write / atx._audit_resolve: the two writes the audit helpers make
// to an audit table, run with the rights of that table's OWNER.
//
// Why: the audit helpers are SECURITY DEFINER (they read atx.audit_config and
// must write audit rows the caller may not write itself). Writing a table runs
// its triggers, defaults, check constraints and policies as the current user;
// an audit table owned by an ordinary role could otherwise run that role's
// trigger code as the extension owner (a superuser). PostgreSQL runs index
// expressions during VACUUM the same way: as the table owner, inside a
// security-restricted operation, with a safe search_path.
//
// The SQL is fixed here; only the table and the values vary. Both functions
// have EXECUTE revoked from PUBLIC: they are called by atx._audit_insert and
// atx.resolve_outcomes. Plain C style (see pg_guard.h).
#include "atx_ext.h"
#include "pg_guard.h"

// Runs sql (parameters $1..$n) as the owner of relid; returns SPI_processed.
// An error propagates: the enclosing (sub)transaction's abort restores the
// user id and the GUC nest level, as for any SECURITY DEFINER function.
static uint64 exec_as_owner(Oid relid, const char* sql, int nargs, Oid* types, Datum* values, const char* nulls)
{
    HeapTuple tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
    Oid owner;
    Oid save_userid;
    int save_sec_context;
    int nestlevel;
    int rc;
    uint64 n;

    if (!HeapTupleIsValid(tup))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("audit table with OID %u does not exist", relid)));
    owner = ((Form_pg_class)GETSTRUCT(tup))->relowner;
    ReleaseSysCache(tup);

    GetUserIdAndSecContext(&save_userid, &save_sec_context);
    SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
    nestlevel = NewGUCNestLevel();
    (void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
                            false);

    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");
    rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
    if (rc < 0)
        elog(ERROR, "audit write failed: %s", SPI_result_code_string(rc));
    n = SPI_processed;
    if (SPI_finish() != SPI_OK_FINISH)
        elog(ERROR, "SPI_finish failed");

    AtEOXact_GUC(true, nestlevel);
    SetUserIdAndSecContext(save_userid, save_sec_context);
    return n;
}

// "schema"."table" of relid, quoted.
static char* qualified_name(Oid relid)
{
    char* rel = get_rel_name(relid);
    Oid nsp = get_rel_namespace(relid);
    if (rel == NULL)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("audit table with OID %u does not exist", relid)));
    return quote_qualified_identifier(get_namespace_name(nsp), rel);
}

// atx._audit_write(audit_table regclass, target oid, table_name text, op text, rows jsonb,
//     caller_role name, caller_session_user name, application_name text, client_addr inet,
//     caller_xid xid8, emitted_at timestamptz, message_id uuid, outcome text) RETURNS bigint
static Datum audit_write_body(FunctionCallInfo fcinfo)
{
    const int n = 12;
    Oid types[12] = {OIDOID,  TEXTOID, TEXTOID, JSONBOID,       NAMEOID, NAMEOID,
                     TEXTOID, INETOID, XID8OID, TIMESTAMPTZOID, UUIDOID, TEXTOID};
    Datum values[12];
    char nulls[12];
    Oid relid;
    char* sql;

    if (PG_ARGISNULL(0))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("audit table must not be NULL")));
    relid = PG_GETARG_OID(0);
    for (int i = 0; i < n; i++) {
        nulls[i] = PG_ARGISNULL(i + 1) ? 'n' : ' ';
        values[i] = PG_ARGISNULL(i + 1) ? (Datum)0 : PG_GETARG_DATUM(i + 1);
    }
    // $4 is the JSON array of [old, new] row images.
    sql = psprintf("INSERT INTO %s (table_oid, table_name, operation, old_row, new_row, caller_role,"
                   " caller_session_user, application_name, client_addr, caller_xid, emitted_at, message_id, outcome)"
                   " SELECT $1, $2, $3, NULLIF(r OPERATOR(pg_catalog.->) 0, 'null'::pg_catalog.jsonb),"
                   " NULLIF(r OPERATOR(pg_catalog.->) 1, 'null'::pg_catalog.jsonb),"
                   " $5, $6, $7, $8, $9, $10, $11, $12 FROM pg_catalog.jsonb_array_elements($4) r",
                   qualified_name(relid));
    PG_RETURN_INT64((int64)exec_as_owner(relid, sql, n, types, values, nulls));
}

// The ids (ctid) of the unresolved rows the calling role may update, locked: read as the caller,
// so that row-level security (SELECT and UPDATE policies; FOR UPDATE applies both) decides which
// rows its resolve may touch.
static Datum rows_caller_may_update(const char* name)
{
    List* tids = NIL;
    Datum* d;
    int n = 0;
    ListCell* lc;
    MemoryContext outer = CurrentMemoryContext;

    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");
    if (SPI_execute(psprintf("SELECT ctid FROM %s WHERE outcome IS NULL FOR UPDATE", name), false, 0) != SPI_OK_SELECT)
        elog(ERROR, "could not read audit table %s", name);
    {
        MemoryContext old = MemoryContextSwitchTo(outer);
        for (uint64 i = 0; i < SPI_processed; i++) {
            bool isnull;
            ItemPointer tid = (ItemPointer)palloc(sizeof(ItemPointerData));
            ItemPointerCopy(
                (ItemPointer)DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)),
                tid);
            tids = lappend(tids, tid);
        }
        MemoryContextSwitchTo(old);
    }
    if (SPI_finish() != SPI_OK_FINISH)
        elog(ERROR, "SPI_finish failed");
    d = (Datum*)palloc(sizeof(Datum) * (list_length(tids) + 1));
    foreach (lc, tids)
        d[n++] = PointerGetDatum(lfirst(lc));
    return PointerGetDatum(construct_array(d, n, TIDOID, sizeof(ItemPointerData), false, TYPALIGN_SHORT));
}

// atx._audit_resolve(audit_table regclass) RETURNS bigint: persists the final
// caller outcome of rows still unresolved, of those the calling role may update (row-level
// security applies as for an UPDATE of its own); the update itself runs as the table's owner.
static Datum audit_resolve_body(FunctionCallInfo fcinfo)
{
    Oid relid;
    char* name;
    char* sql;
    Oid types[1] = {TIDARRAYOID};
    Datum values[1];

    if (PG_ARGISNULL(0))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("audit table must not be NULL")));
    relid = PG_GETARG_OID(0);
    name = qualified_name(relid);
    // Not SECURITY DEFINER: GetUserId() is whoever called resolve_outcomes().
    if (pg_class_aclcheck(relid, GetUserId(), ACL_UPDATE) != ACLCHECK_OK)
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("permission denied to resolve outcomes in audit table %s", name),
                        errhint("Run atx.resolve_outcomes() as a role with UPDATE on the audit table.")));
    values[0] = rows_caller_may_update(name);
    sql = psprintf(
        "UPDATE %s a SET outcome = s.outcome"
        "  FROM (SELECT x, atx.xact_outcome(x) AS outcome"
        "          FROM (SELECT DISTINCT caller_xid AS x FROM %s"
        "                 WHERE ctid OPERATOR(pg_catalog.=) ANY ($1)) d) s"
        " WHERE a.ctid OPERATOR(pg_catalog.=) ANY ($1) AND a.outcome IS NULL"
        "   AND a.caller_xid IS NOT DISTINCT FROM s.x"
        "   AND s.outcome OPERATOR(pg_catalog.=) ANY ('{committed,aborted,no transaction}'::pg_catalog.text[])",
        name, name);
    PG_RETURN_INT64((int64)exec_as_owner(relid, sql, 1, types, values, NULL));
}

ATX_ENTRY(atx_audit_write, audit_write_body)
ATX_ENTRY(atx_audit_resolve, audit_resolve_body)
