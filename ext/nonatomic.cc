// Messages that cannot run inside a transaction block: atx.run_nonatomic and its worker.
//
// A CALL whose procedure commits or rolls back (Oracle batch procedures that COMMIT every N
// rows, EDB's procedure that ends in ROLLBACK), VACUUM, CREATE INDEX CONCURRENTLY: atx.apply_batch
// finds out (2D000, 25001) and hands the message to this path. It runs as a top-level statement
// of a session of its own, non-atomically, as a client's statement runs: a dynamic background
// worker connected to the database AS THE CALLER (so SET ROLE, SET SESSION AUTHORIZATION and
// RESET can never reach another identity), with the caller's settings, its parameters bound.
//
// Delivery guarantee: such a statement may commit part of its work before a crash, so it is
// never run twice. The worker records it as started in atx.applied (a durable commit) before it
// runs; a message found started later is in doubt: dead-lettered with 40003
// (statement_completion_unknown), for an operator to look at, never re-run by itself.
//
// Plain C style (see pg_guard.h).
#include "applied_log.h"
#include "apply_common.h"
#include "apply_outcome.h"
#include "apply_registry.h"
#include "codec_bridge.h"
#include "current_message.h"
#include "guc_capture.h"
#include "message_load.h"
#include "param_binder.h"
#include "pg_guard.h"
#include "result_receiver.h"
#include "run_as_caller.h"
#include "waiters.h"

extern "C" {
#include "nodes/parsenodes.h"
#include "parser/analyze.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "tcop/pquery.h"
#include "utils/pg_lsn.h"
#include "utils/portal.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
}

extern "C" {
PGDLLEXPORT void atx_nonatomic_main(Datum arg);
}

// What the launcher and its worker share (a DSM segment). The payload follows the struct.
enum NonatomicState {
    NA_LAUNCHED = 0,
    NA_ALREADY,   // handled before: nothing done
    NA_IN_DOUBT,  // found started before: dead-lettered 40003
    NA_CLAIMED,   // recorded as started (durably); the statement is about to run
    NA_APPLIED,   // ran and committed; recorded
    NA_FAILED,    // failed; dead-lettered
};

struct NonatomicShared {
    Oid dboid;
    Oid roleid;
    XLogRecPtr lsn;
    int timeout_ms;
    int attempts;
    TimestampTz first_failed;
    volatile int state;
    int sqlerrcode;
    char command[64];
    int64 rows;
    char error[2048];
    Size payload_len;
    char payload[FLEXIBLE_ARRAY_MEMBER];
};

static void copy_text(char* dst, size_t size, const char* src) { strlcpy(dst, src ? src : "", size); }

// --- the worker ---------------------------------------------------------------------------------

// Bookkeeping (atx.applied, atx.dead_letter) as the bootstrap superuser, in a transaction of its
// own that commits synchronously: the record must be durable before what follows.
static void bookkeeping_begin(Oid* save_user, int* save_sec)
{
    StartTransactionCommand();
    (void)set_config_option("synchronous_commit", "on", PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
    GetUserIdAndSecContext(save_user, save_sec);
    SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, *save_sec | SECURITY_LOCAL_USERID_CHANGE);
    PushActiveSnapshot(GetTransactionSnapshot());
    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");
}

static void bookkeeping_end(Oid save_user, int save_sec)
{
    SPI_finish();
    PopActiveSnapshot();
    SetUserIdAndSecContext(save_user, save_sec);
    CommitTransactionCommand();
}

// Claims the message: 'claimed', or what is already recorded ('applied', 'duplicate', 'dead',
// 'started').
static const char* claim(const AtxMessageC* m, XLogRecPtr lsn)
{
    Oid types[2] = {UUIDOID, PG_LSNOID};
    Datum v[2];
    pg_uuid_t* u = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));
    bool isnull;

    memcpy(u->data, m->id, 16);
    v[0] = UUIDPGetDatum(u);
    v[1] = LSNGetDatum(lsn);
    // A parked message is claimed from its record, which keeps the payload: found started after
    // a crash, it is loaded from there to be dead-lettered in doubt.
    if (SPI_execute_with_args(
            "WITH c AS (INSERT INTO atx.applied (message_id, lsn, status) VALUES ($1, $2, 'started') "
            "ON CONFLICT (message_id) DO UPDATE SET status = 'started', handled_at = pg_catalog.now() "
            "WHERE atx.applied.status OPERATOR(pg_catalog.=) 'parked' "
            "RETURNING 'claimed'::pg_catalog.text AS s) "
            "SELECT s FROM c UNION ALL "
            "SELECT status FROM atx.applied WHERE message_id OPERATOR(pg_catalog.=) $1 "
            "AND NOT EXISTS (SELECT 1 FROM c) LIMIT 1",
            2, types, v, NULL, false, 0) != SPI_OK_SELECT ||
        SPI_processed != 1)
        elog(ERROR, "could not claim the message");
    return TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

// The outcome an atx_exec caller gets, as stored in atx.applied (NULL when nobody waits): a
// waiter that finds the message handled before (a nested wait emitted again by a retried
// parent) is handed this.
static char* outcome_json(const AtxMessageC* m, const char* status, int sqlerrcode, const char* error,
                          const char* detail, const char* hint, const char* command, int64 rows,
                          const char* result = NULL, bool truncated = false)
{
    AtxExecOutcome o;
    if (!m->waited)
        return NULL;
    memset(&o, 0, sizeof o);
    memcpy(o.id, m->id, 16);
    o.status = status;
    o.sqlerrcode = sqlerrcode;
    o.error = error;
    o.detail = detail;
    o.hint = hint;
    o.command = command;
    o.rows = rows;
    o.result = result;
    o.truncated = truncated;
    return atx_exec_outcome_json(&o);
}

static void record_final(const AtxMessageC* m, XLogRecPtr lsn, const char* status, const char* outcome)
{
    AtxRecord r = atx_record(m->id, lsn, m, status, outcome);
    atx_applied_update(1, &r);  // it says 'started'
}

// One statement of the message as a top-level statement, the way the server runs a client's
// simple query: its own transaction, a portal, isTopLevel. COMMIT and ROLLBACK inside a CALL
// work; VACUUM and CREATE INDEX CONCURRENTLY manage their transactions themselves.
//
// The analyzed and planned trees live in `trees`, which outlives every transaction the statement
// ends (as a client's live in MessageContext): VACUUM commits the transaction this function
// starts while its portal still runs the plan list, so a list made in that transaction's memory
// would be read after it was freed (a crash of the worker, and a restart of the server).
static void run_top_level(RawStmt* rs, const char* sql, int nargs, Oid* types, ParamListInfo params,
                          QueryCompletion* qc, MemoryContext trees, DestReceiver* dest)
{
    bool snapshot = false;
    List* queries;
    List* plans;
    Portal portal;
    CommandTag tag = CreateCommandTag(rs->stmt);
    MemoryContext old;

    StartTransactionCommand();
    if (analyze_requires_snapshot(rs)) {
        PushActiveSnapshot(GetTransactionSnapshot());
        snapshot = true;
    }
    old = MemoryContextSwitchTo(trees);
    queries = pg_analyze_and_rewrite_fixedparams(rs, sql, types, nargs, NULL);
    plans = pg_plan_queries(queries, sql, CURSOR_OPT_PARALLEL_OK, params);
    MemoryContextSwitchTo(old);
    if (snapshot)
        PopActiveSnapshot();
    portal = CreatePortal("", true, true);
    portal->visible = false;
    PortalDefineQuery(portal, NULL, sql, tag, plans, NULL);
    PortalStart(portal, params, 0, InvalidSnapshot);
#if PG_VERSION_NUM >= 180000
    (void)PortalRun(portal, FETCH_ALL, true, dest, dest, qc);
#else
    (void)PortalRun(portal, FETCH_ALL, true, true, dest, dest, qc);
#endif
    PortalDrop(portal, false);
    CommitTransactionCommand();
}

void atx_nonatomic_main(Datum arg)
{
    dsm_segment* seg;
    NonatomicShared* sh;
    AtxMessageC m;
    atx::CaughtError err;
    Oid save_user;
    int save_sec;
    const char* status;
    MemoryContext work;
    // The rows a waiting atx_exec caller gets (a CALL's OUT and INOUT values: an autonomous
    // procedure that commits inside hands them back this way); set in PG_TRY, read after it.
    AtxResultReceiver* volatile rows_to = NULL;
    const char* volatile result = NULL;
    volatile bool truncated = false;

    memset(&m, 0, sizeof m);
    pqsignal(SIGTERM, die);
    BackgroundWorkerUnblockSignals();
    seg = dsm_attach(DatumGetUInt32(arg));
    if (seg == NULL)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("pg_atx non-atomic worker: could not attach to its shared memory")));
    sh = (NonatomicShared*)dsm_segment_address(seg);
#if PG_VERSION_NUM >= 170000
    BackgroundWorkerInitializeConnectionByOid(sh->dboid, sh->roleid, BGWORKER_BYPASS_ROLELOGINCHECK);
#else
    BackgroundWorkerInitializeConnectionByOid(sh->dboid, sh->roleid, 0);
#endif
    pgstat_report_appname("atx-applier nonatomic");
    atx_registry_join();  // a caller it waits for is a deadlock atx_exec can see
    work = AllocSetContextCreate(TopMemoryContext, "pg_atx nonatomic", ALLOCSET_DEFAULT_SIZES);
    MemoryContextSwitchTo(work);

    PG_TRY();
    {
        Oid* types;
        ParamListInfo params;
        List* raw;
        ListCell* lc;
        QueryCompletion qc;

        if (!atx_decode_payload(sh->payload, sh->payload_len, &m, &err))
            atx::raise_caught(err);

        bookkeeping_begin(&save_user, &save_sec);
        status = claim(&m, sh->lsn);
        if (strcmp(status, "started") == 0) {
            atx_dead_letter_write(&m, sh->lsn, sh->payload, sh->payload_len, ERRCODE_T_R_STATEMENT_COMPLETION_UNKNOWN,
                                  atx_in_doubt_text(), NULL, atx_in_doubt_hint(), sh->attempts, sh->first_failed);
            record_final(&m, sh->lsn, "dead", NULL);
            sh->state = NA_IN_DOUBT;
        } else if (strcmp(status, "claimed") != 0) {
            sh->state = NA_ALREADY;
        } else if (m.waited && !atx_waiter_begin_running(m.id, m.cancel_if_abandoned)) {
            // Its atx_exec caller stopped waiting before it began (atx.exec_on_abandon = cancel).
            const char* why = atx_cancelled_text();
            atx_dead_letter_write(&m, sh->lsn, sh->payload, sh->payload_len, ERRCODE_QUERY_CANCELED, why, NULL, NULL,
                                  sh->attempts, sh->first_failed);
            record_final(&m, sh->lsn, "cancelled", NULL);
            sh->sqlerrcode = ERRCODE_QUERY_CANCELED;
            copy_text(sh->error, sizeof sh->error, why);
            sh->state = NA_FAILED;
        }
        bookkeeping_end(save_user, save_sec);
        if (sh->state == NA_LAUNCHED) {
            sh->state = NA_CLAIMED;

            // The caller's settings, for the whole session; the statement's own limit.
            StartTransactionCommand();
            atx_restore_settings(m.gucs, m.nguc, superuser(), GUC_ACTION_SET);
            CommitTransactionCommand();
            (void)atx_current_message_push(&m, true);
            types = (Oid*)palloc0(sizeof(Oid) * (m.nparams + 1));
            // Parameters and parse trees must outlive the transactions the statement runs in.
            StartTransactionCommand();
            MemoryContextSwitchTo(work);
            params = atx_bind_params(&m, types);
            raw = pg_parse_query(m.statement);
            CommitTransactionCommand();
            MemoryContextSwitchTo(work);
            if (sh->timeout_ms > 0)
                enable_timeout_after(STATEMENT_TIMEOUT, sh->timeout_ms);
            memset(&qc, 0, sizeof qc);
            if (m.waited)
                rows_to = atx_result_receiver_create(atx_exec_max_result_bytes);  // in `work`: outlives them
            {
                MemoryContext trees = AllocSetContextCreate(work, "pg_atx nonatomic statement", ALLOCSET_DEFAULT_SIZES);
                DestReceiver* dest = rows_to ? atx_result_receiver_dest(rows_to) : None_Receiver;
                foreach (lc, raw) {
                    run_top_level((RawStmt*)lfirst(lc), m.statement, m.nparams, types, params, &qc, trees, dest);
                    MemoryContextReset(trees);
                }
            }
            disable_timeout(STATEMENT_TIMEOUT, false);
            MemoryContextSwitchTo(work);
            copy_text(sh->command, sizeof sh->command, GetCommandTagName(qc.commandTag));
            sh->rows = (int64)qc.nprocessed;
            if (rows_to) {
                bool cut = false;
                result = atx_result_receiver_json(rows_to, &cut);
                truncated = cut;
            }

            bookkeeping_begin(&save_user, &save_sec);
            record_final(&m, sh->lsn, "applied",
                         outcome_json(&m, "applied", 0, NULL, NULL, NULL, sh->command, sh->rows, result, truncated));
            bookkeeping_end(save_user, save_sec);
            sh->state = NA_APPLIED;
        }
    }
    PG_CATCH();
    {
        ErrorData* edata;
        MemoryContextSwitchTo(work);
        disable_timeout(STATEMENT_TIMEOUT, false);
        edata = CopyErrorData();
        FlushErrorState();
        AbortOutOfAnyTransaction();
        sh->sqlerrcode = edata->sqlerrcode;
        copy_text(sh->error, sizeof sh->error, edata->message);
        // Started and failed: what it committed before the error stays, as for a client's
        // CALL. The message is dead-lettered with its error; not retried.
        if (sh->state == NA_CLAIMED) {
            bookkeeping_begin(&save_user, &save_sec);
            atx_dead_letter_write(&m, sh->lsn, sh->payload, sh->payload_len, edata->sqlerrcode, edata->message,
                                  edata->detail, edata->hint, sh->attempts, sh->first_failed);
            record_final(
                &m, sh->lsn, "dead",
                outcome_json(&m, "failed", edata->sqlerrcode, edata->message, edata->detail, edata->hint, NULL, 0));
            bookkeeping_end(save_user, save_sec);
        }
        sh->state = NA_FAILED;
    }
    PG_END_TRY();
    // A waiting atx_exec caller learns the outcome now that it is committed (synchronously).
    if (m.waited && (sh->state == NA_APPLIED || sh->state == NA_FAILED)) {
        AtxExecOutcome o;
        char* json;
        memset(&o, 0, sizeof o);
        memcpy(o.id, m.id, 16);
        o.status = sh->state == NA_APPLIED ? "applied" : "failed";
        o.sqlerrcode = sh->sqlerrcode;
        o.error = sh->error;
        o.command = sh->command;
        o.rows = sh->rows;
        if (sh->state == NA_APPLIED) {
            o.result = result;
            o.truncated = truncated;
        }
        json = atx_exec_outcome_json(&o);
        atx_waiter_publish_now(m.id, o.status, o.sqlerrcode, o.error, NULL, NULL, json);
    }
    dsm_detach(seg);
}

// How long a worker gets past its limit to stop by itself (its statement_timeout cancel) before
// the launcher ends it.
#define NONATOMIC_GRACE_MS 2000

// Waits for the worker to exit; a worker still running timeout_ms + NONATOMIC_GRACE_MS after it
// started is terminated (its statement may catch the cancel, never the termination). Returns
// whether it was. The statement runs in the worker: this loop is outside it.
static bool wait_for_worker(BackgroundWorkerHandle* handle, int timeout_ms)
{
    TimestampTz start = GetCurrentTimestamp();
    bool terminated = false;
    pid_t pid;

    for (;;) {
        BgwHandleStatus st = GetBackgroundWorkerPid(handle, &pid);
        if (st == BGWH_STOPPED || st == BGWH_POSTMASTER_DIED)
            return terminated;
        if (!terminated && timeout_ms > 0 &&
            TimestampDifferenceExceeds(start, GetCurrentTimestamp(), timeout_ms + NONATOMIC_GRACE_MS)) {
            TerminateBackgroundWorker(handle);
            terminated = true;
        }
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 100, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        CHECK_FOR_INTERRUPTS();
    }
}

// --- the launcher: CALL atx.run_nonatomic(lsn, attempts, first_failed, timeout_ms) -------------
//
// A procedure, called by the applier as a top-level CALL: it commits its own transaction before
// it waits, so that it holds no snapshot (CREATE INDEX CONCURRENTLY waits for every transaction
// with an older one). SECURITY INVOKER (a SECURITY DEFINER procedure cannot commit): the caller
// must be an applier; what needs more rights runs as the bootstrap superuser below.

static Datum run_nonatomic_body(FunctionCallInfo fcinfo)
{
    CallContext* call = (fcinfo->context && IsA(fcinfo->context, CallContext)) ? (CallContext*)fcinfo->context : NULL;
    XLogRecPtr lsn;
    AtxLoaded l;
    char* payload;
    size_t len;
    dsm_segment* seg;
    NonatomicShared* sh;
    BackgroundWorker w;
    BackgroundWorkerHandle* handle;
    pid_t pid;
    TupleDesc tupdesc;
    Datum v[4];
    bool nulls[4] = {false, true, true, true};
    const char* status;
    MemoryContext caller = CurrentMemoryContext;  // SPI_finish below deletes the SPI context
    HeapTuple row;
    volatile bool overdue = false;
    int timeout_ms;

    for (int i = 0; i < 4; i++)
        if (PG_ARGISNULL(i) && i != 2)
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("arguments must not be NULL")));
    // SECURITY INVOKER (a SECURITY DEFINER procedure cannot commit): the current user called it.
    {
        Oid applier = get_role_oid(ATX_APPLIER_ROLE, true);
        if (!superuser() && !(OidIsValid(applier) && has_privs_of_role(GetUserId(), applier)))
            ereport(ERROR,
                    (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("permission denied to apply pg_atx messages")));
    }
    if (call == NULL || call->atomic)
        ereport(ERROR, (errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
                        errmsg("atx.run_nonatomic must be called as a top-level CALL, outside a transaction block")));
    if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    tupdesc = CreateTupleDescCopy(tupdesc);  // survives the commit below

    lsn = PG_GETARG_LSN(0);
    timeout_ms = Max(PG_GETARG_INT32(3), 0);
    atx_load_message(lsn, &l);
    if (l.state != ATX_LOAD_OK)
        ereport(ERROR, (errcode(l.sqlerrcode), errmsg("%s", l.error)));
    payload = l.payload;
    len = l.len;

    // The segment must outlive this transaction (committed below): mapped for the session.
    seg = dsm_create(offsetof(NonatomicShared, payload) + len, 0);
    dsm_pin_mapping(seg);
    sh = (NonatomicShared*)dsm_segment_address(seg);
    memset(sh, 0, offsetof(NonatomicShared, payload));
    sh->dboid = MyDatabaseId;
    sh->roleid = l.m.role_oid;
    sh->lsn = lsn;
    sh->attempts = PG_GETARG_INT32(1);
    sh->first_failed = PG_ARGISNULL(2) ? GetCurrentTimestamp() : PG_GETARG_TIMESTAMPTZ(2);
    sh->timeout_ms = timeout_ms;
    sh->payload_len = len;
    memcpy(sh->payload, payload, len);

    memset(&w, 0, sizeof w);
    w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    w.bgw_start_time = BgWorkerStart_ConsistentState;
    w.bgw_restart_time = BGW_NEVER_RESTART;
    snprintf(w.bgw_library_name, BGW_MAXLEN, "pg_atx");
    snprintf(w.bgw_function_name, BGW_MAXLEN, "atx_nonatomic_main");
    snprintf(w.bgw_name, BGW_MAXLEN, "pg_atx non-atomic message");
    snprintf(w.bgw_type, BGW_MAXLEN, "pg_atx non-atomic message");
    w.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(seg));
    w.bgw_notify_pid = MyProcPid;
    if (!RegisterDynamicBackgroundWorker(&w, &handle)) {
        dsm_detach(seg);
        // Nothing ran: the applier tries again later.
        v[0] = CStringGetTextDatum("retry");
        v[1] = CStringGetTextDatum("53000");
        v[2] =
            CStringGetTextDatum("could not start a background worker for a non-atomic message (max_worker_processes)");
        nulls[1] = nulls[2] = false;
        PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), v, nulls)));
    }

    // No snapshot while waiting.
    if (SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");
    SPI_commit();
    // The applier's watchdog sees this backend run the message; its deadline leaves the worker's
    // own limit and the grace below to run out first.
    atx_registry_join();
    atx_registry_begin(lsn, l.id, l.m.role_oid, timeout_ms > 0 ? timeout_ms + 2 * NONATOMIC_GRACE_MS : 0);
    PG_TRY();
    {
        if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
            overdue = wait_for_worker(handle, timeout_ms);
    }
    PG_CATCH();
    {
        // The applier gave up (cancel, shutdown): the worker must not go on alone.
        TerminateBackgroundWorker(handle);
        atx_registry_end();
        PG_RE_THROW();
    }
    PG_END_TRY();
    atx_registry_end();

    switch (sh->state) {
    case NA_ALREADY: status = "already"; break;
    case NA_IN_DOUBT: status = "dead"; break;
    case NA_APPLIED: status = "applied"; break;
    case NA_FAILED: status = "dead"; break;
    case NA_LAUNCHED:
        // The worker ended before it claimed the message: nothing ran. Before PostgreSQL 17 a
        // worker cannot connect as a role without LOGIN: that never changes by itself.
        status = "retry";
#if PG_VERSION_NUM < 170000
        {
            HeapTuple tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(l.m.role_oid));
            bool can_login = HeapTupleIsValid(tup) && ((Form_pg_authid)GETSTRUCT(tup))->rolcanlogin;
            if (HeapTupleIsValid(tup))
                ReleaseSysCache(tup);
            if (!can_login) {
                const char* why = "a message that must run as a top-level statement (COMMIT or ROLLBACK inside, "
                                  "VACUUM, CREATE INDEX CONCURRENTLY) needs a caller role that can log in before "
                                  "PostgreSQL 17";
                AtxRecord rec = atx_record(l.id, lsn, &l.m, "dead", NULL);
                Oid save_user;
                int save_sec;
                GetUserIdAndSecContext(&save_user, &save_sec);
                SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, save_sec | SECURITY_LOCAL_USERID_CHANGE);
                PushActiveSnapshot(GetTransactionSnapshot());
                atx_dead_letter_write(&l.m, lsn, payload, len, ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, why, NULL,
                                      "Grant LOGIN to the role, or keep transaction control out of its autonomous "
                                      "statements.",
                                      sh->attempts, sh->first_failed);
                atx_applied_update(1, &rec);  // none, or 'parked'
                PopActiveSnapshot();
                SetUserIdAndSecContext(save_user, save_sec);
                sh->sqlerrcode = ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
                copy_text(sh->error, sizeof sh->error, why);
                status = "dead";
            }
        }
#endif
        break;
    default:
        // Claimed but no outcome: the worker died while the statement ran, or was ended here
        // because it ran past its limit (57014, this function's own word).
        status = "in doubt";
        if (overdue) {
            sh->sqlerrcode = ERRCODE_QUERY_CANCELED;
            copy_text(sh->error, sizeof sh->error, "ran past its time limit and was ended: in doubt");
        }
        break;
    }
    MemoryContextSwitchTo(caller);
    v[0] = CStringGetTextDatum(status);
    if (sh->sqlerrcode != 0 || sh->state == NA_IN_DOUBT) {
        v[1] = CStringGetTextDatum(
            unpack_sql_state(sh->sqlerrcode ? sh->sqlerrcode : ERRCODE_T_R_STATEMENT_COMPLETION_UNKNOWN));
        v[2] = CStringGetTextDatum(sh->error[0] ? sh->error : "started before and not finished: in doubt");
        nulls[1] = nulls[2] = false;
    }
    if (sh->state == NA_APPLIED) {
        v[3] = CStringGetTextDatum(sh->command);
        nulls[3] = false;
    }
    row = heap_form_tuple(BlessTupleDesc(tupdesc), v, nulls);
    dsm_detach(seg);
    SPI_finish();
    PG_RETURN_DATUM(HeapTupleGetDatum(row));
}

ATX_ENTRY(atx_run_nonatomic, run_nonatomic_body)
