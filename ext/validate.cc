// Validation at the call (atx.validate, issue 14): a statement that can never run fails where
// Oracle fails it, in the caller, with its real SQLSTATE, and nothing is written.
//
// The statement is parsed; its leading DML and CALL statements are analyzed with the
// parameters' types and rewritten, and their table/column privileges (and EXECUTE on a called
// procedure) are checked as the current user, which is the role the statement will run as.
// Analysis stops at the first other utility statement: DDL may create what later statements
// use. Tables of the caller's own temporary schema are refused (the apply session cannot see
// them). Analysis locks the tables it names in the caller's transaction, as PREPARE would.
//
// Successful validations are cached per backend by (statement, parameter types, role,
// search_path), and the cache is emptied on any catalog change that could alter the outcome
// (relations, functions, types, schemas, roles and memberships). Plain C style.
#include "validate.h"

#include "statement_key.h"

extern "C" {
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "storage/proc.h"
#include "executor/executor.h"
#include "parser/analyze.h"
#include "rewrite/rewriteHandler.h"
#include "utils/inval.h"
}

bool atx_validate = true;

// How long validation waits for a lock before it gives up checking.
static const int kValidateLockTimeoutMs = 50;
static const char* const kValidateLockTimeout = "50ms";

namespace {

constexpr int kEntries = 128;

struct Entry {
    bool used;
    StatementKey key;
    Oid role;
    char* search_path;  // TopMemoryContext
    uint64 last_used;
};

Entry entries[kEntries];
uint64 tick = 0;
bool callbacks_registered = false;

void forget(Entry* e)
{
    statement_key_free(&e->key);
    pfree(e->search_path);
    e->used = false;
}

void clear_cache(void)
{
    for (int i = 0; i < kEntries; i++)
        if (entries[i].used)
            forget(&entries[i]);
}

void on_syscache(Datum arg, int cacheid, uint32 hashvalue) { clear_cache(); }
void on_relcache(Datum arg, Oid relid) { clear_cache(); }

void register_callbacks(void)
{
    if (callbacks_registered)
        return;
    CacheRegisterRelcacheCallback(on_relcache, (Datum)0);
    CacheRegisterSyscacheCallback(PROCOID, on_syscache, (Datum)0);
    CacheRegisterSyscacheCallback(TYPEOID, on_syscache, (Datum)0);
    CacheRegisterSyscacheCallback(NAMESPACEOID, on_syscache, (Datum)0);
    CacheRegisterSyscacheCallback(AUTHOID, on_syscache, (Datum)0);
    CacheRegisterSyscacheCallback(AUTHMEMMEMROLE, on_syscache, (Datum)0);
    callbacks_registered = true;
}

const char* current_search_path(void) { return namespace_search_path ? namespace_search_path : ""; }

Entry* lookup(const StatementKey* k, Oid role, const char* path)
{
    for (int i = 0; i < kEntries; i++) {
        Entry* e = &entries[i];
        if (e->used && e->role == role && statement_key_equal(&e->key, k) && strcmp(e->search_path, path) == 0)
            return e;
    }
    return NULL;
}

void remember(const StatementKey* k, Oid role, const char* path)
{
    Entry* e = &entries[0];

    for (int i = 0; i < kEntries; i++) {
        if (!entries[i].used) {
            e = &entries[i];
            break;
        }
        if (entries[i].last_used < e->last_used)
            e = &entries[i];
    }
    if (e->used)
        forget(e);
    e->key = statement_key_store(k);
    e->search_path = MemoryContextStrdup(TopMemoryContext, path);
    e->role = role;
    e->used = true;
    e->last_used = ++tick;
}

void refuse_temp_tables(List* rtable)
{
    ListCell* lc;
    foreach (lc, rtable) {
        RangeTblEntry* rte = (RangeTblEntry*)lfirst(lc);
        if (rte->rtekind == RTE_RELATION && get_rel_persistence(rte->relid) == RELPERSISTENCE_TEMP)
            ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                            errmsg("an autonomous statement cannot use the caller's temporary table \"%s\"",
                                   get_rel_name(rte->relid)),
                            errdetail("It runs in another session, which cannot see this session's temporary "
                                      "tables."),
                            errhint("Pass the data as parameters, or use a permanent table.")));
    }
}

void check_query(Query* q)
{
    if (q->commandType == CMD_UTILITY) {
        if (q->utilityStmt != NULL && IsA(q->utilityStmt, CallStmt)) {
            CallStmt* call = (CallStmt*)q->utilityStmt;
            Oid fn = call->funcexpr->funcid;
#if PG_VERSION_NUM >= 160000
            AclResult acl = object_aclcheck(ProcedureRelationId, fn, GetUserId(), ACL_EXECUTE);
#else
            AclResult acl = pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE);
#endif
            if (acl != ACLCHECK_OK)
                aclcheck_error(acl, OBJECT_PROCEDURE, get_func_name(fn));
        }
        return;
    }
    refuse_temp_tables(q->rtable);
#if PG_VERSION_NUM >= 160000
    (void)ExecCheckPermissions(q->rtable, q->rteperminfos, true);
#else
    (void)ExecCheckRTPerms(q->rtable, true);
#endif
}

bool analyzable(Node* stmt)
{
    switch (nodeTag(stmt)) {
    case T_SelectStmt:
    case T_InsertStmt:
    case T_UpdateStmt:
    case T_DeleteStmt:
    case T_MergeStmt:
    case T_CallStmt: return true;
    default: return false;
    }
}

// Errors of the statement point into its own text, not into the caller's query, as SPI does.
void validate_error_callback(void* arg)
{
    const char* statement = (const char*)arg;
    int pos = geterrposition();
    if (pos > 0) {
        errposition(0);
        internalerrposition(pos);
        internalerrquery(statement);
    } else {
        errcontext("autonomous statement \"%s\"", statement);
    }
}

}  // namespace

void atx_validate_statement(const char* statement, int nargs, const Oid* types)
{
    const Oid role = GetUserId();
    const char* path = current_search_path();
    StatementKey key;
    List* raw;
    ListCell* lc;

    if (!atx_validate)
        return;
    register_callbacks();
    key = statement_key_probe(statement, nargs, types);
    if (Entry* e = lookup(&key, role, path)) {
        e->last_used = ++tick;
        return;
    }

    // In a subtransaction, with a short lock_timeout: analysis locks the tables it names, and
    // atx_log must not wait behind DDL for a check. A lock it cannot get at once skips the
    // check (the applier waits for the lock instead).
    {
        MemoryContext oldcontext = CurrentMemoryContext;
        ResourceOwner oldowner = CurrentResourceOwner;
        int nest;
        volatile bool skipped = false;

        BeginInternalSubTransaction(NULL);
        MemoryContextSwitchTo(oldcontext);
        nest = NewGUCNestLevel();
        if (LockTimeout == 0 || LockTimeout > kValidateLockTimeoutMs)
            (void)set_config_option("lock_timeout", kValidateLockTimeout, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
                                    true, 0, false);
        PG_TRY();
        {
            ErrorContextCallback errcb;
            errcb.callback = validate_error_callback;
            errcb.arg = (void*)statement;
            errcb.previous = error_context_stack;
            error_context_stack = &errcb;

            raw = pg_parse_query(statement);  // 42601 and friends, with the position
            foreach (lc, raw) {
                RawStmt* rs = (RawStmt*)lfirst(lc);
                Query* q;
                List* rewritten;
                ListCell* lc2;

                if (!analyzable(rs->stmt))
                    break;
                q = parse_analyze_fixedparams(rs, statement, types, nargs, NULL);
                rewritten = QueryRewrite(q);
                foreach (lc2, rewritten)
                    check_query((Query*)lfirst(lc2));
            }
            error_context_stack = errcb.previous;
            AtEOXact_GUC(true, nest);
            ReleaseCurrentSubTransaction();
            MemoryContextSwitchTo(oldcontext);
            CurrentResourceOwner = oldowner;
        }
        PG_CATCH();
        {
            ErrorData* edata;
            MemoryContextSwitchTo(oldcontext);
            edata = CopyErrorData();
            FlushErrorState();
            RollbackAndReleaseCurrentSubTransaction();
            MemoryContextSwitchTo(oldcontext);
            CurrentResourceOwner = oldowner;
            if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
                ReThrowError(edata);
            skipped = true;
        }
        PG_END_TRY();
        if (skipped)
            return;  // not cached: checked next time
    }
    // Only now: the analysis may have invalidated caches (and emptied this one).
    remember(&key, role, path);
}
